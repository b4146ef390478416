"""Scale-out: split a run's records over processes (``--shard i/n``) and merge the shards back.

The unit of assignment is one edit call (a record in single mode, ``batch_size`` records in batch
mode): edit call ``k`` goes to shard ``k mod n``. Each record's answers depend only on its own edit
call (probes are read in the same groups in every process), so the merged shards equal the
single-process run. Launchers that set ``RANK`` and ``WORLD_SIZE`` (torchrun, accelerate launch)
shard automatically; rank 0 waits for the others and merges.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import uncertainty
from harness.results import (
    MANIFEST,
    RESULTS,
    SAMPLES,
    SampleLog,
    aggregate,
    check_manifest,
    edit_timings,
    write_json,
)

log = logging.getLogger(__name__)

SHARD_KEY = "shard"  # results.json / run.json entry of a shard; absent from a merged or unsharded run
POLL_SECONDS = 10.0


class ShardError(ValueError):
    """A ``--shard`` value that cannot be used, or shards that do not make one run."""


@dataclass(frozen=True)
class Shard:
    """This process's part of a run: shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/n"`` with 0 <= i < n; the message names the option on bad input."""
        parts = text.split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ShardError(f"--shard {text!r}: expected i/n, e.g. 0/4 (shards are numbered from 0)")
        index, count = int(parts[0]), int(parts[1])
        if count < 1 or index >= count:
            raise ShardError(f"--shard {text!r}: need 0 <= i < n")
        return cls(index, count)

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Shard | None:
        """The shard a distributed launcher assigned (``RANK``/``WORLD_SIZE``), if more than one."""
        env = os.environ if environ is None else environ
        try:
            world, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
        except ValueError as error:
            raise ShardError(f"RANK/WORLD_SIZE are not integers: {error}") from error
        return cls(rank, world) if world > 1 else None

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def dirname(self) -> str:
        return f"shard-{self.index}-of-{self.count}"


def edit_calls(ids: list[str], batch_size: int) -> list[list[str]]:
    """Record ids grouped into the run's edit calls (consecutive groups of ``batch_size``)."""
    return [ids[start : start + batch_size] for start in range(0, len(ids), batch_size)]


def assigned(ids: list[str], batch_size: int, shard: Shard) -> list[str]:
    """The record ids ``shard`` edits, in run order: every ``count``-th edit call from ``index``."""
    return [i for call in edit_calls(ids, batch_size)[shard.index :: shard.count] for i in call]


def ids_digest(ids: list[str]) -> str:
    return hashlib.sha256(json.dumps(ids, ensure_ascii=False).encode()).hexdigest()


def describe(shard: Shard, all_ids: list[str], batch_size: int) -> dict[str, Any]:
    """What a shard's results.json records about its place in the whole run."""
    return {
        "index": shard.index,
        "count": shard.count,
        "batch_size": batch_size,
        "run_records": len(all_ids),
        "run_records_sha256": ids_digest(all_ids),
        "records": assigned(all_ids, batch_size, shard),
    }


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ShardError(f"{path}: cannot read ({error})") from error


def _shard_dirs(parent: Path) -> list[Path]:
    return sorted(p for p in parent.glob("shard-*-of-*") if p.is_dir())


def _check_same_run(manifests: dict[Path, dict[str, Any]]) -> dict[str, Any]:
    """Every shard's manifest, less its shard entry, must be the same; return that common manifest."""
    stripped = {path: {k: v for k, v in m.items() if k != SHARD_KEY} for path, m in manifests.items()}
    first_path, first = next(iter(stripped.items()))
    for path, manifest in stripped.items():
        differing = sorted(k for k in set(first) | set(manifest) if first.get(k) != manifest.get(k))
        if differing:
            raise ShardError(
                f"{path} is not a shard of the same run as {first_path}: {', '.join(differing)} differ"
            )
    return first


def _check_cover(shards: dict[Path, dict[str, Any]]) -> tuple[int, int]:
    """Exactly shards 0..n-1 of one split, each finished with its assigned records; returns (n, batch)."""
    splits = {(s["count"], s["batch_size"], s["run_records_sha256"]) for s in shards.values()}
    if len(splits) != 1:
        raise ShardError(f"shards come from different splits (count, batch size, records): {sorted(splits)}")
    count, batch_size, _ = splits.pop()
    seen: dict[int, Path] = {}
    for path, shard in shards.items():
        if shard["index"] in seen:
            twice = f"{seen[shard['index']]} and {path}"
            raise ShardError(f"shard {shard['index']}/{count} appears twice: {twice}")
        seen[shard["index"]] = path
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise ShardError(f"missing shard(s) {', '.join(f'{i}/{count}' for i in missing)} of {count}")
    return count, batch_size


def _interleave(per_shard: list[list[str]], batch_size: int) -> list[str]:
    """Inverse of ``assigned``: the run's record order from each shard's ids."""
    calls = [edit_calls(ids, batch_size) for ids in per_shard]
    order: list[str] = []
    for position in range(max(len(c) for c in calls)):
        for shard_calls in calls:
            if position < len(shard_calls):
                order.extend(shard_calls[position])
    return order


def _samples(directory: Path, expected: list[str]) -> dict[str, dict[str, Any]]:
    """A finished shard's samples by record id; every assigned record must be there."""
    log_file = SampleLog(directory)
    by_id = {s["record_id"]: s for s in log_file.samples}
    missing = [i for i in expected if i not in by_id]
    if missing:
        raise ShardError(
            f"{log_file.path}: {len(missing)} assigned record(s) missing, e.g. {missing[:3]}; resume it"
        )
    return {i: by_id[i] for i in expected}


def merge(parent: Path, shard_dirs: list[Path] | None = None) -> dict[str, Any]:
    """Merge finished shards (default: every ``shard-*-of-*`` under ``parent``) into ``parent``.

    Refuses shards of different runs or splits, a missing or repeated shard, and unfinished shards.
    Writes run.json, samples.jsonl (run order) and results.json there; returns the results.
    """
    dirs = shard_dirs or _shard_dirs(parent)
    if not dirs:
        raise ShardError(f"{parent}: no shard-*-of-* directories to merge")
    repeated = sorted({str(d) for d in dirs if dirs.count(d) > 1})
    if repeated:
        raise ShardError(f"shard folder(s) given twice: {', '.join(repeated)}")
    for directory in dirs:
        if not (directory / RESULTS).is_file():
            raise ShardError(f"{directory}: no {RESULTS}; that shard has not finished (run it again)")
    results = {d: _read(d / RESULTS) for d in dirs}
    for directory, result in results.items():
        if SHARD_KEY not in result:
            raise ShardError(f"{directory / RESULTS} is not a shard's result (no {SHARD_KEY!r} entry)")
    manifest = _check_same_run({d: _read(d / MANIFEST) for d in dirs})
    count, batch_size = _check_cover({d: r[SHARD_KEY] for d, r in results.items()})
    ordered = sorted(dirs, key=lambda d: results[d][SHARD_KEY]["index"])
    per_shard = [results[d][SHARD_KEY]["records"] for d in ordered]
    order = _interleave(per_shard, batch_size)
    if ids_digest(order) != results[ordered[0]][SHARD_KEY]["run_records_sha256"]:
        raise ShardError("the shards' records do not make up the run's records in order")
    by_id = {i: s for d, ids in zip(ordered, per_shard, strict=True) for i, s in _samples(d, ids).items()}
    samples = [by_id[i] for i in order]
    merged = _merged_results(results[ordered[0]], samples, [results[d] for d in ordered], parent)
    check_manifest(parent, manifest)  # refuses a parent that holds a different run
    partial = parent / (SAMPLES + ".partial")
    partial.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8")
    os.replace(partial, parent / SAMPLES)
    write_json(parent / RESULTS, merged)
    log.info("merged %d shards (%d records) into %s", count, len(samples), parent)
    return merged


def _merged_results(
    first: dict[str, Any], samples: list[dict[str, Any]], shards: list[dict[str, Any]], parent: Path
) -> dict[str, Any]:
    """Shard 0's results with everything that depends on the records recomputed from all samples."""
    task = next(iter(first["results"]))
    merged = {k: v for k, v in first.items() if k != SHARD_KEY}
    merged["results"] = {task: aggregate(samples, "post")}
    merged["pre_edit"] = {task: aggregate(samples, "pre")}
    merged["stderr"] = uncertainty.settings()
    merged["n-samples"] = {task: len(samples)}
    merged["record_ids"] = [s["record_id"] for s in samples]
    merged["editing"] = {**first["editing"], "edits_applied": len(samples)}
    shard_seconds = [s["timings"]["total_seconds"] for s in shards]
    stand_ins = [entry for shard in shards for entry in shard.get("fallbacks", [])]
    merged["invocations"] = [
        {**entry, "shard": f"{shard[SHARD_KEY]['index']}/{shard[SHARD_KEY]['count']}"}
        for shard in shards
        for entry in shard.get("invocations", [])
    ]
    merged["timings"] = {
        # shard 0's own figures, less those that the merge recomputes or that were one process's
        **{
            k: v
            for k, v in first["timings"].items()
            if not k.startswith(("edit_seconds", "edits_from_cache")) and k != "invocation_seconds"
        },
        "total_seconds": sum(shard_seconds),  # every shard's time: what the run cost
        "wall_seconds": max(shard_seconds),  # the shards ran side by side
        "shard_total_seconds": shard_seconds,
        **edit_timings(samples),
    }
    merged["fallbacks"] = [e for i, e in enumerate(stand_ins) if e not in stand_ins[:i]]
    merged["config"] = {**first["config"], "shard": ""}
    merged["merged_from"] = [s["output_dir"] for s in shards]
    merged["output_dir"] = str(parent)
    return merged


def wait_and_merge(parent: Path, count: int, poll: float = POLL_SECONDS) -> dict[str, Any]:
    """Rank 0 of a launcher: wait until every shard under ``parent`` has finished, then merge."""
    expected = [parent / Shard(i, count).dirname / RESULTS for i in range(count)]
    waited = 0.0
    while not all(path.is_file() for path in expected):
        if waited % 60 < poll:
            pending = [p.parent.name for p in expected if not p.is_file()]
            log.info("waiting for %s to finish", ", ".join(pending))
        time.sleep(poll)
        waited += poll
    return merge(parent, [path.parent for path in expected])
