"""SERAC and MEND end to end on the demo model: a small `harness train`, then `harness run`."""

from __future__ import annotations

import json

import pytest

from harness.runner import train
from harness.uncertainty import metric_keys

pytestmark = pytest.mark.slow

SMALL = {
    "serac": {
        "train_limit": 40,
        "validation_size": 10,
        "classifier_steps": 300,
        "steps": 4,
        "validate_every": 4,
    },
    "mend": {
        "train_limit": 40,
        "validation_size": 10,
        "steps": 10,
        "validate_every": 10,
        "norm_examples": 10,
        "validation_examples": 5,
    },
}


def _train_and_run(editor, direction, data_dir, demo_run):
    language = direction[:2]
    settings = {k: str(v) for k, v in SMALL[editor].items()}
    summary = train(
        editor,
        train_data=f"zsre_{language}",
        model="gemma3-270m",
        data_dir=str(data_dir),
        overrides=settings,
        progress=False,
    )
    results, out = demo_run(editor=editor, task=f"bizsre_{direction}", limit=3, overrides=settings)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return summary, results, samples


@pytest.mark.parametrize("direction", ["en_zh", "zh_en"])
def test_serac_routes_the_edit_and_leaves_unrelated_questions_alone(direction, data_dir, demo_run):
    summary, results, samples = _train_and_run("serac", direction, data_dir, demo_run)
    task, language = f"bizsre_{direction}", direction[:2]
    assert summary["train_examples"] == 40 and summary["data"]["name"] == f"zsre_{language}"
    assert summary["classifier"]["scope_recall"] >= 0.8
    post = results["results"][task]
    assert len(metric_keys(post)) == 14
    assert post[f"reliability.{language}.f1"] >= 80
    for sample in samples:
        routed = dict(
            zip([f"{p['property']}.{p['language']}" for p in sample["probes"]], sample["edit_info"]["routed"])
        )
        assert routed[f"reliability.{language}"] is True
        for probe, went in zip(sample["probes"], sample["edit_info"]["routed"]):
            if probe["property"] == "locality" and not went:
                assert probe["post"] == probe["pre"]  # the base model answered: nothing moved
    assert all(s["touched"] == [] for s in samples)


@pytest.mark.parametrize("direction", ["en_zh", "zh_en"])
def test_mend_edits_the_last_mlp_matrices_and_restores_them(direction, data_dir, demo_run):
    summary, results, samples = _train_and_run("mend", direction, data_dir, demo_run)
    task = f"bizsre_{direction}"
    assert summary["final"]["step"] == 10
    assert len(metric_keys(results["results"][task])) == 14
    expected = [f"model.layers.{i}.mlp.down_proj.weight" for i in (15, 16, 17)]
    for sample in samples:
        assert sample["touched"] == expected
        assert all(norm > 0 for norm in sample["edit_info"]["change_norms"].values())
