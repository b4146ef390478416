"""harness compare: metric diffs within tolerances, refusals of incomparable runs, the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.compare import MISSING, MOVED, NEW, OK, Tolerance, compare, render
from harness.runner import run

TASK = "bizsre_en_zh"


@pytest.fixture(scope="module")
def real_results(tmp_path_factory) -> dict:
    """The results.json of a real two-record run on the tiny model (seconds)."""
    out = tmp_path_factory.mktemp("compare-run")
    run(editor="rome", task=TASK, model="tiny-llama", limit=2, output_dir=str(out), progress=False)
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


@pytest.fixture
def baseline(real_results) -> dict:
    return copy.deepcopy(real_results)


@pytest.fixture
def current(real_results) -> dict:
    return copy.deepcopy(real_results)


def write(path: Path, results: dict) -> str:
    path.write_text(json.dumps(results), encoding="utf-8")
    return str(path)


def by_key(comparison) -> dict:
    return {row.key: row for row in comparison.rows}


def tolerances(*texts: str) -> list[Tolerance]:
    return [Tolerance.parse(text) for text in texts]


def test_identical_runs_compare_exactly(current, baseline):
    comparison = compare(current, baseline, [])
    post, pre = len(baseline["results"][TASK]), len(baseline["pre_edit"][TASK])
    assert len(comparison.rows) == post + pre
    assert all(row.status == OK and row.delta == 0 for row in comparison.rows)
    assert comparison.refusals == [] and comparison.exit_code == 0
    assert render(comparison) == f"{post + pre} metrics compared, 0 beyond tolerance"


def test_json_float_noise_is_not_a_change(current, baseline):
    current["results"][TASK]["reliability.en.f1"] += 1e-9
    assert compare(current, baseline, []).exit_code == 0


def test_moved_metric_beyond_and_within_tolerance(current, baseline):
    current["results"][TASK]["reliability.en.f1"] += 0.5
    key = f"results.{TASK}.reliability.en.f1"
    strict = compare(current, baseline, [])
    assert by_key(strict)[key].status == MOVED and by_key(strict)[key].delta == 0.5
    assert strict.exit_code == 1
    text = render(strict, causes=False)
    assert key in text and "+0.5" in text and MOVED in text
    assert text.splitlines()[-1].endswith("1 beyond tolerance")
    assert render(strict).startswith(text) and "why: only the numbers moved: 1 of" in render(strict)
    assert compare(current, baseline, tolerances("f1=0.5")).exit_code == 0
    assert compare(current, baseline, tolerances("f1=0.4")).exit_code == 1
    assert compare(current, baseline, tolerances("em=5")).exit_code == 1


def test_patterns_match_whole_parts_and_the_longest_wins():
    key = f"results.{TASK}.locality.zh.f1"
    assert Tolerance("f1", 1).matches(key) and Tolerance("locality.zh", 1).matches(key)
    assert Tolerance("results", 1).matches(key) and Tolerance(key, 1).matches(key)
    assert not Tolerance("1", 1).matches(key) and not Tolerance("zh.em", 1).matches(key)
    assert not Tolerance("locality.en", 1).matches(key) and not Tolerance("pre_edit", 1).matches(key)
    assert Tolerance("results.*.f1", 1).matches(key) and not Tolerance("*.em", 1).matches(key)
    assert Tolerance("results.*.locality.z?.*", 1).matches(key)


def test_most_specific_tolerance_wins(current, baseline):
    for key in ("locality.zh.f1", "locality.en.f1", "portability.zh.f1"):
        current["results"][TASK][key] -= 2
    rules = tolerances("f1=5", "locality.zh=1", "results.*.portability.*=3")
    rows = by_key(compare(current, baseline, rules))
    assert rows[f"results.{TASK}.locality.zh.f1"].tolerance == 1  # locality.zh is longer than f1
    assert rows[f"results.{TASK}.locality.zh.f1"].status == MOVED
    assert rows[f"results.{TASK}.locality.en.f1"].tolerance == 5
    assert rows[f"results.{TASK}.portability.zh.f1"].tolerance == 3  # the glob is the longest
    assert rows[f"results.{TASK}.reliability.en.em"].tolerance == 0  # nothing matches
    # equally long patterns: the last given wins
    rows = by_key(compare(current, baseline, tolerances("en=1", "zh=4")))
    assert rows[f"results.{TASK}.locality.zh.f1"].tolerance == 4


def test_pre_edit_metrics_are_compared(current, baseline):
    current["pre_edit"][TASK]["generality.zh.f1"] += 10
    comparison = compare(current, baseline, [])
    key = f"pre_edit.{TASK}.generality.zh.f1"
    assert [row.key for row in comparison.rows if row.status != OK] == [key]
    assert compare(current, baseline, tolerances("pre_edit=10")).exit_code == 0
    assert compare(current, baseline, tolerances("results=10")).exit_code == 1


def test_missing_and_new_keys(current, baseline):
    del current["results"][TASK]["locality.zh.em"]
    current["results"][TASK]["fluency.zh.f1"] = 50.0
    comparison = compare(current, baseline, tolerances("*=100"))
    rows = by_key(comparison)
    assert rows[f"results.{TASK}.locality.zh.em"].status == MISSING
    assert rows[f"results.{TASK}.fluency.zh.f1"].status == NEW
    assert comparison.exit_code == 1
    assert render(comparison, causes=False).splitlines()[-1].endswith("0 beyond tolerance, 1 missing, 1 new")


def test_ability_metrics_after_edits_are_compared(current, baseline):
    entry = {"metric": "accuracy", "n": 200, "edited": {"accuracy": 51.5}, "unedited": {"accuracy": 55.0}}
    baseline["then"] = {"general_nli": entry}
    current["then"] = {"general_nli": {**entry, "edited": {"accuracy": 49.0}}}
    comparison = compare(current, baseline, [])
    assert by_key(comparison)["then.general_nli.edited.accuracy"].delta == -2.5
    assert compare(current, baseline, tolerances("accuracy=3")).exit_code == 0
    current["then"]["general_nli"]["n"] = 100
    assert [d.field for d in compare(current, baseline, []).refusals] == ["then.n"]


def test_ability_task_run_alone():
    ability = {
        "results": {"general_nli": {"accuracy": 55.0}},
        "n-samples": {"general_nli": 200},
        "editor": "none",
        "task": {"name": "general_nli", "kind": "ability", "metric": "accuracy"},
        "model": {"sha256": "ab" * 32},
        "data": {"/data/general/nli.json": "cd" * 32},
        "templates": {"general/nli.jinja": "ef" * 32},
    }
    moved = copy.deepcopy(ability)
    moved["results"]["general_nli"]["accuracy"] = 56.0
    comparison = compare(moved, ability, [])
    assert [(row.key, row.status) for row in comparison.rows] == [("results.general_nli.accuracy", MOVED)]
    assert comparison.refusals == []


def refusal_fields(current: dict, baseline: dict) -> list[str]:
    return [difference.field for difference in compare(current, baseline, []).refusals]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("model.sha256", "0" * 64),
        ("templates", {"bizsre/question.jinja": "1" * 64}),
        ("task.name", "bizsre_zh_en"),
        ("n-samples", {TASK: 3}),
        ("scoring.answer_mode", "generate"),
        ("scoring.tokenizer", "some/tokenizer"),
        ("editing.mode", "batch"),
        ("editing.batch_size", 4),
    ],
)
def test_each_refusal_is_named_with_both_values(current, baseline, path, value):
    *parents, last = path.split(".")
    holder = current
    for part in parents:
        holder = holder[part]
    old = holder[last]
    holder[last] = value
    comparison = compare(current, baseline, [])
    assert [d.field for d in comparison.refusals] == [path] and comparison.exit_code == 2
    text = render(comparison)
    assert text.startswith("refused:") and f"--allow-config-mismatch {path}" in text
    line = next(line for line in text.splitlines() if line.strip().startswith(f"{path}:"))
    shown = [json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v) for v in (old, value)]
    assert shown[0] in line and shown[1] in line
    assert "metrics compared" not in text


def test_data_compared_by_file_names_and_hashes_not_paths(current, baseline):
    files = current["data"].get("bundled_sample", current["data"])  # HARNESS_DATA_DIR may be set
    current["data"] = {f"/elsewhere/machine/{Path(p).name}": h for p, h in files.items()}
    assert compare(current, baseline, []).exit_code == 0
    # the same bytes under another name, and other bytes under the same name, are different data
    renamed = {f"/elsewhere/other_{Path(p).name}": h for p, h in files.items()}
    changed = {p: "9" * 64 for p in files}
    for data in (renamed, changed):
        current["data"] = {"bundled_sample": data}
        comparison = compare(current, baseline, [])
        assert [d.field for d in comparison.refusals] == ["data"]
        line = render(comparison).splitlines()[1]
        name = Path(next(iter(files))).name
        assert line.strip().startswith(f"data: {{{name}@") and "->" in line


def test_all_refusals_listed_together_and_allowed_ones_become_notes(current, baseline):
    current["model"]["sha256"] = "0" * 64
    current["scoring"]["tokenizer"] = "model:other"
    assert refusal_fields(current, baseline) == ["model.sha256", "scoring.tokenizer"]
    partly = compare(current, baseline, [], allow=["model.sha256"])
    assert [d.field for d in partly.refusals] == ["scoring.tokenizer"] and partly.exit_code == 2
    allowed = compare(current, baseline, [], allow=["model.sha256", "scoring.tokenizer"])
    assert allowed.refusals == [] and allowed.exit_code == 0
    text = render(allowed)
    assert "note: model.sha256: " in text and "(allowed by --allow-config-mismatch)" in text
    with pytest.raises(ValueError, match="model: unknown field"):
        compare(current, baseline, [], allow=["model"])


def test_legitimate_differences_are_notes(current, baseline):
    current["editor"] = "memit"
    current["hparams"]["lr"] = 1.0
    current["config"]["seed"] = 7
    current["config"]["output_dir"] = "/somewhere/else"
    current["git_commit"] = "f" * 40
    current["versions"]["torch"] = "9.9"
    comparison = compare(current, baseline, [])
    assert comparison.exit_code == 0
    notes = [str(note) for note in comparison.notes]
    assert "editor: rome -> memit" in notes and "hparams.lr: 0.5 -> 1" in notes
    assert (
        "config.seed: 0 -> 7" in notes and f"versions.torch: {baseline['versions']['torch']} -> 9.9" in notes
    )
    assert any(note.startswith("git_commit: ") for note in notes)
    assert not any("output_dir" in note for note in notes)  # a path, not a setting


@pytest.mark.parametrize("text", ["f1=abc", "f1", "=1", "f1=-1", "f1=nan"])
def test_bad_tolerance_syntax(text):
    with pytest.raises(ValueError, match=f"--tolerance '{text}'"):
        Tolerance.parse(text)


def test_cli_exit_codes_and_output(tmp_path, capsys, current, baseline):
    base = write(tmp_path / "baseline.json", {**baseline, "leaderboard": {"rank": 1}})
    same = write(tmp_path / "same.json", current)
    assert main(["compare", same, "--baseline", base]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines() == [
        f"{len(by_key(compare(current, baseline, [])))} metrics compared, 0 beyond tolerance"
    ]

    current["results"][TASK]["locality.zh.em"] -= 2
    moved = write(tmp_path / "moved.json", current)
    assert main(["compare", moved, "--baseline", base]) == 1
    out = capsys.readouterr().out
    assert f"results.{TASK}.locality.zh.em" in out and "MOVED" in out and "-2" in out
    assert "reliability.en.f1" not in out  # only rows that are not OK
    assert main(["compare", moved, "--baseline", base, "--tolerance", "f1=1", "--tolerance", "zh.em=2"]) == 0
    assert main(["compare", moved, "--baseline", base, "--all", "--markdown"]) == 1
    out = capsys.readouterr().out
    assert "| key | baseline | current | delta | tolerance | status |" in out
    assert f"| results.{TASK}.reliability.en.f1 |" in out and "| MOVED |" in out

    current["model"]["sha256"] = "0" * 64
    other_model = write(tmp_path / "other_model.json", current)
    assert main(["compare", other_model, "--baseline", base]) == 2
    assert "model.sha256: " in capsys.readouterr().out
    allowed = ["--allow-config-mismatch", "model.sha256", "--tolerance", "em=2"]
    assert main(["compare", other_model, "--baseline", base, *allowed]) == 0


def test_cli_clear_errors(tmp_path, capsys, baseline):
    base = write(tmp_path / "baseline.json", baseline)
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "other.json").write_text('{"editor": "rome"}', encoding="utf-8")
    for path, reason in [
        (tmp_path / "absent.json", "no such file"),
        (tmp_path / "broken.json", "not JSON"),
        (tmp_path / "other.json", "not a results.json"),
    ]:
        assert main(["compare", str(path), "--baseline", base]) == 2
        err = capsys.readouterr().err
        assert f"error: {path}: {reason}" in err and "Traceback" not in err
    assert main(["compare", base, "--baseline", str(tmp_path / "absent.json")]) == 2
    assert f"{tmp_path / 'absent.json'}: no such file" in capsys.readouterr().err
    assert main(["compare", base, "--baseline", base, "--tolerance", "f1=abc"]) == 2
    assert "--tolerance 'f1=abc'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", base, "--baseline", base, "--allow-config-mismatch", "model"])
    assert "invalid choice: 'model'" in capsys.readouterr().err
