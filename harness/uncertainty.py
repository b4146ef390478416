"""Uncertainty of the scores: bootstrap standard errors over records and paired bootstrap intervals.

The record is the unit: a run's records are a sample from the task's population of records, and its
probes of one record are not independent of each other. So every statistic here resamples records
(with replacement) and recomputes the score exactly as the harness reports it: the mean over the
probes of the drawn records, in percent (a record with two probes of a key weighs twice, as it does
in the mean). The resampling is seeded, so a run, its shards merged, and a rerun give the same
numbers. See docs/statistics.md for how to read them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

STDERR_SUFFIX = "_stderr"
METHOD = "bootstrap over records"
RESAMPLES = 1000
SEED = 0
CONFIDENCE = 0.95
CHUNK = 100  # resamples drawn at a time, so memory stays at CHUNK x records numbers
PAIRED, UNPAIRED = "paired", "unpaired"


def settings() -> dict[str, Any]:
    """How every ``_stderr`` of a results.json was computed (stored under its ``stderr`` key)."""
    return {"method": METHOD, "resamples": RESAMPLES, "seed": SEED}


def stderr_key(key: str) -> str:
    """The key of ``key``'s standard error, beside it: ``reliability.en.f1_stderr``."""
    return key + STDERR_SUFFIX


def is_stderr(key: str) -> bool:
    return key.endswith(STDERR_SUFFIX)


def metric_keys(scores: dict[str, Any]) -> list[str]:
    """The metrics of a scores mapping, in order, without their ``_stderr`` companions."""
    return [key for key in scores if not is_stderr(key)]


@dataclass(frozen=True)
class RecordScores:
    """One key's scores per record: the sum of its probes' scores (0-1) and how many probes it has."""

    ids: tuple[str, ...]
    totals: tuple[float, ...]
    counts: tuple[int, ...]

    @property
    def mean(self) -> float:
        """The reported score: the mean over every probe, in percent."""
        return 100.0 * sum(self.totals) / sum(self.counts)

    @property
    def per_record(self) -> list[float]:
        """Each record's mean over its probes of this key, in percent."""
        return [100.0 * total / count for total, count in zip(self.totals, self.counts, strict=True)]


def record_scores(samples: list[dict[str, Any]], phase: str = "post") -> dict[str, RecordScores]:
    """Per-record scores of every ``{property}.{lang}.{metric}`` key, in the order keys first appear;
    ``phase`` is "post" (after the edit) or "pre" (the unedited model). A record without probes of a
    key is not among that key's records."""
    found: dict[str, dict[str, list[float]]] = {}
    for sample in samples:
        record = str(sample["record_id"])
        for probe in sample["probes"]:
            for metric, score in probe.get(f"{phase}_scores", {}).items():
                key = f"{probe['property']}.{probe['language']}.{metric}"
                found.setdefault(key, {}).setdefault(record, []).append(score)
    return {
        key: RecordScores(
            tuple(by_record),
            tuple(sum(scores) for scores in by_record.values()),
            tuple(len(scores) for scores in by_record.values()),
        )
        for key, by_record in found.items()
    }


def _resamples(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Record indices drawn with replacement, ``resamples`` rows of ``n``, a chunk of rows at a time."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, CHUNK):
        yield rng.integers(0, n, size=(min(CHUNK, resamples - start), n))


def _weighted_means(values: np.ndarray, weights: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each resample's probe-weighted mean: the score as reported, on the drawn records."""
    return (values[rows] * weights[rows]).sum(axis=1) / weights[rows].sum(axis=1)


def _arrays(values: Sequence[float], weights: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray]:
    array = np.asarray(values, dtype=np.float64)
    if weights is None:
        return array, np.ones_like(array)
    weight_array = np.asarray(weights, dtype=np.float64)
    if weight_array.shape != array.shape:
        raise ValueError(f"{len(weight_array)} weights for {len(array)} per-record scores")
    return array, weight_array


def bootstrap_stderr(
    values: Sequence[float],
    weights: Sequence[float] | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> float | None:
    """Standard error of the (``weights``-weighted) mean of per-record ``values``: the standard
    deviation of the mean over ``resamples`` bootstrap resamples of the records. None for fewer
    than 2 records, where every resample is the same record and the spread says nothing."""
    array, weight_array = _arrays(values, weights)
    if len(array) < 2:
        return None
    means = np.concatenate(
        [_weighted_means(array, weight_array, rows) for rows in _resamples(len(array), resamples, seed)]
    )
    return float(np.std(means, ddof=1))


def resampled_stderrs(score: Callable[[list[int]], dict[str, float]], n: int) -> dict[str, float]:
    """``<metric>_stderr`` of every metric ``score`` computes from a list of item indices: the spread
    of each metric over bootstrap resamples of the ``n`` items, the metric recomputed as it is
    reported on each (so corpus-level metrics such as entity F1 are covered, not only means).
    Resamples on which the metric is undefined (``score`` raises ValueError: a macro average whose
    class was not drawn) are left out; when more than a tenth are, or below 2 items, there is none."""
    draws = _resampled_scores(score, n)
    if not draws:
        return {}
    return {stderr_key(key): float(np.std([draw[key] for draw in draws], ddof=1)) for key in draws[0]}


def paired_resampled_intervals(
    score: Callable[[list[int]], dict[str, float]],
    reference: Callable[[list[int]], dict[str, float]],
    n: int,
    confidence: float = CONFIDENCE,
) -> dict[str, Interval]:
    """Percentile bootstrap interval of ``score - reference`` for every metric both compute from a
    list of item indices, each resample scoring the same items with both (an item's difficulty
    cancels out, as in ``paired_interval``); resamples and items as in ``resampled_stderrs``."""

    def difference(indices: list[int]) -> dict[str, float]:
        found, base = score(indices), reference(indices)
        return {key: found[key] - base[key] for key in found if key in base}

    draws = _resampled_scores(difference, n)
    if not draws:
        return {}
    return {key: _percentile_interval([draw[key] for draw in draws], confidence) for key in draws[0]}


def _resampled_scores(score: Callable[[list[int]], dict[str, float]], n: int) -> list[dict[str, float]]:
    """``score`` on each bootstrap resample of ``n`` items, leaving out those on which it is undefined
    (ValueError); nothing below 2 items or when more than a tenth are undefined."""
    if n < 2:
        return []
    draws = []
    for rows in _resamples(n, RESAMPLES, SEED):
        for row in rows:
            try:
                draws.append(score(row.tolist()))
            except ValueError:
                continue
    return draws if len(draws) >= 0.9 * RESAMPLES else []


@dataclass(frozen=True)
class Interval:
    """A confidence interval of a difference (current - baseline) and how it was computed."""

    low: float
    high: float
    method: str  # PAIRED or UNPAIRED

    @property
    def beyond_noise(self) -> bool:
        """The interval excludes 0: the difference is larger than record sampling noise explains."""
        return self.low > 0 or self.high < 0


def paired_interval(
    current: RecordScores,
    baseline: RecordScores,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Interval | None:
    """Percentile bootstrap interval of current - baseline, resampling the records both share with
    the same draws for both runs (a record's difficulty cancels out). None unless both runs hold
    the same records and at least 2 of them."""
    if sorted(current.ids) != sorted(baseline.ids) or len(current.ids) < 2:
        return None
    position = {record: i for i, record in enumerate(current.ids)}
    order = [position[record] for record in baseline.ids]
    new, new_weights = _arrays(current.per_record, current.counts)
    old, old_weights = _arrays(baseline.per_record, baseline.counts)
    new, new_weights = new[order], new_weights[order]
    differences = np.concatenate(
        [
            _weighted_means(new, new_weights, rows) - _weighted_means(old, old_weights, rows)
            for rows in _resamples(len(old), resamples, seed)
        ]
    )
    return _percentile_interval(differences, confidence)


def _percentile_interval(differences: Sequence[float] | np.ndarray, confidence: float) -> Interval:
    """The central ``confidence`` share of bootstrapped paired differences."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(differences, [tail, 100 - tail])
    return Interval(float(low), float(high), PAIRED)


def unpaired_interval(
    delta: float, current_stderr: float, baseline_stderr: float, confidence: float = CONFIDENCE
) -> Interval:
    """Normal interval of a difference of two independent means: delta +- z * sqrt(se_a² + se_b²)."""
    half = NormalDist().inv_cdf(0.5 + confidence / 2) * math.hypot(current_stderr, baseline_stderr)
    return Interval(delta - half, delta + half, UNPAIRED)
