"""A run resumed after a crash lists both invocations, each with the records it wrote; time adds up."""

from __future__ import annotations

import json
import time

import pytest

from harness import plugins
from harness.hookspecs import hookimpl
from harness.provenance import INVOCATIONS
from harness.runner import run

RUN = {"editor": "ft-m", "task": "bizsre_en_zh", "model": "tiny-llama", "limit": 3, "progress": False}


class CrashAfterFirstEdit:
    """Kills the run right after record 0 is logged, as a crash would."""

    @hookimpl
    def after_edit(self, request, sample, run):
        if sample["record_id"] == "0":
            raise KeyboardInterrupt("killed")


def test_a_resumed_run_lists_every_invocation_with_its_records(tmp_path, register_plugin):
    out = tmp_path / "run"
    crash = register_plugin(CrashAfterFirstEdit())
    with pytest.raises(BaseException, match="killed"):
        run(**RUN, output_dir=str(out))
    assert len((out / INVOCATIONS).read_text().splitlines()) == 1
    plugins.pm.unregister(crash)
    before = time.time()
    results = run(**RUN, output_dir=str(out))
    first, second = results["invocations"]
    assert first["records"] == ["0"] and second["records"] == ["1", "2"]
    for entry in (first, second):
        assert entry["commit"] == results["git_commit"]
        assert entry["versions"] == results["versions"]
        assert entry["seconds"] > 0 and entry["started"] <= entry["ended"]
    assert first["ended"] <= second["started"]  # the killed one ends at its last logged record
    assert results["timings"]["total_seconds"] == pytest.approx(first["seconds"] + second["seconds"])
    assert second["seconds"] <= time.time() - before + 60  # this invocation, not the whole history
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["invocation"] for s in samples] == [first["id"], second["id"], second["id"]]


def test_a_finished_run_read_again_lists_only_invocations_that_wrote_records(tmp_path):
    out = tmp_path / "run"
    first = run(**RUN, output_dir=str(out))
    again = run(**RUN, output_dir=str(out))  # nothing left to edit
    assert [e["records"] for e in first["invocations"]] == [["0", "1", "2"]]
    assert [e["records"] for e in again["invocations"]] == [["0", "1", "2"], []]
    assert again["invocations"][0] == first["invocations"][0]


def test_samples_from_before_invocations_were_recorded_are_listed_apart(tmp_path):
    out = tmp_path / "run"
    run(**RUN, output_dir=str(out))
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for sample in lines[:2]:
        del sample["invocation"], sample["logged_at"]
    (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in lines))
    results = run(**RUN, output_dir=str(out))
    assert results["invocations"][0] == {
        "id": None,
        "note": "logged before invocations were recorded",
        "records": ["0", "1"],
    }
    assert [e["records"] for e in results["invocations"][1:]] == [["2"], []]
