"""Second moments E[k k^T]: exact value, cache hit, recompute on any key change, corrupt files rebuilt."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from harness import model_text
from harness.answers import pad_batch, prompt_ids
from harness.model_text import sampled_corpus
from harness.models import architecture
from harness.weight_editing.second_moments import second_moments

TEXTS = ["Paris is the capital of France.", "巴黎是法国的首都。", "Rivers flow to the sea.", "Hello there"]


def _direct(model, tokenizer, module_name: str) -> torch.Tensor:
    ids, mask = pad_batch([prompt_ids(tokenizer, t) for t in TEXTS], tokenizer.pad_token_id, "cpu")
    seen = []
    handle = model.get_submodule(module_name).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        with torch.no_grad():  # a full forward pass, independent of the harness's early stop
            model.base_model(input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    keys = seen[0][mask.bool()].double()
    return keys.T @ keys / len(keys)


def second_moment(model, tokenizer, name, texts, tokens, cache, **kwargs):
    return second_moments(model, tokenizer, [name], texts, tokens, cache, **kwargs)[name]


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


def test_several_layers_in_one_pass_equal_one_at_a_time(tiny_llama, tmp_path):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    names = [architecture(model).mlp_out.format(layer) for layer in (2, 0, 3)]
    together = second_moments(model, tokenizer, names, TEXTS, 10_000, tmp_path / "together", batch_size=3)
    assert list(together) == names
    for name in names:
        torch.testing.assert_close(together[name], _direct(model, tokenizer, name), rtol=1e-6, atol=1e-9)
        alone = second_moment(model, tokenizer, name, TEXTS, 10_000, tmp_path / "alone", batch_size=3)
        torch.testing.assert_close(together[name], alone, rtol=0, atol=0)
    # a partly filled cache computes only what is missing, and the cached ones come back unchanged
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "alone" / "second_moments").glob("*.pt")}
    extra = architecture(model).mlp_out.format(1)
    mixed = second_moments(model, tokenizer, [*names, extra], TEXTS, 10_000, tmp_path / "alone")
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    torch.testing.assert_close(mixed[extra], _direct(model, tokenizer, extra), rtol=1e-6, atol=1e-9)


def test_shipped_samples_are_read_instead_of_sampling(tiny_llama, tmp_path, monkeypatch):
    """A model whose source ships a samples file gets those texts for the specs it holds, on any
    device or dtype, and samples (then caches) only the others."""
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    held = model_text.corpus_spec("en", 2, tokens=64, seed=3, length=8)
    shipped = tmp_path / "samples.json"
    model_text.write_samples(model, tokenizer, [held], shipped, {"model": "tiny-llama"})
    written = model_text.sample_texts(model, tokenizer, held)
    drawn = []
    real = model_text.sample_texts
    monkeypatch.setattr(model_text, "sample_texts", lambda *a, **k: drawn.append(a[2]) or real(*a, **k))
    monkeypatch.setattr(model, "harness_samples", shipped, raising=False)
    texts = sampled_corpus(model, tokenizer, ("en", "zh"), tokens=64, seed=3, cache=tmp_path, length=8)
    assert texts[:4] == written  # the shipped English share, as the model wrote it
    assert drawn == [model_text.corpus_spec("zh", 2, tokens=64, seed=3, length=8)]  # only Chinese drawn
    assert model_text.shipped_samples(model, held) == written
    assert model_text.shipped_samples(model, dataclasses.replace(held, seed=4)) is None


@pytest.mark.slow
def test_the_demo_models_shipped_samples_are_what_it_writes(gemma):
    """The shipped file holds what sampling the demo model gives (a short spec drawn afresh), and the
    second-moment corpus of a two-language run is read from it."""
    model, tokenizer = gemma.model, gemma.tokenizer
    assert model.harness_samples is not None
    spec = model_text.SampleSpec("zh", 5, 5, model_text.PREFIX_TOP_K, 0)
    assert model_text.shipped_samples(model, spec) == model_text.sample_texts(model, tokenizer, spec)
    for language in ("en", "zh"):
        corpus = model_text.corpus_spec(language, 2, tokens=20_000, seed=0)
        assert len(model_text.shipped_samples(model, corpus)) == corpus.count == 79


def test_a_checksum_off_in_its_last_bits_is_trusted(tiny_llama, tmp_path, caplog):
    """Another thread count sums the matrix in another order: a cache file whose checksum differs in
    the last bits is used as it is, not recomputed."""
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    name = architecture(model).mlp_out.format(1)
    first = second_moments(model, tokenizer, [name], TEXTS, 20, tmp_path)[name]
    (path,) = (tmp_path / "second_moments").glob("*.pt")
    saved = torch.load(path, weights_only=True)
    torch.save({**saved, "checksum": saved["checksum"] * (1 + 1e-13)}, path)
    with caplog.at_level(logging.WARNING):
        again = second_moments(model, tokenizer, [name], TEXTS, 20, tmp_path)[name]
    assert "recomputing" not in caplog.text
    assert torch.equal(again, first)
