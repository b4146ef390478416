"""Scale-out: shard assignment, merging, refusals, and real multi-process runs on CPU that merge to
exactly the single-process result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import ConfigError
from harness.runner import run
from harness.shards import Shard, ShardError, _interleave, assigned, merge
from harness.uncertainty import is_stderr, metric_keys, settings, stderr_key

EDITOR, TASK, MODEL, LIMIT = "ft-m", "bizsre_en_zh", "tiny-llama", 5
CLI = [sys.executable, "-m", "harness.cli"]


def _comparable(results_dir: Path) -> dict:
    """What must not depend on how the run was split: scores, records and every probe's answers."""
    results = json.loads((results_dir / "results.json").read_text(encoding="utf-8"))
    samples = [json.loads(line) for line in (results_dir / "samples.jsonl").read_text().splitlines()]
    for sample in samples:
        sample.pop("edit_seconds")
        sample.pop("invocation"), sample.pop("logged_at")  # which process wrote it, and when
        sample.get("batch", {}).pop("seconds", None)
    keep = ("results", "pre_edit", "n-samples", "record_ids", "editing", "hparams", "model", "templates")
    return {"results": {k: results[k] for k in keep}, "samples": samples}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    run(editor=EDITOR, task=TASK, model=MODEL, limit=LIMIT, output_dir=str(out), progress=False)
    return out


def test_parse_names_the_option_on_bad_input():
    assert Shard.parse("1/4") == Shard(1, 4)
    for bad in ("4/4", "1", "a/2", "1/0", "-1/2", "1/2/3"):
        with pytest.raises(ShardError, match="--shard"):
            Shard.parse(bad)


def test_launcher_environment_gives_the_shard():
    assert Shard.from_environment({"RANK": "2", "WORLD_SIZE": "3"}) == Shard(2, 3)
    assert Shard.from_environment({"WORLD_SIZE": "1"}) is None
    assert Shard.from_environment({}) is None


@pytest.mark.parametrize("batch_size", [1, 2, 3])
@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_every_record_goes_to_exactly_one_shard_and_interleaving_restores_the_order(count, batch_size):
    ids = [f"r{i}" for i in range(11)]
    parts = [assigned(ids, batch_size, Shard(i, count)) for i in range(count)]
    assert sorted(i for part in parts for i in part) == sorted(ids)
    assert _interleave(parts, batch_size) == ids
    # whole edit calls stay together: shard 0 of 2 with calls of 2 takes r0 r1, r4 r5, r8 r9
    assert assigned(ids, 2, Shard(0, 2)) == ["r0", "r1", "r4", "r5", "r8", "r9"]


def test_accumulating_modes_cannot_be_sharded():
    with pytest.raises(ConfigError, match="shard"):
        run(editor=EDITOR, task=TASK, model=MODEL, limit=2, mode="sequential", shard="0/2", progress=False)


def test_ability_tasks_are_not_sharded(monkeypatch, data_dir):
    common = dict(editor="none", task="general_nli", model=MODEL, data_dir=str(data_dir), progress=False)
    with pytest.raises(ConfigError, match="ability task runs in one process"):
        run(shard="0/2", **common)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="ability task runs in one process"):
        run(**common)


def test_two_processes_merge_to_the_single_process_run(tmp_path, single):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["run", "--editor", EDITOR, "--task", TASK, "--model", MODEL, "--limit", str(LIMIT)]
    shards = [
        subprocess.Popen(
            [*CLI, *common, "--output-dir", str(tmp_path), "--shard", f"{i}/2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    for process in shards:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output
    parts = [json.loads((tmp_path / f"shard-{i}-of-2" / "results.json").read_text()) for i in range(2)]
    assert [p["n-samples"][TASK] for p in parts] == [3, 2]  # records 0, 2, 4 and 1, 3
    assert parts[1]["record_ids"] == parts[1]["shard"]["records"]

    done = subprocess.run([*CLI, "merge", str(tmp_path)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert _comparable(tmp_path) == _comparable(single)
    merged = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    scores = merged["results"][TASK]  # equal to the single run's (above): its stderrs are over all records
    assert [k for k in scores if is_stderr(k)] == [stderr_key(k) for k in metric_keys(scores)]
    assert merged["stderr"] == settings()


def test_batch_mode_shards_split_whole_edit_calls(tmp_path):
    common = dict(
        editor=EDITOR, task=TASK, model=MODEL, limit=LIMIT, mode="batch", batch_size=2, progress=False
    )
    whole = run(output_dir=str(tmp_path / "whole"), **common)
    first = run(output_dir=str(tmp_path / "split"), shard="0/2", **common)
    assert first["record_ids"] == whole["record_ids"][0:2] + whole["record_ids"][4:5]
    run(output_dir=str(tmp_path / "split"), shard="1/2", **common)
    merged = merge(tmp_path / "split")
    assert merged["results"] == whole["results"]
    assert _comparable(tmp_path / "split") == _comparable(tmp_path / "whole")


@pytest.fixture
def shard_pair(tmp_path):
    """Two finished shards of one run, written in this process."""
    for i in range(2):
        run(
            editor=EDITOR,
            task=TASK,
            model=MODEL,
            limit=3,
            output_dir=str(tmp_path),
            shard=f"{i}/2",
            progress=False,
        )
    return tmp_path


def test_merge_refuses_a_missing_or_unfinished_shard(shard_pair):
    (shard_pair / "shard-1-of-2" / "results.json").unlink()
    with pytest.raises(ShardError, match="shard-1-of-2: no results.json; that shard has not finished"):
        merge(shard_pair)
    shutil.rmtree(shard_pair / "shard-1-of-2")
    with pytest.raises(ShardError, match=r"missing shard\(s\) 1/2 of 2"):
        merge(shard_pair)


def test_merge_refuses_shards_of_different_runs(shard_pair, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    run(
        editor=EDITOR,
        task=TASK,
        model=MODEL,
        limit=3,
        output_dir=str(other),
        shard="1/2",
        overrides={"lr": "0.01"},
        progress=False,
    )
    shutil.rmtree(shard_pair / "shard-1-of-2")
    shutil.copytree(other / "shard-1-of-2", shard_pair / "shard-1-of-2")
    with pytest.raises(ShardError, match="not a shard of the same run.*hparams"):
        merge(shard_pair)


def test_merge_refuses_shards_of_different_splits(shard_pair, tmp_path_factory):
    other = tmp_path_factory.mktemp("other")
    run(editor=EDITOR, task=TASK, model=MODEL, limit=4, output_dir=str(other), shard="1/2", progress=False)
    shutil.rmtree(shard_pair / "shard-1-of-2")
    shutil.copytree(other / "shard-1-of-2", shard_pair / "shard-1-of-2")
    with pytest.raises(ShardError, match="different splits"):
        merge(shard_pair)


def test_merge_refuses_a_shard_given_twice(shard_pair):
    copy = shard_pair / "copy-of-shard-0"
    shutil.copytree(shard_pair / "shard-0-of-2", copy)
    with pytest.raises(ShardError, match="shard 0/2 appears twice"):
        merge(shard_pair, [shard_pair / "shard-0-of-2", copy, shard_pair / "shard-1-of-2"])
    with pytest.raises(ShardError, match="given twice"):
        merge(shard_pair, [copy, copy, shard_pair / "shard-1-of-2"])


def test_torchrun_ranks_shard_automatically_and_rank_0_merges(tmp_path, single):
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc-per-node=2", "--no-python", *CLI[:1], "-m", "harness.cli", "run"]
    command += ["--editor", EDITOR, "--task", TASK, "--model", MODEL, "--limit", str(LIMIT)]
    command += ["--output-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == ["shard-0-of-2", "shard-1-of-2"]
    assert _comparable(tmp_path) == _comparable(single)
