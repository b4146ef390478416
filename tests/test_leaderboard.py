"""Leaderboards: spec checking, building stored files and README, and the regression check."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from harness.cli import main
from harness.compare import render
from harness.config import ConfigError
from harness.leaderboard import LeaderboardSpec, build, check, write_readme
from harness.uncertainty import metric_keys, stderr_key


def _spec(tmp_path: Path, **extra: object) -> Path:
    lines: dict[str, object] = {
        "title": '"Test board"',
        "model": '"tiny-llama"',
        "tasks": '["bizsre_en_zh"]',
        "editors": '["ft-m", "rome"]',
        "limit": "2",
        "output": '"board"',
        "runs": '"runs"',
        "settings": '{ contexts_per_length = "1" }',
        "charts": "false",
    }
    lines.update(extra)  # a None value leaves the key out
    path = tmp_path / "board.toml"
    path.write_text("".join(f"{k} = {v}\n" for k, v in lines.items() if v is not None), encoding="utf-8")
    return path


def test_spec_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['editor'\]"):
        LeaderboardSpec.load(_spec(tmp_path, editor='"rome"'))
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['limit'\]"):
        LeaderboardSpec.load(_spec(tmp_path, limit=None))
    with pytest.raises(ConfigError, match="limit must be an integer >= 1, not 0"):
        LeaderboardSpec.load(_spec(tmp_path, limit=0))
    with pytest.raises(ValueError, match="f1=x"):
        LeaderboardSpec.load(_spec(tmp_path, tolerances='["f1=x"]'))
    for bad in ("-1.0", '"2"', "true", "inf"):
        with pytest.raises(ConfigError, match="tolerance_from_stderr must be a finite number >= 0"):
            LeaderboardSpec.load(_spec(tmp_path, tolerance_from_stderr=bad))
    assert LeaderboardSpec.load(_spec(tmp_path, tolerance_from_stderr="2")).tolerance_from_stderr == 2.0


def test_paths_are_relative_to_the_spec_and_commands_reproduce_an_entry(tmp_path):
    spec = LeaderboardSpec.load(_spec(tmp_path))
    assert spec.output == tmp_path / "board" and spec.runs == tmp_path / "runs"
    assert spec.entry_path("bizsre_en_zh", "rome") == tmp_path / "board" / "bizsre_en_zh" / "rome.json"
    assert spec.command("bizsre_en_zh", "rome") == (
        "harness run --editor rome --task bizsre_en_zh --model tiny-llama --data-dir DATA --limit 2 "
        "--seed 0 --set contexts_per_length=1"
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A two-editor board on the tiny model, built once (the bundled sample or HARNESS_DATA_DIR)."""
    root = tmp_path_factory.mktemp("board")
    spec = LeaderboardSpec.load(_spec(root, editors='["ft-m", "kn"]', settings=None))
    build(spec, data_dir=None, progress=False)
    return spec


def test_build_stores_each_run_with_its_command_and_records(built):
    entry = json.loads(built.entry_path("bizsre_en_zh", "kn").read_text(encoding="utf-8"))
    run = json.loads((built.runs / "bizsre_en_zh" / "kn" / "results.json").read_text(encoding="utf-8"))
    assert entry["leaderboard"]["command"] == built.command("bizsre_en_zh", "kn")
    assert entry["leaderboard"]["record_ids"] == run["record_ids"] == ["0", "1"]
    assert entry["results"] == run["results"] and entry["pre_edit"] == run["pre_edit"]


def test_readme_shows_every_editor_with_its_stored_numbers(built):
    text = write_readme(built).read_text(encoding="utf-8")
    for editor in built.editors:
        scores = json.loads(built.entry_path("bizsre_en_zh", editor).read_text())["results"]["bizsre_en_zh"]
        f1, error, em = (scores[f"reliability.en.{key}"] for key in ("f1", "f1_stderr", "em"))
        row = next(line for line in text.splitlines() if line.startswith(f"| bizsre_en_zh | {editor} |"))
        assert row.split(" | ")[2] == f"{f1:.2f} ± {error:.2f} ({em:.2f})"
    assert "harness leaderboard" in text and "(unedited)" in text
    assert "F1 ± standard error (EM) in percent after each edit" in text
    assert (
        "± is the standard error of F1 over the 2 records: the spread of the score over 1000 resamples of "
        "the records with replacement (seed 0; docs/statistics.md). One record moves a score by up to 50 "
        "points;" in text
    )


def test_build_keeps_entries_stored_under_the_specs_command_and_redoes_others(built, tmp_path, monkeypatch):
    spec = dataclasses.replace(built, output=tmp_path / "board")
    shutil.copytree(built.output, spec.output)
    earlier = json.loads(spec.entry_path("bizsre_en_zh", "kn").read_text(encoding="utf-8"))
    earlier["leaderboard"]["command"] = earlier["leaderboard"]["command"].replace("--limit 2", "--limit 1")
    # whether the fixture's KN run found its neurons cached depends on which test ran KN first
    earlier["timings"]["edits_from_cache"] = 0
    spec.entry_path("bizsre_en_zh", "kn").write_text(json.dumps(earlier), encoding="utf-8")
    runs = []

    def run_entry(spec, task, editor, *args):
        runs.append((task, editor))
        return {key: value for key, value in earlier.items() if key != "leaderboard"}

    monkeypatch.setattr("harness.leaderboard.run_entry", run_entry)
    assert "| bizsre_en_zh | kn |" not in write_readme(spec).read_text(encoding="utf-8")  # not this spec's
    build(spec, data_dir=None, progress=False)
    assert runs == [("bizsre_en_zh", "kn")]
    redone = json.loads(spec.entry_path("bizsre_en_zh", "kn").read_text(encoding="utf-8"))
    assert redone["leaderboard"]["command"] == spec.command("bizsre_en_zh", "kn")
    assert "| bizsre_en_zh | kn |" in write_readme(spec).read_text(encoding="utf-8")
    assert "from cache" not in write_readme(spec).read_text(encoding="utf-8")
    redone["timings"]["edits_from_cache"] = 2
    spec.entry_path("bizsre_en_zh", "kn").write_text(json.dumps(redone), encoding="utf-8")
    line = next(x for x in write_readme(spec).read_text().splitlines() if x.startswith("Median seconds"))
    assert f"kn {redone['timings']['edit_seconds_median']:.2f} (from cache)" in line
    assert line.endswith("so its seconds leave that work out.")
    # an editor that learns: its checkpoint's training time stands beside the run's
    redone["training"] = {"training_seconds": 222.0}
    spec.entry_path("bizsre_en_zh", "kn").write_text(json.dumps(redone), encoding="utf-8")
    line = next(x for x in write_readme(spec).read_text().splitlines() if x.startswith("Minutes per run"))
    assert f"kn {redone['timings']['total_seconds'] / 60:.1f} + 3.7 training" in line


def test_check_passes_unchanged_and_fails_when_a_number_moves(built, tmp_path):
    assert {c.exit_code for c in check(built, None, tmp_path / "again", progress=False).values()} == {0}
    stored_path = built.entry_path("bizsre_en_zh", "ft-m")
    stored = json.loads(stored_path.read_text(encoding="utf-8"))
    stored["results"]["bizsre_en_zh"]["generality.zh.f1"] += 0.5
    stored_path.write_text(json.dumps(stored), encoding="utf-8")
    moved = check(built, None, tmp_path / "again", progress=False)  # reuses the finished runs
    assert moved["bizsre_en_zh", "ft-m"].exit_code == 1 and moved["bizsre_en_zh", "kn"].exit_code == 0
    lenient = dataclasses.replace(built, tolerances=("generality.zh=0.5",))
    assert check(lenient, None, tmp_path / "again", progress=False)["bizsre_en_zh", "ft-m"].exit_code == 0
    assert main(["leaderboard", str(built.path), "--check", "--scratch", str(tmp_path / "again")]) == 1


def test_check_with_tolerance_from_stderr_accepts_k_stderrs_and_rejects_more(built, tmp_path):
    stored_path = built.entry_path("bizsre_en_zh", "kn")
    original = json.loads(stored_path.read_text(encoding="utf-8"))
    scores = original["results"]["bizsre_en_zh"]
    key = next(k for k in metric_keys(scores) if scores[stderr_key(k)] > 0.5)  # a key with some noise
    by_stderr = dataclasses.replace(built, tolerance_from_stderr=2.0)
    for moved, exit_code in ((1.9, 0), (2.1, 1)):
        stored = json.loads(json.dumps(original))
        stored["results"]["bizsre_en_zh"][key] += moved * scores[stderr_key(key)]
        stored_path.write_text(json.dumps(stored), encoding="utf-8")
        checked = check(by_stderr, None, tmp_path / "again", progress=False)["bizsre_en_zh", "kn"]
        assert checked.exit_code == exit_code, render(checked)
    del stored["results"]["bizsre_en_zh"][stderr_key(key)]  # a baseline from before stderrs
    stored["results"]["bizsre_en_zh"][key] = scores[key] + 0.5
    stored_path.write_text(json.dumps(stored), encoding="utf-8")
    floor = dataclasses.replace(by_stderr, tolerances=(f"{key}=0.5",))
    assert check(floor, None, tmp_path / "again", progress=False)["bizsre_en_zh", "kn"].exit_code == 0
    assert check(by_stderr, None, tmp_path / "again", progress=False)["bizsre_en_zh", "kn"].exit_code == 1
    stored_path.write_text(json.dumps(original), encoding="utf-8")


def test_profile_and_process_settings_are_checked(tmp_path):
    for bad in ("0", "1.5", "true"):
        with pytest.raises(ConfigError, match="processes must be an integer >= 1"):
            LeaderboardSpec.load(_spec(tmp_path, processes=bad))
    for bad in ("[]", '["harness", "harness"]', "[1]"):
        with pytest.raises(ConfigError, match="protocols must be a list of distinct profile names"):
            LeaderboardSpec.load(_spec(tmp_path, protocols=bad))


@pytest.mark.slow  # four harness processes: 14 s
def test_two_profiles_over_two_processes_store_one_table_each(tmp_path, data_dir):
    spec = LeaderboardSpec.load(
        _spec(
            tmp_path,
            editors='["ft-m"]',
            limit="3",
            protocols='["harness", "bizsre-published"]',
            processes="2",
            model_description='"a tiny random Llama"',
            settings=None,
        )
    )
    build(spec, str(data_dir), progress=False)
    plain = json.loads(spec.entry_path("bizsre_en_zh", "ft-m").read_text(encoding="utf-8"))
    published_path = tmp_path / "board" / "bizsre-published" / "bizsre_en_zh" / "ft-m.json"
    published = json.loads(published_path.read_text(encoding="utf-8"))
    assert spec.entry_path("bizsre_en_zh", "ft-m", "bizsre-published") == published_path
    assert plain["protocol"]["name"] == "harness" and published["protocol"]["name"] == "bizsre-published"
    assert published["leaderboard"]["command"].endswith("--set protocol=bizsre-published")
    # two shard processes, merged: every record once, each invocation listed with its shard
    assert plain["record_ids"] == ["0", "1", "2"] and plain["n-samples"]["bizsre_en_zh"] == 3
    assert sorted(i["shard"] for i in plain["invocations"]) == ["0/2", "1/2"]
    assert sorted(r for i in plain["invocations"] for r in i["records"]) == ["0", "1", "2"]
    # the same edits scored two ways: F1 is never higher under precision x recall
    for key, value in published["results"]["bizsre_en_zh"].items():
        if key.endswith(".f1") and not key.startswith("locality"):
            assert value <= plain["results"]["bizsre_en_zh"][key] + 1e-9
    readme = (tmp_path / "board" / "README.md").read_text(encoding="utf-8")
    assert "Model: a tiny random Llama (`tiny-llama`)." in readme
    assert "## bizsre_en_zh, `harness`" in readme and "## bizsre_en_zh, `bizsre-published`" in readme
    assert readme.count("Minutes per run") == 2
