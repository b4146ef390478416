"""Sequential and batch-sequential modes: edits accumulate, nothing is restored until the end, the
original weights come back bit for bit, a cut run resumes to the same numbers, decay points."""

from __future__ import annotations

import json

import pytest
import torch

from harness import plugins
from harness.api import Edit
from harness.config import ConfigError
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
    """Every edit call of the ft-m editor: its records and the weights just before it; optionally
    interrupts the run at call ``stop_at`` (0-based)."""

    def __init__(self, monkeypatch, editor_class, apply, stop_at: int | None = None):
        self.records: list[list[str]] = []
        self.weights: list[dict[str, torch.Tensor]] = []
        self.model = None

        def watched(editor, model, tokenizer, requests):
            if len(self.records) == stop_at:
                raise KeyboardInterrupt
            self.model = model
            self.weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
            self.records.append([r.record_id for r in requests])
            return apply(editor, model, tokenizer, requests)

        monkeypatch.setattr(editor_class, "apply", watched)


@pytest.fixture
def calls(monkeypatch):
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    plugins.load_plugins()
    editor_class = plugins.editors()["ft-m"]
    apply = editor_class.apply  # the unwatched one, for every Calls of the test
    return lambda stop_at=None: Calls(monkeypatch, editor_class, apply, stop_at)


@pytest.fixture
def restores(monkeypatch):
    """Touched tensors of every per-edit Edit.restore call."""
    seen = []
    original = Edit.restore

    def counting(self):
        seen.append(self.touched)
        original(self)

    monkeypatch.setattr(Edit, "restore", counting)
    return seen


def _differs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    return {name for name in a if not torch.equal(a[name], b[name])}


def _samples(out) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_sequential_edits_accumulate_and_the_originals_come_back_at_the_end(tmp_path, calls, restores):
    seen = calls()
    results = run(output_dir=str(tmp_path), limit=3, mode="sequential", **SETTINGS)
    assert seen.records == [["0"], ["1"], ["2"]]
    original, before_second, before_third = seen.weights
    first = _differs(original, before_second)
    assert first  # the first edit is in force when the second starts
    assert first <= _differs(original, before_third)  # and still when the third starts
    assert _differs(before_second, before_third)  # the second edit changed the weights too
    # one restore, after the last edit, of every tensor any edit touched; none between edits
    assert restores == [sorted({name for s in _samples(tmp_path) for name in s["touched"]})]
    final = dict(seen.model.named_parameters())
    assert not _differs(original, final)  # the originals, bit for bit, once at the end
    assert results["editing"] == {
        "mode": "sequential",
        "batch_size": 1,
        "edits_applied": 3,
        "edits_in_force_when_probed": 3,
        "probe_every": 0,
    }
    samples = _samples(tmp_path)
    assert [s["record_id"] for s in samples] == ["0", "1", "2"]
    assert all(s["edits_in_force"] == 3 and s["touched"] for s in samples)
    assert not (tmp_path / "accumulated.pt").exists()


def test_single_mode_restores_after_every_edit(tmp_path, calls, restores):
    seen = calls()
    run(output_dir=str(tmp_path), limit=2, **SETTINGS)
    assert len(restores) == 2 and not _differs(seen.weights[0], seen.weights[1])


def test_batch_sequential_applies_the_right_batches(tmp_path, calls):
    seen = calls()
    results = run(output_dir=str(tmp_path), limit=5, mode="batch-sequential", batch_size=2, **SETTINGS)
    assert seen.records == [["0", "1"], ["2", "3"], ["4"]]
    assert results["editing"]["edits_applied"] == 5 and results["editing"]["batch_size"] == 2
    grouped = [s["batch"]["records"] for s in _samples(tmp_path)]
    assert grouped == [["0", "1"]] * 2 + [["2", "3"]] * 2 + [["4"]]
    assert _differs(seen.weights[0], seen.weights[2])  # two batches in force before the third


def test_a_cut_sequential_run_resumes_without_redoing_edits_and_ends_equal(tmp_path, calls):
    whole = run(output_dir=str(tmp_path / "whole"), limit=4, mode="sequential", probe_every=2, **SETTINGS)

    cut = calls(stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        run(output_dir=str(tmp_path / "split"), limit=4, mode="sequential", probe_every=2, **SETTINGS)
    assert cut.records == [["0"], ["1"], ["2"]]
    assert (tmp_path / "split" / "accumulated.pt").is_file()
    assert not _differs(cut.weights[0], dict(cut.model.named_parameters()))  # restored on the way out

    again = calls()
    resumed = run(output_dir=str(tmp_path / "split"), limit=4, mode="sequential", probe_every=2, **SETTINGS)
    assert again.records == [["3"]]  # edits 0-2 were loaded from disk, not redone
    assert resumed["results"] == whole["results"]
    assert resumed["decay"] == whole["decay"]
    assert [point["edits"] for point in whole["decay"]] == [2, 4]
    assert whole["decay"][-1]["results"] == whole["results"]["bizsre_en_zh"]  # the last point is the end


def test_modes_an_editor_does_not_support_are_refused(tmp_path, calls):
    with pytest.raises(ConfigError, match=r"--mode sequential: editor 'ike' supports \['single'\]"):
        run(
            output_dir=str(tmp_path),
            limit=1,
            mode="sequential",
            **{**SETTINGS, "editor": "ike", "overrides": {}},
        )
    with pytest.raises(ConfigError, match="probe_every: 2 needs an accumulating mode"):
        run(output_dir=str(tmp_path), limit=1, probe_every=2, **SETTINGS)
    with pytest.raises(ConfigError, match="batch_size: 2 edits per call needs mode=batch or batch-seq"):
        run(output_dir=str(tmp_path), limit=2, mode="sequential", batch_size=2, **SETTINGS)
