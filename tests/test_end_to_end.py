"""End to end on the packaged demo model and the shared Bi-ZsRE data (minutes on CPU)."""

from __future__ import annotations

import json

import pytest

from harness.runner import run

pytestmark = pytest.mark.slow

KEYS = {
    f"{prop}.{lang}.{metric}"
    for prop in ("generality", "locality", "portability")
    for lang in ("en", "zh")
    for metric in ("f1", "em")
}


@pytest.mark.parametrize("direction", ["en_zh", "zh_en"])
def test_rome_raises_edit_language_reliability_on_gemma(direction, gemma, data_dir, tmp_path):
    edit_language = direction[:2]
    results = run(
        editor="rome",
        task=f"bizsre_{direction}",
        model="gemma3-270m",
        data_dir=str(data_dir),
        output_dir=str(tmp_path),
        limit=3,
        progress=False,
    )
    task = f"bizsre_{direction}"
    post, pre = results["results"][task], results["pre_edit"][task]
    assert set(post) == KEYS | {f"reliability.{edit_language}.f1", f"reliability.{edit_language}.em"}
    assert len(post) == 14
    reliability = f"reliability.{edit_language}.f1"
    assert post[reliability] >= pre[reliability] + 40, (pre[reliability], post[reliability])
    assert post[reliability] >= 60
    assert results["n-samples"] == {task: 3}
    assert results["model"]["sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [s["record_id"] for s in samples] == ["0", "1", "2"]
    layer = results["hparams"]["layer"]
    assert all(s["touched"] == [f"model.layers.{layer}.mlp.down_proj.weight"] for s in samples)
    assert all(s["edit_info"]["second_moment_corpus"].startswith("files:") for s in samples)
