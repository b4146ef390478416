"""The editor contract: capabilities declared once, prepare-before-apply enforced by the harness,
only Editor subclasses registered, and distinct exit codes for misuse and failure."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from harness import exit_codes, plugins
from harness.api import Capabilities, Edit, Editor, EditorContext, EditorNotPrepared, EditRequest
from harness.cli import main
from harness.hookspecs import hookimpl

REQUEST = EditRequest(prompt="The capital of France is", target="Rome", subject="France", language="en")


@dataclass(frozen=True)
class NoSettings:
    pass


class Counting(Editor):
    """Counts its setups and edits; changes nothing."""

    hparams_class = NoSettings

    def __init__(self, hparams):
        super().__init__(hparams)
        self.setups = 0
        self.edits: list[int] = []

    def setup(self, model, tokenizer, context):
        self.setups += 1

    def edit(self, model, tokenizer, requests):
        self.edits.append(len(requests))
        return Edit(model, {})


class Batched(Counting):
    capabilities = Capabilities(batch=True)


class FailingSetup(Counting):
    def setup(self, model, tokenizer, context):
        raise ValueError("layer 99 is outside the model")


@pytest.mark.parametrize(
    "capabilities, modes",
    [
        (Capabilities(), ("single", "sequential")),
        (Capabilities(batch=True), ("single", "sequential", "batch", "batch-sequential")),
        (Capabilities(in_weights=False), ("single",)),
        (Capabilities(batch=True, in_weights=False), ("single", "batch")),
        (Capabilities(in_weights=False, memory=True), ("single", "sequential")),
        (
            Capabilities(batch=True, in_weights=False, memory=True),
            ("single", "sequential", "batch", "batch-sequential"),
        ),
    ],
)
def test_modes_follow_from_the_capabilities(capabilities, modes):
    assert capabilities.modes == modes


def test_every_built_in_editor_declares_its_capabilities_on_the_class():
    found = plugins.editors()
    assert {name: c.capabilities.modes for name, c in found.items() if name in ("ike", "serac", "rome")} == {
        "ike": ("single",),
        "serac": ("single", "batch"),
        "rome": ("single", "sequential"),
    }
    assert sorted(n for n, c in found.items() if c.capabilities.trains) == ["mend", "serac"]
    locating = ["alphaedit", "emmet", "memit", "r-rome", "rect-memit", "rect-rome", "rome"]
    assert sorted(n for n, c in found.items() if c.capabilities.locates_subject) == locating
    assert [n for n, c in found.items() if not c.capabilities.changes_model] == ["none"]
    assert sorted(n for n, c in found.items() if c.capabilities.memory) == ["alphaedit", "grace", "wise"]


def test_apply_before_prepare_is_refused_and_the_editor_never_runs():
    editor = Counting(NoSettings())
    with pytest.raises(EditorNotPrepared, match="Counting: prepare"):
        editor.apply(None, None, [REQUEST])
    assert editor.edits == []
    editor.prepare(None, None, EditorContext(cache_dir=None))
    editor.apply(None, None, [REQUEST])
    assert editor.setups == 1 and editor.edits == [1]


def test_a_failed_prepare_leaves_the_editor_unprepared():
    editor = FailingSetup(NoSettings())
    with pytest.raises(ValueError, match="layer 99"):
        editor.prepare(None, None, EditorContext(cache_dir=None))
    with pytest.raises(EditorNotPrepared):
        editor.apply(None, None, [REQUEST])


def test_more_requests_than_the_capabilities_allow_are_refused():
    single, batched = Counting(NoSettings()), Batched(NoSettings())
    for editor in (single, batched):
        editor.prepare(None, None, EditorContext(cache_dir=None))
        with pytest.raises(ValueError, match="no requests"):
            editor.apply(None, None, [])
    with pytest.raises(ValueError, match="Counting edits one fact per call, got 2 requests"):
        single.apply(None, None, [REQUEST, REQUEST])
    batched.apply(None, None, [REQUEST, REQUEST])
    assert single.edits == [] and batched.edits == [2]


def test_a_class_that_is_not_an_editor_is_refused_with_a_warning(register_plugin, caplog):
    class Duck:
        hparams_class = NoSettings

        def prepare(self, model, tokenizer, context): ...

        def apply(self, model, tokenizer, requests): ...

    class Plugin:
        @hookimpl
        def register_editors(self, register):
            register("duck", Duck)

    register_plugin(Plugin())
    found = plugins.editors()
    assert "duck" not in found and "rome" in found
    assert "is not a subclass of harness.api.Editor" in caplog.text


class Exploding(Counting):
    def edit(self, model, tokenizer, requests):
        raise RuntimeError("out of memory")


def test_exit_codes_tell_misuse_from_failure(register_plugin, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)

    class Plugin:
        @hookimpl
        def register_editors(self, register):
            register("exploding", Exploding)

    register_plugin(Plugin())
    base = ["run", "--task", "bizsre_en_zh", "--model", "tiny-llama", "--limit", "1", "--output-dir"]
    assert main([*base, str(tmp_path / "a"), "--editor", "exploding"]) == exit_codes.FAILED
    assert "out of memory" in capsys.readouterr().err
    bad_limit = ["--editor", "exploding", "--set", "limit=-1"]
    assert main([*base, str(tmp_path / "b"), *bad_limit]) == exit_codes.USAGE
    assert "limit: -1 is out of range" in capsys.readouterr().err
    assert main([*base, str(tmp_path / "c"), "--editor", "explodng"]) == exit_codes.USAGE
    assert "unknown editor 'explodng'" in capsys.readouterr().err
