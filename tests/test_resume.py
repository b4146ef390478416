"""A run stopped after k edits and started again computes only the rest, and ends with equal numbers."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from harness import plugins
from harness.api import Editor
from harness.hookspecs import hookimpl
from harness.results import ResumeMismatch
from harness.runner import run
from harness.uncertainty import metric_keys

SETTINGS = dict(
    editor="rome",
    task="bizsre_en_zh",
    model="tiny-llama",
    limit=4,
    data_dir=None,
    overrides={"steps": 3, "contexts_per_length": 1},
    progress=False,
)


class EditCounter:
    """A plugin that counts edits and, optionally, interrupts the run after ``stop_after`` of them."""

    def __init__(self, stop_after: int | None = None):
        self.started, self.stop_after = [], stop_after

    @hookimpl
    def before_edit(self, request, run):
        self.started.append(request.record_id)

    @hookimpl
    def after_edit(self, request, sample, run):
        if self.stop_after is not None and len(self.started) == self.stop_after:
            raise KeyboardInterrupt


@pytest.fixture
def counter(register_plugin):
    return lambda stop_after=None: register_plugin(EditCounter(stop_after))


def test_resume_computes_only_the_rest_and_matches_an_uninterrupted_run(tmp_path, counter, monkeypatch):
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    whole = run(output_dir=str(tmp_path / "whole"), **SETTINGS)

    first = counter(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        run(output_dir=str(tmp_path / "split"), **SETTINGS)
    assert first.started == ["0", "1"]
    lines = (tmp_path / "split" / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["record_id"] for line in lines] == ["0", "1"]
    # a crash while writing leaves a cut line: it is dropped and that edit redone
    with open(tmp_path / "split" / "samples.jsonl", "a") as handle:
        handle.write('{"record_id": "2", "probes": [')
    plugins.pm.unregister(first)

    second = counter()
    resumed = run(output_dir=str(tmp_path / "split"), **SETTINGS)
    assert second.started == ["2", "3"]
    assert resumed["results"] == whole["results"]
    assert resumed["pre_edit"] == whole["pre_edit"]
    assert resumed["n-samples"] == {"bizsre_en_zh": 4}
    assert len(metric_keys(resumed["results"]["bizsre_en_zh"])) == 14


def test_resume_refuses_different_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    settings = {**SETTINGS, "limit": 1}
    run(output_dir=str(tmp_path), **settings)
    with pytest.raises(ResumeMismatch, match=r"hparams\.steps: 3 -> 4"):
        run(output_dir=str(tmp_path), **{**settings, "overrides": {"steps": 4, "contexts_per_length": 1}})


@dataclass(frozen=True)
class NoHparams:
    pass


class TemplatedEditor(Editor):
    """An editor that names templates and stops at its first edit, to see what run.json holds by then
    (prepare runs before the output directory is touched, so a failing prepare leaves none)."""

    hparams_class = NoHparams

    def template_names(self) -> tuple[str, ...]:
        return ("bizsre/question.jinja", "serac/counterfactual.jinja")

    def edit(self, model, tokenizer, requests):
        raise KeyboardInterrupt


def test_editor_templates_are_in_the_manifest_before_the_first_edit(tmp_path, monkeypatch, register_plugin):
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)

    class Plugin:
        @hookimpl
        def register_editors(self, register):
            register("templated", TemplatedEditor)

    register_plugin(Plugin())
    with pytest.raises(KeyboardInterrupt):
        run(**{**SETTINGS, "editor": "templated", "overrides": {}}, output_dir=str(tmp_path))
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert set(manifest["templates"]) == {"bizsre/question.jinja", "serac/counterfactual.jinja"}
    assert all(len(digest) == 64 for digest in manifest["templates"].values())
