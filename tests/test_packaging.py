"""The wheel ships the built-in plugins, templates, sample data and defaults, and works on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_plugin_folder_is_a_listed_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for base, package in (
        ("harness", "harness"),
        ("plugins", "harness_plugins"),
        ("templates", "harness_plugins.templates"),
    ):
        for init in (ROOT / base).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / base).parts
            found.add(".".join((package, *parts)))
    assert found == listed


def test_wheel_contains_data_files(harness_wheel):
    names = set(zipfile.ZipFile(harness_wheel).namelist())
    for required in (
        "harness/harness.toml",
        "harness_plugins/templates/bizsre/question.jinja",
        "harness_plugins/tasks/bizsre/sample/bizsre_sample_enzh_20.json",
        "harness_plugins/models/demo/gemma3-270m-samples.json",
        "harness/metric_modules/token_f1/token_f1.py",
        "harness_plugins/methods/rome/editor.py",
    ):
        assert required in names
    packaged = zipfile.ZipFile(harness_wheel).read("harness/harness.toml").decode()
    assert packaged == (ROOT / "harness.toml").read_text()
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(harness_wheel).read(entry_points).decode()
    assert "[harness]" in text and "rome = harness_plugins.methods.rome" in text


def test_wheel_in_a_fresh_environment_lists_the_builtin_plugins(harness_wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    with zipfile.ZipFile(harness_wheel) as archive:
        archive.extractall(site)  # what an installer does for a pure-Python wheel
    # dependencies (torch, transformers, ...) come from this interpreter's site-packages, after the wheel
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HARNESS_LOAD_PLUGINS")}
    code = (
        "import harness, json, harness.plugins as p; "
        "print(json.dumps([harness.__file__, p.plugin_listing()]))"
    )
    result = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr
    location, listing = json.loads(result.stdout.strip().splitlines()[-1])
    assert location.startswith(str(site))
    names = {p["name"] for p in listing}
    assert {"rome", "ft", "bizsre", "templates", "demo_models", "tiny_models", "harness.metrics"} <= names
