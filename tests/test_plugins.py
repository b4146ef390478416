"""Third-party plugins load through entry points exactly like the built-in ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pluggy
import pytest

from harness import plugins
from harness.api import Editor
from harness.uncertainty import metric_keys

FIXTURE = Path(__file__).parent / "fixtures" / "sample_plugin"


def _install_metadata(root: Path, name: str, entry_points: str) -> None:
    """What pip would write: a dist-info folder with the package's entry points."""
    info = root / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    _install_metadata(root, "sample-editor-plugin", "[harness]\nsample_editor = sample_editor_plugin\n")
    _install_metadata(root, "broken-plugin", "[harness]\nbroken = broken_plugin_module_that_is_missing\n")
    _install_metadata(root, "clashing-plugin", "[harness]\nrome = sample_editor_plugin\n")
    return root


def harness(site: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    paths = [str(site), str(FIXTURE), os.environ.get("PYTHONPATH", "")]
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), **(env or {})}
    full_env.pop("HARNESS_LOAD_PLUGINS", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=600,
    )


def test_third_party_editor_is_listed_and_a_broken_plugin_only_warns(site):
    result = harness(site, "ls", "editors")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert "state-fact" in names and "rome" in names
    assert "'broken'" in result.stderr and "broken-plugin" in result.stderr and "skipped" in result.stderr
    # a second package using a loaded plugin's name is skipped, and says so
    assert "plugin 'rome' from clashing-plugin is skipped" in result.stderr


class BrokenEntryPoint:
    """An entry point whose module does not import, from the distribution named ``dist``."""

    name = "broken_builtin"

    def __init__(self, dist: str):
        self.dist = SimpleNamespace(name=dist, version="0.1.0")

    def load(self):
        raise ModuleNotFoundError("No module named 'builtin_module_that_is_missing'")


@pytest.mark.parametrize("dist", ["kedit-harness", "someone-elses-plugin"])
def test_a_built_in_plugin_that_fails_to_import_is_an_error_a_third_party_one_a_warning(
    dist, monkeypatch, caplog
):
    monkeypatch.setattr(plugins, "pm", pluggy.PluginManager("harness"))
    plugins.pm.add_hookspecs(plugins.hookspecs)
    monkeypatch.setattr(plugins, "_loaded", False)
    monkeypatch.setattr(plugins, "_distributions", {})
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", lambda group: [BrokenEntryPoint(dist)])
    if dist == "kedit-harness":
        with pytest.raises(plugins.BrokenInstallation, match="plugin 'broken_builtin' failed to import"):
            plugins.load_plugins()
        assert not plugins._loaded  # the next call tries again instead of running without it
    else:
        plugins.load_plugins()
        assert "'broken_builtin' (from someone-elses-plugin) failed to load and is skipped" in caplog.text


def test_plugins_command_reports_name_version_and_hooks(site):
    listing = json.loads(harness(site, "plugins").stdout)
    entry = next(p for p in listing if p["name"] == "sample_editor")
    assert entry["package"] == "sample-editor-plugin" and entry["version"] == "0.1.0"
    assert entry["hooks"] == ["after_run", "register_editors"]
    rome = next(p for p in listing if p["name"] == "rome")
    assert rome["package"] == "kedit-harness" and rome["hooks"] == ["editor_defaults", "register_editors"]


def test_load_plugins_env_limits_what_loads(site):
    result = harness(site, "ls", "editors", env={"HARNESS_LOAD_PLUGINS": "sample_editor"})
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["state-fact"]
    assert "broken" not in result.stderr


def test_third_party_editor_runs_end_to_end(site, tmp_path):
    marker = tmp_path / "after_run.json"
    env = {"SAMPLE_PLUGIN_MARKER": str(marker), "HARNESS_DATA_DIR": ""}
    result = harness(
        site,
        "run",
        "--editor",
        "state-fact",
        "--task",
        "bizsre_en_zh_reliability",
        "--model",
        "tiny-llama",
        "--limit",
        "2",
        "--output-dir",
        str(tmp_path / "out"),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(marker.read_text()) == ["bizsre_en_zh_reliability"]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    scores = results["results"]["bizsre_en_zh_reliability"]
    assert set(metric_keys(scores)) == {"reliability.en.f1", "reliability.en.em"}
    assert results["editor"] == "state-fact"


def test_unknown_names_get_close_matches_and_no_traceback(site):
    result = harness(site, "run", "--editor", "rom", "--task", "bizsre_en_zh")
    assert result.returncode == 2
    assert "unknown editor 'rom'" in result.stderr and "'rome'" in result.stderr
    assert "Traceback" not in result.stderr
    result = harness(site, "run", "--editor", "rome", "--task", "bizsre_en_zh", "--set", "layr=3")
    assert result.returncode == 2 and "layr" in result.stderr and "layer" in result.stderr


def test_registry_rejects_two_plugins_claiming_one_name():
    class Twin:
        @plugins.hookspecs.hookimpl
        def register_editors(self, register):
            register("rome", type("OtherRome", (Editor,), {"edit": lambda self, *args: None}))

    twin = Twin()
    plugins.load_plugins()
    plugins.pm.register(twin)
    try:
        with pytest.raises(ValueError, match="two plugins register the editor 'rome'"):
            plugins.editors()
    finally:
        plugins.pm.unregister(twin)
