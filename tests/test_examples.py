"""The example plugin packages work as a user would install them: wheels of the harness and of both
examples go into a fresh virtual environment, where the plugins are listed, run end to end, pass
their own tests, and a package scaffolded with `harness new` installs and registers too."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.uncertainty import metric_keys

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("kedit-editor-example", "kedit-task-example")


@dataclass(frozen=True)
class Venv:
    """A fresh virtual environment and the directory its commands run in."""

    bin: Path
    work: Path
    env: dict[str, str]

    def run(self, *command: str | Path, cwd: Path | None = None, timeout: int = 600) -> str:
        """Run a program of the environment; its output, or a failure showing both streams."""
        result = subprocess.run(
            [str(self.bin / str(command[0])), *map(str, command[1:])],
            cwd=cwd or self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result.stdout


def checkout_copy(destination: Path) -> Path:
    """The checkout without environments, results and build output; wheels are built from such a
    copy, so the checkout gets no build/ folder."""
    skip = (".git", ".venv*", "results", "build", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, destination, ignore=shutil.ignore_patterns(*skip))
    return destination


def build_wheel(source: Path, wheels: Path) -> None:
    """A wheel of ``source`` built by this interpreter, as test_packaging.py builds the harness's."""
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run(
        [*pip_wheel, "-w", wheels, source],
        check=True,
        capture_output=True,
        timeout=300,
    )


def _venv_in(base: Path) -> Venv:
    drop = ("PYTHONPATH", "HARNESS_LOAD_PLUGINS", "HARNESS_DATA_DIR", "VIRTUAL_ENV", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = f"{base / 'venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["HARNESS_CACHE_DIR"] = str(base / "cache")
    return Venv(base / "venv" / "bin", base / "work", env)


@pytest.fixture(scope="session")
def venv(built_once, harness_wheel) -> Venv:
    """Wheels of the harness and both examples, installed with torch==2.13.0 into one fresh venv,
    once per session (the xdist workers share it; each test writes its own folder of ``work``)."""

    def build(base: Path) -> None:
        wheels = base / "wheels"
        for name in EXAMPLES:  # built from copies, so the checkout gets no build/ folders
            copy = base / "sources" / name
            skip = shutil.ignore_patterns("build", "*.egg-info")
            shutil.copytree(ROOT / "examples" / name, copy, ignore=skip)
            build_wheel(copy, wheels)
        subprocess.run([sys.executable, "-m", "venv", base / "venv"], check=True, timeout=300)
        made = _venv_in(base)
        made.work.mkdir()
        made.run("pip", "install", "-q", "torch==2.13.0")  # first: the local CPU build, never a CUDA one
        made.run("pip", "install", "-q", harness_wheel, *sorted(wheels.glob("*.whl")), "pytest>=8")

    return _venv_in(built_once("examples", build))


def edit_run(venv: Venv, editor: str, task: str, name: str, *extra: str) -> dict:
    """``harness run`` on the tiny Llama into ``work/name``; its results.json."""
    out = venv.work / name
    options = ["--editor", editor, "--task", task, "--model", "tiny-llama", "--output-dir", str(out)]
    venv.run("harness", "run", *options, *extra)
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def names(listing: str) -> list[str]:
    return [line.split()[0] for line in listing.splitlines() if line.strip()]


def test_the_installed_plugins_are_listed(venv):
    assert "example-ft" in names(venv.run("harness", "ls", "editors"))
    tasks = names(venv.run("harness", "ls", "tasks"))
    assert {"example_capitals_en", "example_capitals_de", "bizsre_en_zh"} <= set(tasks)
    listing = {p["name"]: p for p in json.loads(venv.run("harness", "plugins"))}
    assert listing["kedit_editor_example"]["package"] == "kedit-editor-example"
    assert listing["kedit_task_example"]["hooks"] == ["register_tasks", "template_dirs"]


def test_example_editor_writes_the_example_task_facts(venv):
    results = edit_run(venv, "example-ft", "example_capitals_en", "capitals", "--limit", "3")
    assert results["editor"] == "example-ft" and results["n-samples"] == {"example_capitals_en": 3}
    assert results["hparams"] == {"layer": None, "steps": 200, "lr": 0.01}  # the package's editor_defaults
    assert results["hparams_sources"]["plugin_defaults"] == ["lr", "steps"]
    post, pre = results["results"]["example_capitals_en"], results["pre_edit"]["example_capitals_en"]
    probes = ["reliability.en", "generality.en", "locality.en", "generality.de", "locality.de"]
    assert set(metric_keys(post)) == {f"{probe}.{metric}" for probe in probes for metric in ("f1", "em")}
    assert post["reliability.en.f1"] > pre["reliability.en.f1"]
    assert post["reliability.en.em"] == 100.0 > pre["reliability.en.em"]
    samples = [json.loads(line) for line in (venv.work / "capitals" / "samples.jsonl").open(encoding="utf-8")]
    assert [s["record_id"] for s in samples] == ["norway", "japan", "egypt"]
    assert all(s["edit_info"]["written"] for s in samples)
    assert samples[0]["probes"][0]["prompt"] == "Q: What is the capital of Norway?\nA:"  # its own template


def test_example_editor_runs_on_a_builtin_task(venv):
    results = edit_run(venv, "example-ft", "bizsre_en_zh", "bizsre", "--limit", "2")
    assert results["n-samples"] == {"bizsre_en_zh": 2}
    post, pre = results["results"]["bizsre_en_zh"], results["pre_edit"]["bizsre_en_zh"]
    assert {"reliability.en.f1", "generality.zh.f1", "locality.zh.f1", "portability.en.f1"} <= set(post)
    assert post["reliability.en.f1"] > pre["reliability.en.f1"]


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_packages_pass_their_own_tests(venv, example):
    source = venv.work.parent / "sources" / example  # the copy the wheel was built from
    output = venv.run("pytest", "-q", "-p", "no:cacheprovider", cwd=source)
    assert " passed" in output and "skipped" not in output  # installed: no test skips for want of it


def test_scaffolded_packages_install_register_and_pass_their_tests(venv):
    editor, task = venv.work / "kedit-smoke-edit", venv.work / "kedit-smoke-facts"
    venv.run("harness", "new", "editor", "smoke-edit", "--dir", editor)
    venv.run("harness", "new", "task", "smoke-facts", "--dir", task)
    # installed beside the shared venv, not into it, where other workers' tests run meanwhile
    site = venv.work / "smoke-site"
    venv.run("pip", "install", "-q", "--no-deps", "--target", site, editor, task)
    venv = dataclasses.replace(venv, env={**venv.env, "PYTHONPATH": str(site)})
    assert "smoke-edit" in names(venv.run("harness", "ls", "editors"))
    assert "smoke_facts" in names(venv.run("harness", "ls", "tasks"))
    results = edit_run(venv, "smoke-edit", "smoke_facts", "smoke", "--set", "lr=1e-2", "--set", "steps=200")
    assert results["n-samples"] == {"smoke_facts": 1}
    assert results["results"]["smoke_facts"]["reliability.en.em"] == 100.0
    for package in (editor, task):
        assert " passed" in venv.run("pytest", "-q", "-p", "no:cacheprovider", cwd=package)
