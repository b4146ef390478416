"""Second moments E[k k^T]: exact value, cache hit, recompute on any key change, corrupt files rebuilt."""

from __future__ import annotations

import logging

import torch

from harness.answers import pad_batch, prompt_ids
from harness.models import architecture
from harness.weight_editing import capture_input, sampled_corpus, second_moment

TEXTS = ["Paris is the capital of France.", "巴黎是法国的首都。", "Rivers flow to the sea.", "Hello there"]


def _direct(model, tokenizer, module_name: str) -> torch.Tensor:
    ids, mask = pad_batch([prompt_ids(tokenizer, t) for t in TEXTS], tokenizer.pad_token_id)
    with torch.no_grad(), capture_input(model.get_submodule(module_name)) as seen:
        model.base_model(input_ids=ids, attention_mask=mask)
    keys = seen[0][mask.bool()].double()
    return keys.T @ keys / len(keys)


def test_second_moment_value_and_cache(tiny_llama, tmp_path, caplog):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    name = architecture(model).mlp_out.format(1)
    moment = second_moment(model, tokenizer, name, TEXTS, 10_000, tmp_path, batch_size=2)
    torch.testing.assert_close(moment, _direct(model, tokenizer, name), rtol=1e-6, atol=1e-9)
    (path,) = (tmp_path / "second_moments").glob("*.pt")
    stamp = path.stat().st_mtime_ns

    again = second_moment(model, tokenizer, name, TEXTS, 10_000, tmp_path)  # hit: nothing recomputed
    assert torch.equal(again, moment) and path.stat().st_mtime_ns == stamp

    second_moment(model, tokenizer, name, TEXTS, 20, tmp_path)  # token budget
    second_moment(model, tokenizer, name, TEXTS[:3], 10_000, tmp_path)  # corpus
    second_moment(model, tokenizer, architecture(model).mlp_out.format(2), TEXTS, 10_000, tmp_path)  # layer
    assert len(list((tmp_path / "second_moments").glob("*.pt"))) == 4

    path.write_bytes(path.read_bytes()[:100])  # a partial write
    with caplog.at_level(logging.WARNING):
        rebuilt = second_moment(model, tokenizer, name, TEXTS, 10_000, tmp_path, batch_size=2)
    assert "unreadable" in caplog.text
    torch.testing.assert_close(rebuilt, moment, rtol=0, atol=0)


def test_budget_counts_real_tokens_only(tiny_llama, tmp_path):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    name = architecture(model).mlp_out.format(0)
    saved = second_moment(model, tokenizer, name, TEXTS, 20, tmp_path)
    (path,) = (tmp_path / "second_moments").glob("*.pt")
    assert torch.load(path, weights_only=True)["tokens"] == 20
    assert saved.shape == (model.config.intermediate_size,) * 2


def test_sampled_corpus_is_seeded_and_cached(tiny_llama, tmp_path):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    texts = sampled_corpus(model, tokenizer, ("en", "zh"), tokens=64, seed=3, cache=tmp_path, length=8)
    assert len(texts) == 8  # ceil(64 / (8 * 2)) per language
    assert texts[0].startswith("The") and texts[4].startswith("这")
    fresh = sampled_corpus(
        model, tokenizer, ("en", "zh"), tokens=64, seed=3, cache=tmp_path / "other", length=8
    )
    assert fresh == texts
