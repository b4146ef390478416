"""results.json and samples.jsonl: append-only per-edit log, resume, aggregation into flat keys."""

from __future__ import annotations

import json
import logging
import os
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.uncertainty import bootstrap_stderr, record_scores, stderr_key

SAMPLES = "samples.jsonl"
RESULTS = "results.json"
MANIFEST = "run.json"
LOCK = "run.lock"

log = logging.getLogger(__name__)


class ResumeMismatch(ValueError):
    """The output directory holds a run whose settings differ from this one."""


def write_json(path: Path, payload: Any) -> None:
    """Write atomically: a killed process leaves the old file or the new one, never half of one, and
    processes writing the same cache file at once never read each other's half-written copy."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=False), encoding="utf-8")
    os.replace(partial, path)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, inner in value.items():
        flat.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def check_manifest(output_dir: Path, manifest: dict[str, Any]) -> None:
    """Record what this run is; if the directory already holds a different run, refuse to mix them."""
    path = output_dir / MANIFEST
    manifest = json.loads(json.dumps(manifest))  # compare as stored: tuples become lists
    if path.exists():
        previous = _flatten(json.loads(path.read_text(encoding="utf-8")))
        manifest = _flatten(manifest)
        differing = sorted(k for k in set(previous) | set(manifest) if previous.get(k) != manifest.get(k))
        if differing:
            details = "; ".join(f"{k}: {previous.get(k)!r} -> {manifest.get(k)!r}" for k in differing)
            raise ResumeMismatch(
                f"{output_dir} holds a run with different settings ({details}). "
                "Use another --output-dir, or delete it to start over."
            )
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, manifest)


class OutputLocked(RuntimeError):
    """Another live process is writing the same output directory."""


def lock_output(output_dir: Path) -> None:
    """Take the output directory for this process: two runs writing one directory would log every
    record twice. A lock left by a process that is gone (on this host), or by this very process (a
    run that failed earlier), is stale and taken over; a live holder is an error naming it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    while True:
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is not None and not _stale(holder):
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
                raise OutputLocked(
                    f"{output_dir} is being written by process {holder.get('pid')} on {holder.get('host')} "
                    f"(since {since}); wait for it or use another --output-dir. If that process is gone, "
                    f"delete {path}"
                ) from None
            log.warning("%s: taking over a stale lock (%s)", output_dir, holder or "unreadable")
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(me, handle)
        return


def unlock_output(output_dir: Path) -> None:
    holder = _lock_holder(output_dir / LOCK)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        (output_dir / LOCK).unlink(missing_ok=True)


def _lock_holder(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _stale(holder: dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return False  # another machine's process cannot be checked from here
    pid = holder.get("pid")
    if pid == os.getpid():
        return True  # this process is not running two runs at once: an earlier one failed
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, TypeError, ValueError):
        return False
    return False


class SampleLogError(ValueError):
    """A sample log line that cannot be read; the message names the file and line."""


class SampleLog:
    """samples.jsonl (or another JSON-lines log): one line per finished edit or prediction, flushed
    and synced so a crash loses at most one."""

    def __init__(
        self, output_dir: Path, name: str = SAMPLES, stamp: Callable[[dict[str, Any]], None] | None = None
    ):
        """``stamp`` marks each sample before it is written (which invocation logged it, when)."""
        self.path = output_dir / name
        self.stamp = stamp
        self.samples: list[dict[str, Any]] = self._read()

    def _read(self) -> list[dict[str, Any]]:
        """Every finished line. Only a torn last line (a killed write) is dropped; a complete last line
        that lacks its newline gets one; any other unreadable line is an error naming it, and the
        file is left untouched. A record logged twice (two runs on one directory) counts once."""
        if not self.path.exists():
            return []
        content = self.path.read_bytes()
        lines = content.splitlines(keepends=True)
        samples, seen = [], set()
        for number, raw in enumerate(lines, start=1):
            last = number == len(lines)
            try:
                sample = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as error:
                raise SampleLogError(
                    f"{self.path}, line {number}: not UTF-8 text (byte {error.start})"
                ) from None
            except json.JSONDecodeError as error:
                if last and not raw.endswith(b"\n"):
                    log.warning("%s: dropping a torn last line %d (a killed write)", self.path, number)
                    with open(self.path, "r+b") as handle:
                        handle.truncate(len(content) - len(raw))
                    break
                raise SampleLogError(
                    f"{self.path}, line {number}: not one JSON record ({error.msg}); the file is left as it "
                    "is: remove or repair that line, then run again"
                ) from None
            if last and not raw.endswith(b"\n"):
                with open(self.path, "ab") as handle:  # complete, only its newline was lost
                    handle.write(b"\n")
            key = sample.get("record_id", sample.get("id")) if isinstance(sample, dict) else None
            if key is not None and key in seen:
                log.warning("%s, line %d: %r is logged again; counted once", self.path, number, key)
                continue
            if key is not None:
                seen.add(key)
            samples.append(sample)
        return samples

    def append(self, sample: dict[str, Any]) -> None:
        if self.stamp:
            self.stamp(sample)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(sample, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.samples.append(sample)


def aggregate(samples: list[dict[str, Any]], phase: str = "post") -> dict[str, float]:
    """Mean of every ``{property}.{lang}.{metric}`` over samples, in percent (unrounded), each followed
    by ``<key>_stderr``, its bootstrap standard error over records (absent below 2 records).

    ``phase`` is "post" (after the edit) or "pre" (the unedited model; locality has no pre score).
    """
    scores: dict[str, float] = {}
    for key, per_record in record_scores(samples, phase).items():
        scores[key] = per_record.mean
        error = bootstrap_stderr(per_record.per_record, per_record.counts)
        if error is not None:
            scores[stderr_key(key)] = error
    return scores


def data_files(results: dict[str, Any]) -> dict[str, str]:
    """``{path: sha256}`` of the data a results.json was computed on (bundled sample or data dir)."""
    files = results.get("data") or {}
    return files["bundled_sample"] if isinstance(files.get("bundled_sample"), dict) else files


def edit_timings(samples: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per edit, and how many edits read from the cache what they compute from the unedited
    weights (``edit_info.from_cache``: their seconds leave that work out)."""
    seconds = [s["edit_seconds"] for s in samples]
    if not seconds:
        return {}
    reused = sum(bool((s.get("edit_info") or {}).get("from_cache")) for s in samples)
    return {
        "edit_seconds_median": statistics.median(seconds),
        "edit_seconds_mean": statistics.fmean(seconds),
        "edit_seconds_total": sum(seconds),
        **({"edits_from_cache": reused} if reused else {}),
    }
