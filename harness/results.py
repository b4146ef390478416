"""results.json and samples.jsonl: append-only per-edit log, resume, aggregation into flat keys."""

from __future__ import annotations

import json
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

SAMPLES = "samples.jsonl"
RESULTS = "results.json"
MANIFEST = "run.json"


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


class SampleLog:
    """samples.jsonl (or another JSON-lines log): one line per finished edit or prediction, flushed
    and synced so a crash loses at most one."""

    def __init__(self, output_dir: Path, name: str = SAMPLES):
        self.path = output_dir / name
        self.samples: list[dict[str, Any]] = self._read()

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        samples, valid_bytes = [], 0
        with open(self.path, "rb") as handle:
            for raw in handle:
                try:
                    samples.append(json.loads(raw))
                except json.JSONDecodeError:
                    break  # a line cut short by a killed run: drop it and everything after it
                valid_bytes += len(raw)
        if valid_bytes != self.path.stat().st_size:
            with open(self.path, "r+b") as handle:
                handle.truncate(valid_bytes)
        return samples

    def append(self, sample: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(sample, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.samples.append(sample)


def aggregate(samples: list[dict[str, Any]], phase: str = "post") -> dict[str, float]:
    """Mean of every ``{property}.{lang}.{metric}`` over samples, in percent (unrounded).

    ``phase`` is "post" (after the edit) or "pre" (the unedited model; locality has no pre score).
    """
    values: dict[str, list[float]] = defaultdict(list)
    for sample in samples:
        for probe in sample["probes"]:
            for metric, score in probe.get(f"{phase}_scores", {}).items():
                values[f"{probe['property']}.{probe['language']}.{metric}"].append(score)
    return {key: 100.0 * sum(v) / len(v) for key, v in values.items()}


def data_files(results: dict[str, Any]) -> dict[str, str]:
    """``{path: sha256}`` of the data a results.json was computed on (bundled sample or data dir)."""
    files = results.get("data") or {}
    return files["bundled_sample"] if isinstance(files.get("bundled_sample"), dict) else files


def edit_timings(samples: list[dict[str, Any]]) -> dict[str, float]:
    seconds = [s["edit_seconds"] for s in samples]
    if not seconds:
        return {}
    return {
        "edit_seconds_median": statistics.median(seconds),
        "edit_seconds_mean": statistics.fmean(seconds),
        "edit_seconds_total": sum(seconds),
    }
