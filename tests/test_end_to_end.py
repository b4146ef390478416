"""End to end on the packaged demo model and the shared Bi-ZsRE data (minutes on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.uncertainty import metric_keys, stderr_key

pytestmark = pytest.mark.slow

KEYS = {
    f"{prop}.{lang}.{metric}"
    for prop in ("generality", "locality", "portability")
    for lang in ("en", "zh")
    for metric in ("f1", "em")
}


def _run(demo_run, editor: str, direction: str, **options) -> tuple[dict, Path]:
    """The editor's run on the first 3 records (shared with the bfloat16 test's float32 half)."""
    return demo_run(editor=editor, task=f"bizsre_{direction}", limit=3, **options)


def _reliability_rose(results: dict, direction: str, out, by: float) -> list[dict]:
    """Check the edit language's reliability F1 rose ``by`` points over the unedited model's; the
    run's samples."""
    task, language = f"bizsre_{direction}", direction[:2]
    post, pre = results["results"][task], results["pre_edit"][task]
    reliability = f"reliability.{language}.f1"
    assert post[reliability] >= pre[reliability] + by, (pre[reliability], post[reliability])
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("direction", ["en_zh", "zh_en"])
def test_rome_raises_edit_language_reliability_on_gemma(direction, demo_run):
    edit_language = direction[:2]
    results, out = _run(demo_run, "rome", direction)
    task = f"bizsre_{direction}"
    post, pre = results["results"][task], results["pre_edit"][task]
    reliability_keys = {f"reliability.{edit_language}.f1", f"reliability.{edit_language}.em"}
    assert set(metric_keys(post)) == KEYS | reliability_keys
    assert len(metric_keys(post)) == 14
    assert all(stderr_key(key) in post for key in metric_keys(post))  # 3 records: each has its error bar
    reliability = f"reliability.{edit_language}.f1"
    assert post[reliability] >= pre[reliability] + 40, (pre[reliability], post[reliability])
    assert post[reliability] >= 60
    assert results["n-samples"] == {task: 3}
    assert results["model"]["sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["record_id"] for s in samples] == ["0", "1", "2"]
    layer = results["hparams"]["layer"]
    assert all(s["touched"] == [f"model.layers.{layer}.mlp.down_proj.weight"] for s in samples)
    assert all(s["edit_info"]["second_moment_corpus"].startswith("files:") for s in samples)


@pytest.mark.parametrize("direction", ["en_zh", "zh_en"])
def test_memit_raises_edit_language_reliability_on_gemma(direction, demo_run):
    results, out = _run(demo_run, "memit", direction)
    task, language = f"bizsre_{direction}", direction[:2]
    post, pre = results["results"][task], results["pre_edit"][task]
    assert len(metric_keys(post)) == 14
    reliability = f"reliability.{language}.f1"
    assert post[reliability] >= pre[reliability] + 40, (pre[reliability], post[reliability])
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    layers = results["hparams"]["layers"]
    expected = sorted(f"model.layers.{layer}.mlp.down_proj.weight" for layer in layers)
    assert all(s["touched"] == expected for s in samples)
    assert all(max(s["edit_info"]["residual_gap"]) < 0.5 for s in samples)


@pytest.mark.parametrize("direction", ["en_zh", "zh_en"])
def test_rect_rome_keeps_a_fifth_of_the_update_and_still_edits_on_gemma(direction, demo_run):
    results, out = _run(demo_run, "rect-rome", direction)
    samples = _reliability_rose(results, direction, out, by=30)
    assert results["hparams"]["layer"] == 4 and results["hparams"]["rect"] == 0.2  # ROME's tuned layer
    weight = "model.layers.4.mlp.down_proj.weight"
    kept = -(-2 * 640 * 2048 // 10)  # ceil(0.2 * entries) of Gemma-3-270M's 640 x 2048 down-projection
    assert all(s["edit_info"]["rect"] == {"share": 0.2, "entries_kept": {weight: kept}} for s in samples)


@pytest.mark.parametrize("direction", ["en_zh", "zh_en"])
def test_emmet_writes_a_batch_of_three_on_gemma(direction, demo_run):
    results, out = _run(demo_run, "emmet", direction, mode="batch", batch_size=3)
    samples = _reliability_rose(results, direction, out, by=30)
    assert all(s["batch"]["records"] == ["0", "1", "2"] for s in samples)
    assert len(samples[0]["edit_info"]["delta_norm"]) == 3 and results["hparams"]["layer"] == 4


@pytest.mark.parametrize("direction", ["en_zh", "zh_en"])
def test_lora_adapter_writes_the_fact_on_gemma(direction, demo_run):
    results, out = _run(demo_run, "lora", direction)
    samples = _reliability_rose(results, direction, out, by=40)
    assert all(s["touched"] == ["model.layers.5.mlp.down_proj.weight"] for s in samples)


@pytest.mark.parametrize("direction", ["en_zh", "zh_en"])
def test_alphaedit_writes_through_the_null_space_on_gemma(direction, demo_run):
    results, out = _run(demo_run, "alphaedit", direction)
    samples = _reliability_rose(results, direction, out, by=40)
    hparams = results["hparams"]
    assert list(hparams["layers"]) == [2, 3, 4] and hparams["null_space_threshold"] == 1e-3
    expected = [f"model.layers.{layer}.mlp.down_proj.weight" for layer in (2, 3, 4)]
    assert all(s["touched"] == expected for s in samples)
    dims = samples[0]["edit_info"]["null_space_dims"]
    assert set(dims) == {f"model.layers.{layer}.mlp.down_proj" for layer in (2, 3, 4)}
    assert all(0 < d < 2048 for d in dims.values())  # a proper subspace of Gemma-3-270M's 2,048 keys


@pytest.mark.parametrize("editor", ["grace", "wise"])
@pytest.mark.parametrize("direction", ["en_zh", "zh_en"])
def test_memory_editors_write_without_touching_a_weight_on_gemma(editor, direction, demo_run):
    """GRACE and WISE: the fact is written, no weight changes, and unrelated questions in both
    languages keep their answers (their outputs are the unedited model's unless routed)."""
    results, out = _run(demo_run, editor, direction)
    samples = _reliability_rose(results, direction, out, by=40)
    assert all(s["touched"] == [] for s in samples)
    post = results["results"][f"bizsre_{direction}"]
    assert post["locality.en.f1"] >= 90 and post["locality.zh.f1"] >= 90, post


def test_memit_batch_of_three_on_gemma(demo_run):
    results, out = _run(demo_run, "memit", "en_zh", mode="batch", batch_size=3)
    post, pre = results["results"]["bizsre_en_zh"], results["pre_edit"]["bizsre_en_zh"]
    assert post["reliability.en.f1"] >= pre["reliability.en.f1"] + 40
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(s["batch"]["records"] == ["0", "1", "2"] for s in samples)
    assert all(len(s["edit_info"]["value_steps"]) == 3 for s in samples)


@pytest.mark.parametrize("direction", ["en_zh", "zh_en"])
def test_kn_edits_chosen_neurons_on_gemma(direction, demo_run):
    results, out = _run(demo_run, "kn", direction)
    task = f"bizsre_{direction}"
    assert len(metric_keys(results["results"][task])) == 14
    hparams = results["hparams"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for sample in samples:
        neurons = sample["edit_info"]["neurons"]
        assert neurons and all(layer in (hparams["layers"] or range(18)) for layer, _ in neurons)
        assert not hparams["max_neurons"] or len(neurons) <= hparams["max_neurons"]
        assert sample["touched"] == sorted(
            {f"model.layers.{layer}.mlp.down_proj.weight" for layer, _ in neurons}
        )
        assert sample["edit_info"]["old_token"].strip()  # a visible token, not a newline
    reliability = [p for s in samples for p in s["probes"] if p["property"] == "reliability"]
    assert any(p["post"] != p["pre"] for p in reliability)  # the edit reached the answers


@pytest.mark.parametrize("direction", ["en_zh", "zh_en"])
def test_ike_edits_in_context_on_gemma(direction, demo_run):
    # a 1,000-record pool keeps the one-off MiniLM embedding of the pool short
    results, out = _run(demo_run, "ike", direction, overrides={"pool_size": "1000"})
    task, language = f"bizsre_{direction}", direction[:2]
    post, pre = results["results"][task], results["pre_edit"][task]
    assert len(metric_keys(post)) == 14
    reliability = f"reliability.{language}.f1"
    assert post[reliability] >= 90 and post[reliability] >= pre[reliability] + 40, (pre, post)
    assert {"ike/demonstration.jinja", "ike/probe.jinja"} <= set(results["templates"])
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    encoder = "minilm" if language == "en" else "char-ngram"  # MiniLM covers English pools only
    for sample in samples:
        info = sample["edit_info"]
        assert sample["touched"] == []  # no weight changed
        assert info["encoder"] == encoder and info["demonstrations"] == len(info["neighbours"]) == 32
        assert info["prefix_tokens"] > 512  # past gemma3-270m's sliding window
