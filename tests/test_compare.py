"""harness compare: metric diffs within tolerances, refusals of incomparable runs, the CLI."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import pytest

from harness.cli import main
from harness.compare import MISSING, MOVED, NEW, OK, Tolerance, compare, find_samples, render
from harness.results import aggregate
from harness.runner import run
from harness.uncertainty import PAIRED, UNPAIRED, metric_keys

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
    post, pre = len(metric_keys(baseline["results"][TASK])), len(metric_keys(baseline["pre_edit"][TASK]))
    assert len(comparison.rows) == post + pre  # the _stderr keys are not metrics
    assert all(row.status == OK and row.delta == 0 for row in comparison.rows)
    assert comparison.refusals == [] and comparison.exit_code == 0
    assert render(comparison) == (
        f"{post + pre} metrics compared, 0 beyond tolerance; 0 beyond noise (95% CI, unpaired from the "
        "stored stderrs; current: per-record scores not given; baseline: per-record scores not given)"
    )


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
    assert text.splitlines()[-1].startswith(
        f"{len(strict.rows)} metrics compared, 1 beyond tolerance; 0 beyond noise ("
    )
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
    last = render(comparison, causes=False).splitlines()[-1]
    assert last.startswith(
        f"{len(rows)} metrics compared, 0 beyond tolerance, 1 missing, 1 new; 0 beyond noise ("
    )


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
    assert [d.field for d in comparison.refusals] == [path] and comparison.exit_code == 3
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
    assert [d.field for d in partly.refusals] == ["scoring.tokenizer"] and partly.exit_code == 3
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
    assert out.strip().splitlines() == [  # samples.jsonl of the run, found through output_dir
        f"{len(by_key(compare(current, baseline, [])))} metrics compared, 0 beyond tolerance; "
        "0 beyond noise (paired bootstrap 95% CI over records)"
    ]

    current["results"][TASK]["locality.zh.em"] -= 2
    moved = write(tmp_path / "moved.json", current)
    assert main(["compare", moved, "--baseline", base]) == 1
    out = capsys.readouterr().out
    assert f"results.{TASK}.locality.zh.em" in out and "MOVED" in out and "-2" in out
    assert "reliability.en.f1" not in out  # only rows that are not OK
    # the edited results.json no longer matches its samples.jsonl: intervals from the stored stderrs
    assert f"current: its samples.jsonl does not reproduce results.{TASK}.locality.zh.em" in out
    assert main(["compare", moved, "--baseline", base, "--tolerance", "f1=1", "--tolerance", "zh.em=2"]) == 0
    assert main(["compare", moved, "--baseline", base, "--all", "--markdown"]) == 1
    out = capsys.readouterr().out
    assert "| key | baseline | current | delta | tolerance | status |" in out
    assert f"| results.{TASK}.reliability.en.f1 |" in out and "| MOVED |" in out

    current["model"]["sha256"] = "0" * 64
    other_model = write(tmp_path / "other_model.json", current)
    assert main(["compare", other_model, "--baseline", base]) == 3
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


def _run(scores: list[float], shift: float, noise: random.Random) -> tuple[dict, list[dict]]:
    """A hand-made run of 50 records (one reliability probe each, F1 ``score + shift`` plus the
    record's own noise): its results.json and its samples.jsonl lines."""
    samples = [
        {
            "record_id": str(i),
            "probes": [
                {
                    "property": "reliability",
                    "language": "en",
                    "post_scores": {"f1": score + shift + noise.uniform(-0.2, 0.2)},
                    "pre_scores": {"f1": score},
                }
            ],
        }
        for i, score in enumerate(scores)
    ]
    results = {
        "results": {TASK: aggregate(samples, "post")},
        "pre_edit": {TASK: aggregate(samples, "pre")},
        "record_ids": [s["record_id"] for s in samples],
        "n-samples": {TASK: len(samples)},
    }
    return results, samples


@pytest.fixture
def planted():
    """A baseline and two current runs on the same 50 records, 1 and 20 points up, each record with
    its own noise in every run."""
    rng = random.Random(3)
    scores = [rng.uniform(0.25, 0.55) for _ in range(50)]
    return tuple(_run(scores, shift, random.Random(seed)) for shift, seed in ((0, 11), (0.01, 12), (0.2, 13)))


def _paired(current: tuple, baseline: tuple, *rules: str):
    return compare(current[0], baseline[0], tolerances(*rules), samples=((current[1], ""), (baseline[1], "")))


def test_paired_ci_flags_a_planted_20_point_shift_and_not_a_1_point_one(planted):
    baseline, small, big = planted
    key = f"results.{TASK}.reliability.en.f1"
    flagged = by_key(_paired(big, baseline))[key]
    assert flagged.interval.method == PAIRED and flagged.interval.beyond_noise
    assert 15 < flagged.delta < 25 and flagged.interval.low > 10
    quiet = by_key(_paired(small, baseline))[key]
    assert abs(quiet.delta) < 3 and quiet.interval.low < 0 < quiet.interval.high
    assert not quiet.interval.beyond_noise
    assert by_key(_paired(small, baseline))[f"pre_edit.{TASK}.reliability.en.f1"].interval.low == 0.0
    text = render(_paired(big, baseline, "f1=25"), causes=False)  # within tolerance, shown: beyond noise
    header, row, _, last = text.splitlines()
    assert header.split() == [
        "key",
        "baseline",
        "current",
        "delta",
        "tolerance",
        "status",
        "95%",
        "CI",
        "noise",
    ]
    low, high = flagged.interval.low, flagged.interval.high
    assert row.startswith(key) and row.endswith(f"OK      [+{low:.2f}, +{high:.2f}]  beyond")
    assert (
        last
        == "2 metrics compared, 0 beyond tolerance; 1 beyond noise (paired bootstrap 95% CI over records)"
    )
    assert render(_paired(small, baseline, "f1=25"), causes=False) == last.replace("1 beyond", "0 beyond")


def test_without_per_record_scores_the_ci_comes_from_both_stderrs(planted):
    baseline, _, big = planted
    key = f"results.{TASK}.reliability.en.f1"
    comparison = compare(big[0], baseline[0], [], samples=((big[1], ""), (None, "no samples.jsonl in /x")))
    row = by_key(comparison)[key]
    stderr = "reliability.en.f1_stderr"
    error = math.hypot(big[0]["results"][TASK][stderr], baseline[0]["results"][TASK][stderr])
    assert row.interval.method == UNPAIRED and row.interval.beyond_noise
    assert row.interval.low == pytest.approx(row.delta - 1.959964 * error, abs=1e-4)
    assert (
        render(comparison, causes=False)
        .splitlines()[-1]
        .endswith(
            "1 beyond noise (95% CI, unpaired from the stored stderrs; baseline: no samples.jsonl in /x)"
        )
    )
    del baseline[0]["results"][TASK]["reliability.en.f1_stderr"]  # a baseline from before stderrs
    old = compare(big[0], baseline[0], [])
    assert by_key(old)[key].interval is None and by_key(old)[f"pre_edit.{TASK}.reliability.en.f1"].interval


def test_tolerance_from_stderr_allows_k_baseline_stderrs_never_less_than_the_explicit_one(current, baseline):
    key = "reliability.en.f1"
    error = baseline["results"][TASK][f"{key}_stderr"]
    assert error > 1
    full = f"results.{TASK}.{key}"
    current["results"][TASK][key] += 1.9 * error
    assert by_key(compare(current, baseline, [], stderr_factor=2))[full].status == OK
    assert by_key(compare(current, baseline, [], stderr_factor=2))[full].tolerance == 2 * error
    assert by_key(compare(current, baseline, [], stderr_factor=1.5))[full].status == MOVED
    assert by_key(compare(current, baseline, tolerances("f1=100"), stderr_factor=1.5))[full].status == OK
    del baseline["results"][TASK][f"{key}_stderr"]  # no stderr stored: the explicit tolerance alone
    assert by_key(compare(current, baseline, tolerances("f1=1"), stderr_factor=2))[full].tolerance == 1
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        compare(current, baseline, [], stderr_factor=-1)


def test_samples_are_found_beside_the_results_or_in_the_output_dir(tmp_path, real_results):
    found, why = find_samples(real_results)
    assert why == "" and [s["record_id"] for s in found] == real_results["record_ids"]
    moved = {**real_results, "output_dir": str(tmp_path / "gone")}
    path = write(tmp_path / "results.json", moved)
    assert find_samples(moved, path) == (None, f"no samples.jsonl in {tmp_path} or {tmp_path / 'gone'}")
    (tmp_path / "samples.jsonl").write_text('{"record_id": "0"}\nnot json\n', encoding="utf-8")
    assert find_samples(moved, path) == (
        None,
        f"{tmp_path / 'samples.jsonl'}, line 2: not one JSON record (Expecting value)",
    )


def test_cli_tolerance_from_stderr(tmp_path, capsys, current, baseline):
    base = write(tmp_path / "baseline.json", baseline)
    current["results"][TASK]["reliability.en.f1"] += baseline["results"][TASK]["reliability.en.f1_stderr"]
    moved = write(tmp_path / "moved.json", current)
    assert main(["compare", moved, "--baseline", base]) == 1
    assert main(["compare", moved, "--baseline", base, "--tolerance-from-stderr", "1.5"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["compare", moved, "--baseline", base, "--tolerance-from-stderr", "-2"])
    assert "--tolerance-from-stderr: '-2': must be a finite number >= 0" in capsys.readouterr().err
