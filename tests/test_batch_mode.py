"""--mode batch: one edit call per batch of records, all probed before the restore, resumable, and
refused for editors that edit one fact at a time."""

from __future__ import annotations

import json

import pytest

from harness import plugins
from harness.config import ConfigError
from harness.evaluator import BatchMismatch
from harness.hookspecs import hookimpl
from harness.runner import run

SETTINGS = dict(
    editor="ft-m",
    task="bizsre_en_zh",
    model="tiny-llama",
    data_dir=None,
    overrides={"steps": 3},
    progress=False,
)


class Calls:
    """Groups the records the editor was called on: before_edit fires for every request of a call
    before the edit, after_edit after it, so a new group starts at the first before_edit after an
    after_edit."""

    def __init__(self, stop_after_samples: int | None = None):
        self.batches: list[list[str]] = []
        self.samples = 0
        self.stop_after_samples = stop_after_samples
        self.open = False

    @hookimpl
    def before_edit(self, request, run):
        if not self.open:
            self.batches.append([])
            self.open = True
        self.batches[-1].append(request.record_id)

    @hookimpl
    def after_edit(self, request, sample, run):
        self.open = False
        self.samples += 1
        if self.samples == self.stop_after_samples:
            raise KeyboardInterrupt


@pytest.fixture
def calls(monkeypatch, register_plugin):
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    return lambda stop_after_samples=None: register_plugin(Calls(stop_after_samples))


def _samples(out) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_batches_edit_once_probe_all_and_amortise_time(tmp_path, calls):
    seen = calls()
    results = run(output_dir=str(tmp_path / "b"), limit=6, mode="batch", batch_size=4, **SETTINGS)
    assert seen.batches == [["0", "1", "2", "3"], ["4", "5"]]
    samples = _samples(tmp_path / "b")
    assert [s["record_id"] for s in samples] == ["0", "1", "2", "3", "4", "5"]
    assert [s["batch"]["records"] for s in samples] == [["0", "1", "2", "3"]] * 4 + [["4", "5"]] * 2
    for s in samples:
        assert s["edit_seconds"] == pytest.approx(s["batch"]["seconds"] / len(s["batch"]["records"]))
    assert results["config"]["mode"] == "batch" and results["config"]["batch_size"] == 4
    assert results["n-samples"] == {"bizsre_en_zh": 6}


def test_a_batch_of_one_is_the_single_edit(tmp_path, calls):
    single = run(output_dir=str(tmp_path / "s"), limit=3, **SETTINGS)
    batch_of_one = run(output_dir=str(tmp_path / "b1"), limit=3, mode="batch", batch_size=1, **SETTINGS)
    assert batch_of_one["results"] == single["results"]


def test_batch_mode_resumes_a_cut_batch_and_matches_an_uninterrupted_run(tmp_path, calls):
    whole = run(output_dir=str(tmp_path / "whole"), limit=6, mode="batch", batch_size=4, **SETTINGS)
    first = calls(stop_after_samples=2)  # dies after logging 2 of the first batch's 4 records
    with pytest.raises(KeyboardInterrupt):
        run(output_dir=str(tmp_path / "split"), limit=6, mode="batch", batch_size=4, **SETTINGS)
    assert [s["record_id"] for s in _samples(tmp_path / "split")] == ["0", "1"]
    plugins.pm.unregister(first)
    again = calls()
    resumed = run(output_dir=str(tmp_path / "split"), limit=6, mode="batch", batch_size=4, **SETTINGS)
    assert again.batches == [["0", "1", "2", "3"], ["4", "5"]]  # the cut batch is edited again whole
    assert [s["record_id"] for s in _samples(tmp_path / "split")] == ["0", "1", "2", "3", "4", "5"]
    assert resumed["results"] == whole["results"]


def test_regrouped_batches_are_refused(tmp_path, calls):
    run(output_dir=str(tmp_path / "b"), limit=6, mode="batch", batch_size=4, **SETTINGS)
    with pytest.raises(BatchMismatch, match=r"record 4 was edited in a batch of \['4', '5'\]"):
        run(output_dir=str(tmp_path / "b"), limit=8, mode="batch", batch_size=4, **SETTINGS)


def test_single_edit_editor_in_batch_mode_is_a_clear_error(tmp_path, calls):
    with pytest.raises(ConfigError) as info:
        run(
            output_dir=str(tmp_path / "r"),
            limit=2,
            mode="batch",
            batch_size=2,
            **{**SETTINGS, "editor": "rome"},
        )
    message = str(info.value)
    assert "editor 'rome' supports ['single', 'sequential']" in message
    able = message.split("editors that support batch:")[1]
    assert "'ft-m'" in able and "'memit'" in able and "'kn'" not in able
