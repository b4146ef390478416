"""Checks that only mean something under the newest releases (.ci/run-latest, HARNESS_UPSTREAM=1)."""

from __future__ import annotations

import importlib.util
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.upstream


def _versions_module():
    spec = importlib.util.spec_from_file_location("ci_versions", ROOT / ".ci" / "versions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_newest_install_holds_nothing_back_below_the_tested_set():
    """A newest-allowed install older than constraints.txt means a release could not be installed
    (an unsatisfiable dependency of it): the suite below then does not test what it claims to."""
    versions = _versions_module()
    rows = versions.differences(ROOT / "constraints.txt")
    print(versions.report(rows))
    held_back = [row for row in rows if row["how"] == "older"]
    assert not held_back, versions.report(held_back)


def test_installed_versions_are_within_the_declared_ranges():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    outside = []
    for text in declared:
        requirement = Requirement(text)
        version = Version(Version(metadata.version(requirement.name)).public)
        if not requirement.specifier.contains(version, prereleases=True):
            outside.append(f"{requirement.name} {version} not in {requirement.specifier}")
    assert not outside
