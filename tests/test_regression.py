"""The regression guard: committed numbers (tests/baselines) re-run and compared.

Tiny random models must give the stored numbers exactly; the demo model within the spec's
tolerances. After an intended change, regenerate with `harness leaderboard tests/baselines/X.toml`
and commit the new files with the reason. A failure says, per entry, whether the model, the data,
the setup, the library versions or only the numbers differ, and what to do in each case. The
numbers hold for the tested set of versions (constraints.txt); `.ci/run-latest` runs this against
the newest releases.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.compare import MOVED, OK, Tolerance, compare
from harness.leaderboard import LeaderboardSpec, check, check_report
from harness.runner import run

BASELINES = Path(__file__).parent / "baselines"


def _assert_unmoved(spec_file: str, data_dir: Path, scratch: Path) -> None:
    spec = LeaderboardSpec.load(BASELINES / spec_file)
    comparisons = check(spec, str(data_dir), scratch, progress=False)
    assert len(comparisons) == len(spec.tasks) * len(spec.editors)
    report = check_report(spec, comparisons)  # grouped by cause: model, data, setup, versions, numbers
    assert not report, f"guarded numbers do not hold (regenerate {spec_file} only if intended):\n{report}"


def test_tiny_model_numbers_are_reproduced_exactly(data_dir, tmp_path):
    _assert_unmoved("tiny.toml", data_dir, tmp_path)


@pytest.mark.slow
def test_demo_model_numbers_stay_within_tolerance(data_dir, gemma, tmp_path):
    _assert_unmoved("demo.toml", data_dir, tmp_path)


def test_demo_tolerances_come_from_the_stored_stderr_else_the_explicit_ones():
    spec = LeaderboardSpec.load(BASELINES / "demo.toml")
    assert spec.tolerance_from_stderr == 2.0 and spec.tolerances == ("f1=2.0", "em=34")
    tolerances = [Tolerance.parse(text) for text in spec.tolerances]
    stored = json.loads(spec.entry_path("bizsre_en_zh", "rome").read_text(encoding="utf-8"))
    key = "generality.zh.f1"
    assert stored["results"]["bizsre_en_zh"][f"{key}_stderr"] > 0
    older = json.loads(json.dumps(stored))
    del older["results"]["bizsre_en_zh"][f"{key}_stderr"]  # a file from before stderrs: f1=2.0 holds

    def status(moved: float, baseline: dict) -> str:
        fresh = json.loads(json.dumps(stored))
        fresh["results"]["bizsre_en_zh"][key] += moved
        rows = compare(fresh, baseline, tolerances, stderr_factor=spec.tolerance_from_stderr).rows
        return next(row.status for row in rows if row.key == f"results.bizsre_en_zh.{key}")

    assert (status(1.9, older), status(2.1, older)) == (OK, MOVED)
    with_stderr = json.loads(json.dumps(stored))
    with_stderr["results"]["bizsre_en_zh"][f"{key}_stderr"] = 5.0  # regenerated: 2 x 5 points allowed
    assert (status(9.9, with_stderr), status(10.1, with_stderr)) == (OK, MOVED)
    with_stderr["results"]["bizsre_en_zh"][f"{key}_stderr"] = 0.5  # never below the explicit 2.0
    assert status(1.9, with_stderr) == OK


@pytest.mark.parametrize("editor", ["ft-l", "kn"])
def test_the_same_command_twice_gives_identical_numbers(editor, tmp_path):
    first, second = (
        run(
            editor=editor,
            task="bizsre_zh_en",
            model="tiny-llama",
            limit=2,
            output_dir=str(tmp_path / d),
            progress=False,
        )
        for d in ("a", "b")
    )
    for key in ("results", "pre_edit", "record_ids", "hparams", "model"):
        assert first[key] == second[key]
    lines = [(tmp_path / d / "samples.jsonl").read_text().splitlines() for d in ("a", "b")]
    assert [_without_time(line) for line in lines[0]] == [_without_time(line) for line in lines[1]]
    if editor == "kn":  # the same numbers although the second run read its neurons from the cache
        assert all(json.loads(line)["edit_info"]["from_cache"] for line in lines[1])


def _without_time(line: str) -> dict:
    """A sample less what depends on when and by which process it was written, and on what the cache
    held (the second run reads KN's neurons back: ``from_cache``)."""
    sample = json.loads(line)
    for key in ("edit_seconds", "invocation", "logged_at"):
        sample.pop(key)
    sample["edit_info"].pop("from_cache", None)
    return sample
