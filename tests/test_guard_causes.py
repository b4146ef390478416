"""Why a guarded comparison fails: model, data, setup, library versions or only the numbers, each
with what to do (hand-made results, no model)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from harness.compare import ADVICE, DATA, MODEL, NUMBERS, SETUP, VERSIONS, compare, explain, render
from harness.leaderboard import LeaderboardSpec, check_report

TASK = "bizsre_en_zh"
BASELINE = {
    "results": {TASK: {"reliability.en.f1": 50.0, "generality.zh.f1": 20.0}},
    "pre_edit": {TASK: {"reliability.en.f1": 10.0}},
    "n-samples": 3,
    "task": {"name": TASK},
    "model": {"sha256": "9865513" + "0" * 57, "path": "/a/tiny-llama-v1"},
    "data": {"/data/bizsre/bizsre_test_enzh_743.json": "fc6b0d" + "1" * 58},
    "templates": {"bizsre/question.jinja": "ab" * 32},
    "scoring": {"answer_mode": "teacher_forced", "tokenizer": "model"},
    "editing": {"mode": "single", "batch_size": 1},
    "versions": {
        "python": "3.11.7",
        "kedit-harness": "0.1.0",
        "torch": "2.13.0+cpu",
        "transformers": "5.23.0",
    },
}


@pytest.fixture
def stored() -> dict:
    return copy.deepcopy(BASELINE)


@pytest.fixture
def fresh() -> dict:
    fresh = copy.deepcopy(BASELINE)
    fresh["model"]["path"] = "/elsewhere/tiny-llama-v1"  # a path is not a difference
    fresh["data"] = {"/ci/shared/data/bizsre/bizsre_test_enzh_743.json": "fc6b0d" + "1" * 58}
    return fresh


def kinds(fresh: dict, stored: dict) -> list[str]:
    return [cause.kind for cause in compare(fresh, stored, []).causes]


def test_a_passing_comparison_has_no_cause(fresh, stored):
    comparison = compare(fresh, stored, [])
    assert comparison.exit_code == 0 and comparison.causes == [] and explain(comparison) == ""
    assert "why:" not in render(comparison)


def test_only_numbers_moved(fresh, stored):
    fresh["results"][TASK]["generality.zh.f1"] = 25.0
    fresh["versions"]["kedit-harness"] = "0.2.0"  # the project's own version is no library
    comparison = compare(fresh, stored, [])
    assert [str(c) for c in comparison.causes] == ["only the numbers moved: 1 of 3 metrics not OK"]
    text = render(comparison)
    assert "why: only the numbers moved" in text and ADVICE[NUMBERS] in text and "git bisect" in text


def test_versions_differ_and_numbers_moved(fresh, stored):
    fresh["results"][TASK]["generality.zh.f1"] = 25.0
    fresh["versions"]["transformers"] = "5.25.0"
    (cause,) = compare(fresh, stored, []).causes
    assert cause.kind == VERSIONS and str(cause) == "library versions differ: transformers 5.23.0 -> 5.25.0"
    assert "constraints.txt" in cause.advice and ".ci/run-latest" in cause.advice


def test_versions_alone_do_not_fail_a_comparison(fresh, stored):
    fresh["versions"]["torch"] = "2.14.0"
    comparison = compare(fresh, stored, [])
    assert comparison.exit_code == 0 and comparison.causes == []


def test_the_issue_case_model_hash_and_transformers_changed(fresh, stored):
    fresh["model"]["sha256"] = "f33cc32" + "0" * 57
    fresh["versions"]["transformers"] = "5.25.0"
    comparison = compare(fresh, stored, [])
    assert comparison.exit_code == 3 and [c.kind for c in comparison.causes] == [MODEL, VERSIONS]
    assert str(comparison.causes[0]).startswith("the model differs: model.sha256: 9865513")
    text = render(comparison)
    assert text.startswith("refused:") and "why: the model differs" in text
    assert "why: library versions differ: transformers 5.23.0 -> 5.25.0" in text


def test_data_and_setup_differences(fresh, stored):
    fresh["data"] = {"/ci/shared/data/bizsre/bizsre_test_enzh_743.json": "2" * 64}
    assert kinds(fresh, stored) == [DATA]
    fresh["templates"] = {"bizsre/question.jinja": "cd" * 32}
    fresh["editing"]["mode"] = "batch"
    causes = compare(fresh, stored, []).causes
    assert [c.kind for c in causes] == [DATA, SETUP]
    assert "templates" in causes[1].detail and "editing.mode: single -> batch" in causes[1].detail
    assert "--data-dir" in causes[0].advice


def test_allowed_refusals_are_not_causes(fresh, stored):
    fresh["model"]["sha256"] = "0" * 64
    assert compare(fresh, stored, [], allow=["model.sha256"]).causes == []
    fresh["results"][TASK]["reliability.en.f1"] = 0.0
    assert [c.kind for c in compare(fresh, stored, [], allow=["model.sha256"]).causes] == [NUMBERS]


def test_check_report_groups_failed_entries_by_cause(fresh, stored):
    spec = LeaderboardSpec(
        path=Path("tests/baselines/tiny.toml"),
        title="t",
        model="tiny-llama",
        tasks=(TASK,),
        editors=("rome", "kn", "ft-l"),
        limit=3,
        output=Path("out"),
        runs=Path("runs"),
    )
    moved = copy.deepcopy(fresh)
    moved["results"][TASK]["reliability.en.f1"] = 49.0
    other_model = copy.deepcopy(fresh)
    other_model["model"]["sha256"] = "f" * 64
    other_model["versions"]["transformers"] = "5.25.0"
    comparisons = {
        (TASK, "rome"): compare(fresh, stored, []),
        (TASK, "kn"): compare(moved, stored, []),
        (TASK, "ft-l"): compare(other_model, stored, []),
    }
    report = check_report(spec, comparisons)
    lines = report.splitlines()
    assert lines[0] == "2 of 3 entries of tests/baselines/tiny.toml do not hold:"
    assert lines[1] == "- the model differs in 1: ft-l on bizsre_en_zh"
    assert "harness leaderboard tests/baselines/tiny.toml --data-dir DATA" in lines[2]
    assert lines[3] == "- library versions differ in 1: ft-l on bizsre_en_zh"
    assert lines[5] == "- only the numbers moved in 1: kn on bizsre_en_zh"
    assert "== kn on bizsre_en_zh" in report and "== rome" not in report
    assert report.count("what to do:") == 3  # once per cause, not once per entry
    assert check_report(spec, {(TASK, "rome"): comparisons[TASK, "rome"]}) == ""
