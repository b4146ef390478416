"""Error bars: the bootstrap standard error over records, the paired and unpaired intervals of a
difference, and the ``_stderr`` keys aggregation writes into results.json."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from harness.results import aggregate
from harness.runner import run
from harness.uncertainty import (
    PAIRED,
    UNPAIRED,
    RecordScores,
    bootstrap_stderr,
    is_stderr,
    metric_keys,
    paired_interval,
    paired_resampled_intervals,
    record_scores,
    resampled_stderrs,
    settings,
    stderr_key,
    unpaired_interval,
)

# 50 records: 20 right, 20 wrong, 10 partly right (token F1 of a partial answer), in percent
SCORES = [100.0] * 20 + [0.0] * 20 + [50.0, 25.0, 75.0, 66.7, 33.3, 80.0, 20.0, 40.0, 60.0, 10.0]


def sample(record_id: str, probes: list[tuple[str, str, float, float | None]]) -> dict:
    """A samples.jsonl line: probes as (property, language, post f1, pre f1 or None)."""
    return {
        "record_id": record_id,
        "probes": [
            {
                "property": prop,
                "language": lang,
                "post_scores": {"f1": post},
                **({"pre_scores": {"f1": pre}} if pre is not None else {}),
            }
            for prop, lang, post, pre in probes
        ],
    }


def test_bootstrap_stderr_is_within_5_percent_of_the_analytic_one():
    # the bootstrap resamples the observed records, so it estimates the population-convention
    # standard error: std with ddof=0, over sqrt(n)
    analytic = float(np.std(SCORES, ddof=0)) / math.sqrt(len(SCORES))
    assert analytic == pytest.approx(6.4923, abs=1e-4)
    assert bootstrap_stderr(SCORES) == pytest.approx(analytic, rel=0.05)
    assert bootstrap_stderr(SCORES) == bootstrap_stderr(SCORES)  # seeded: the same every time
    assert bootstrap_stderr(SCORES, seed=1) != bootstrap_stderr(SCORES)


def test_one_record_has_no_stderr_and_equal_records_have_zero():
    assert bootstrap_stderr([73.0]) is None
    assert bootstrap_stderr([100.0, 100.0, 100.0]) == 0.0
    with pytest.raises(ValueError, match="2 weights for 3 per-record scores"):
        bootstrap_stderr([1.0, 2.0, 3.0], [1, 1])


def test_records_are_the_unit_and_weigh_by_their_probes():
    samples = [
        sample("a", [("generality", "en", 1.0, 0.0), ("generality", "en", 0.0, 0.0)]),
        sample("b", [("generality", "en", 1.0, 1.0)]),
        sample("c", [("generality", "en", 0.5, 0.0), ("locality", "en", 1.0, None)]),
    ]
    scores = record_scores(samples)
    assert scores["generality.en.f1"] == RecordScores(("a", "b", "c"), (1.0, 1.0, 0.5), (2, 1, 1))
    assert scores["generality.en.f1"].per_record == [50.0, 100.0, 50.0]
    assert scores["generality.en.f1"].mean == 62.5  # the mean over the four probes
    assert record_scores(samples, "pre")["generality.en.f1"].per_record == [0.0, 100.0, 0.0]
    assert list(record_scores(samples, "pre")) == ["generality.en.f1"]  # locality has no pre score


def test_aggregate_puts_the_stderr_of_the_per_record_vector_beside_every_metric():
    samples = [
        sample(str(i), [("reliability", "en", score / 100, 0.0), ("locality", "zh", 1.0, None)])
        for i, score in enumerate(SCORES)
    ]
    samples[0]["probes"].append({"property": "portability", "language": "zh", "post_scores": {"f1": 0.5}})
    post = aggregate(samples, "post")
    assert list(post) == [
        "reliability.en.f1",
        "reliability.en.f1_stderr",
        "locality.zh.f1",
        "locality.zh.f1_stderr",
        "portability.zh.f1",  # one record: no stderr
    ]
    assert post["reliability.en.f1"] == pytest.approx(sum(SCORES) / len(SCORES))
    assert post["reliability.en.f1_stderr"] == bootstrap_stderr([100.0 * (s / 100) for s in SCORES])
    assert post["locality.zh.f1_stderr"] == 0.0
    assert metric_keys(post) == ["reliability.en.f1", "locality.zh.f1", "portability.zh.f1"]
    assert [key for key in post if is_stderr(key)] == [
        stderr_key("reliability.en.f1"),
        "locality.zh.f1_stderr",
    ]
    pre = aggregate(samples, "pre")
    assert pre == {"reliability.en.f1": 0.0, "reliability.en.f1_stderr": 0.0}


def _shifted(shift: float) -> tuple[RecordScores, RecordScores]:
    """Baseline and current per-record F1 of 50 records: the current run is ``shift`` (0-1) higher
    on average, each record with its own noise."""
    rng = random.Random(7)
    base = [rng.uniform(0.25, 0.55) for _ in range(50)]
    new = [b + shift + rng.uniform(-0.2, 0.2) for b in base]
    ids = tuple(str(i) for i in range(50))
    return RecordScores(ids, tuple(new), (1,) * 50), RecordScores(ids, tuple(base), (1,) * 50)


def test_paired_interval_flags_a_20_point_shift_and_not_a_1_point_one():
    big = paired_interval(*_shifted(0.20))
    assert big.method == PAIRED and big.beyond_noise and 15 < big.low < 20 < big.high < 25
    small = paired_interval(*_shifted(0.01))
    assert small.low < 0 < small.high and not small.beyond_noise


def test_paired_interval_needs_the_same_records_and_pairs_them_by_id():
    current, baseline = _shifted(0.05)
    reversed_ids = RecordScores(current.ids[::-1], current.totals[::-1], current.counts[::-1])
    assert paired_interval(reversed_ids, baseline) == paired_interval(current, baseline)
    same = paired_interval(baseline, baseline)
    assert (same.low, same.high) == (0.0, 0.0) and not same.beyond_noise
    fewer = RecordScores(baseline.ids[:49], baseline.totals[:49], baseline.counts[:49])
    assert paired_interval(current, fewer) is None


def test_unpaired_interval_is_delta_plus_minus_z_times_the_combined_stderr():
    interval = unpaired_interval(5.0, 3.0, 4.0)  # sqrt(3² + 4²) = 5
    assert interval.method == UNPAIRED
    assert interval.low == pytest.approx(5.0 - 1.959964 * 5, abs=1e-5)
    assert interval.high == pytest.approx(5.0 + 1.959964 * 5, abs=1e-5)
    assert not interval.beyond_noise and unpaired_interval(10.0, 3.0, 0.0).beyond_noise


def test_a_tiny_model_run_stores_a_stderr_beside_every_metric(tmp_path):
    results = run(
        editor="ft-m",
        task="bizsre_en_zh",
        model="tiny-llama",
        limit=3,
        output_dir=str(tmp_path),
        progress=False,
    )
    stored = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert (
        stored["stderr"] == settings() == {"method": "bootstrap over records", "resamples": 1000, "seed": 0}
    )
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    for section, phase in (("results", "post"), ("pre_edit", "pre")):
        scores = stored[section]["bizsre_en_zh"]
        per_record = record_scores(samples, phase)
        assert sorted(scores) == sorted([*per_record, *(stderr_key(key) for key in per_record)])
        for key, records in per_record.items():
            assert scores[stderr_key(key)] == bootstrap_stderr(records.per_record)
    assert results["results"] == stored["results"]


def test_an_ability_metric_gets_the_spread_of_the_metric_itself_over_resampled_examples():
    """Accuracy on 200 examples (150 right): near the analytic sqrt(p(1-p)/n); a corpus-level metric
    (here the share of distinct right answers) gets its own resampled spread, not a mean's."""
    right = [1.0] * 150 + [0.0] * 50

    def score(indices):
        picked = [right[i] for i in indices]
        return {"accuracy": 100 * sum(picked) / len(picked), "distinct": 100 * len(set(indices)) / len(right)}

    errors = resampled_stderrs(score, len(right))
    analytic = 100 * math.sqrt(0.75 * 0.25 / 200)
    assert errors["accuracy_stderr"] == pytest.approx(analytic, rel=0.05)
    assert errors["accuracy_stderr"] == pytest.approx(bootstrap_stderr([100 * r for r in right]))
    assert 0 < errors["distinct_stderr"] < 5  # about 63% of items drawn per resample, a small spread
    assert resampled_stderrs(score, 1) == {}


def test_a_paired_change_flags_a_planted_20_point_shift_and_not_a_1_point_one():
    """An ability task's change after edits: both models' answers to the same resampled examples."""
    rng = random.Random(0)
    before = [rng.random() < 0.6 for _ in range(100)]
    wrong = [i for i, right in enumerate(before) if not right]

    def accuracy(answers):
        return lambda rows: {"accuracy": 100 * sum(answers[i] for i in rows) / len(rows)}

    def fixed(count):
        return [right or i in wrong[:count] for i, right in enumerate(before)]

    shifted = paired_resampled_intervals(accuracy(fixed(20)), accuracy(before), 100)["accuracy"]
    assert shifted.method == PAIRED and shifted.beyond_noise and shifted.low < 20 < shifted.high
    slight = paired_resampled_intervals(accuracy(fixed(1)), accuracy(before), 100)["accuracy"]
    assert not slight.beyond_noise
    same = paired_resampled_intervals(accuracy(before), accuracy(before), 100)["accuracy"]
    assert (same.low, same.high) == (0.0, 0.0)
    assert paired_resampled_intervals(accuracy(before), accuracy(before), 1) == {}


def test_resamples_where_the_metric_is_undefined_are_left_out_and_too_many_give_none():
    def macro(indices, rare=(0,)):
        if not any(i in rare for i in indices):
            raise ValueError("no item of the rare class drawn")
        return {"recall": 100.0 * len(set(indices)) / 50}

    # item 0 missing from a resample of 50: (49/50)^50 = 36% of resamples: too many, no stderr
    assert resampled_stderrs(macro, 50) == {}
    # with 10 rare items missing is rare ((40/50)^50 < 1e-4): the stderr is the kept resamples' spread
    assert "recall_stderr" in resampled_stderrs(lambda rows: macro(rows, range(10)), 50)
