"""`harness new editor|task NAME`: the generated package names itself right, imports, registers through
the harness hooks, and bad names or occupied directories are refused before anything is written."""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pluggy
import pytest

from harness import hookspecs
from harness.api import Editor
from harness.cli import main
from harness.scaffold import ScaffoldError, plugin_names, scaffold
from harness.templates import Templates

EDITOR_FILES = ["README.md", "kedit_my_edit/__init__.py", "pyproject.toml", "tests/test_kedit_my_edit.py"]
TASK_FILES = [
    "README.md",
    "kedit_my_facts/__init__.py",
    "kedit_my_facts/data/records.json",
    "kedit_my_facts/templates/kedit_my_facts/question.jinja",
    "pyproject.toml",
    "tests/test_kedit_my_facts.py",
]


@pytest.fixture
def load(monkeypatch):
    """Import a generated package from its directory; forgotten again after the test."""
    loaded: list[str] = []

    def load_module(root: Path, module: str):
        monkeypatch.syspath_prepend(str(root))
        loaded.append(module)
        return importlib.import_module(module)

    yield load_module
    for module in loaded:
        sys.modules.pop(module, None)


def manager_with(module) -> pluggy.PluginManager:
    """A fresh plugin manager holding only the generated plugin, as the harness would load it."""
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(hookspecs)
    manager.register(module)
    return manager


def relative_files(root: Path, written: list[Path]) -> list[str]:
    return [path.relative_to(root).as_posix() for path in written]


def test_names_spell_the_package_module_and_registered_name():
    editor = plugin_names("editor", "my-edit")
    assert (editor.package, editor.module, editor.registered, editor.class_name) == (
        "kedit-my-edit",
        "kedit_my_edit",
        "my-edit",
        "MyEdit",
    )
    task = plugin_names("task", "my-facts")
    assert (task.package, task.module, task.registered, task.class_name) == (
        "kedit-my-facts",
        "kedit_my_facts",
        "my_facts",
        "MyFacts",
    )


def test_editor_package_has_its_entry_point_and_registers(tmp_path, load):
    root = tmp_path / "kedit-my-edit"
    assert relative_files(root, scaffold("editor", "my-edit", root)) == EDITOR_FILES
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["name"] == "kedit-my-edit"
    assert "kedit-harness>=0.1" in project["project"]["dependencies"]
    assert project["project"]["entry-points"]["harness"] == {"kedit_my_edit": "kedit_my_edit"}
    assert project["tool"]["setuptools"]["packages"] == ["kedit_my_edit"]
    module = load(root, "kedit_my_edit")
    found = {}
    manager_with(module).hook.register_editors(register=lambda name, cls: found.setdefault(name, cls))
    assert list(found) == ["my-edit"]
    editor = found["my-edit"]
    assert editor is module.MyEdit and dataclasses.is_dataclass(editor.hparams_class)
    assert issubclass(editor, Editor) and editor.hparams_class().layer is None
    assert editor.capabilities.modes == (
        "single",
        "sequential",
        "batch",
        "batch-sequential",
    )
    assert "import kedit_my_edit" in (root / "tests" / "test_kedit_my_edit.py").read_text()


def test_task_package_registers_a_task_with_its_template_and_sample(tmp_path, load):
    root = tmp_path / "facts"
    assert relative_files(root, scaffold("task", "my-facts", root)) == TASK_FILES
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["harness"] == {"kedit_my_facts": "kedit_my_facts"}
    assert project["tool"]["setuptools"]["package-data"]["kedit_my_facts"] == [
        "data/*.json",
        "templates/**/*.jinja",
    ]
    module = load(root, "kedit_my_facts")
    manager = manager_with(module)
    found = []
    manager.hook.register_tasks(register=found.append, data_dir=None)
    (task,) = found
    assert (task.name, task.languages) == ("my_facts", ("en",))
    assert task.template == "kedit_my_facts/question.jinja"
    templates = Templates([d for dirs in manager.hook.template_dirs() for d in dirs])
    raw = task.load_raw(None)
    assert len(raw) == 1 and task.validate(raw) == []
    (record,) = task.records(raw, lambda question: templates.render(task.template, question=question))
    assert record.request.prompt == "Q: What is the capital of Norway?\nA:"
    assert [p.key for p in record.probes] == ["reliability.en", "generality.en", "locality.en"]
    assert record.probes[2].reference_is_pre_edit
    assert [str(i) for i in task.validate([{**raw[0], "target": " "}])] == [
        "record 0, field 'target': missing or empty"
    ]
    assert json.loads((root / "kedit_my_facts" / "data" / "records.json").read_text()) == raw


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_generated_code_passes_ruff(tmp_path):
    for kind, name in (("editor", "lint-me"), ("task", "lint-me")):
        root = tmp_path / kind
        scaffold(kind, name, root)
        rules = ["--isolated", "--select", "E,F,W,I,UP,B,SIM", "--line-length", "110"]
        result = subprocess.run(["ruff", "check", *rules, "."], cwd=root, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_cli_writes_into_the_default_directory_and_an_empty_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["new", "editor", "my-edit"]) == 0
    assert (tmp_path / "kedit-my-edit" / "kedit_my_edit" / "__init__.py").is_file()
    out = capsys.readouterr().out
    assert f"created: {tmp_path / 'kedit-my-edit' / 'pyproject.toml'}" in out and "harness ls editors" in out
    (tmp_path / "empty").mkdir()
    assert main(["new", "task", "my-facts", "--dir", str(tmp_path / "empty")]) == 0
    assert (tmp_path / "empty" / "kedit_my_facts" / "data" / "records.json").is_file()


def test_an_occupied_directory_is_refused_naming_the_option(tmp_path, capsys):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    assert main(["new", "editor", "my-edit", "--dir", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"{target} exists and is not an empty directory" in err and "--dir" in err
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    with pytest.raises(ScaffoldError, match="--dir"):
        scaffold("task", "my-facts", target / "notes.txt")


@pytest.mark.parametrize("name", ["MyEdit", "1edit", "my--edit", "my edit", "_edit", "edit-", "my.edit", ""])
def test_invalid_names_are_refused_naming_the_argument(tmp_path, capsys, name):
    assert main(["new", "editor", name, "--dir", str(tmp_path / "out")]) == 2
    assert f"NAME {name!r} is not a valid plugin name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_kind_is_refused():
    with pytest.raises(ScaffoldError, match="choose one of editor, task"):
        plugin_names("metric", "x")
