"""The tiny random models: every family builds, loads and runs; a build is the same bytes every time
and under any transformers release, because every value in it comes from the project's own code."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import pre_tokenizers

from harness import plugins
from harness.models import cache_dir, directory_fingerprint, load_model
from harness_plugins.models import tiny

# name -> (config.model_type, fingerprint of the build). A fingerprint changes only with this
# project's code: bump tiny.VERSION and regenerate tests/baselines/tiny.toml when it does.
EXPECTED = {
    "tiny-llama": ("llama", "df88bf84e22b3e58a5374af9f788b60d3bc19267c4c3371068454bff71f83f63"),
    "tiny-gemma3": ("gemma3_text", "071daa7063d1a10276c78b4ff9622e056493bf8815e6b0d89de4586706c01c72"),
    "tiny-gpt2": ("gpt2", "c3987350761a52e5ead06075c7998d82aa225c4f7172ba31513486f34cadcd4b"),
    "tiny-mistral": ("mistral", "988d5f9a85cc443e764633b1dc8173bb9f6484407ca54dcececa7a4edbabe5ce"),
    "tiny-qwen2": ("qwen2", "e389ee78c0273910f0d369b2df7f1ec0571292f86df6c6c4c124c11eb8e4d75d"),
    "tiny-qwen3": ("qwen3", "e4e0404767510b4770b990528e048d8fb4d7dbfb47d4b9f31f4ddcdfda3c5c3a"),
    "tiny-gemma2": ("gemma2", "0545d3e3573a17cb3eec30d712d9e9eb89d77d7e06f14a59b9ac7647f73b0277"),
    "tiny-gptj": ("gptj", "214ea5895967dabaf0a96ef58d90dcb8c33aee4edb39adf9870590c8add1b29e"),
    "tiny-phi3": ("phi3", "d2fa5bb7ecc92b52b459b924653782b4db68c150ced088d9ccacd55bee535888"),
}


def test_every_family_is_registered():
    assert set(tiny.FAMILIES) == set(EXPECTED)
    assert set(EXPECTED) <= set(plugins.models())


@pytest.mark.parametrize("name", list(EXPECTED))
def test_builds_loads_and_runs(name):
    loaded = load_model(name, plugins.models())
    model_type, fingerprint = EXPECTED[name]
    assert loaded.identity["model_type"] == model_type == loaded.model.config.model_type
    assert loaded.model.config.num_hidden_layers == 4
    batch = loaded.tokenizer(["The capital of Zorbania is", "东京是"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = loaded.model(**batch).logits
    assert logits.shape == (*batch.input_ids.shape, 259) and torch.isfinite(logits).all()
    assert loaded.identity["sha256"] == fingerprint, f"{name}: the build changed; see this file's EXPECTED"


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gptj"])
def test_building_twice_gives_the_same_bytes(name, tmp_path):
    first = tiny.build(name, tmp_path / "a")
    second = tiny.build(name, tmp_path / "b")
    assert directory_fingerprint(first) == directory_fingerprint(second) == EXPECTED[name][1]
    for file in sorted(p.name for p in first.iterdir()):
        assert (first / file).read_bytes() == (second / file).read_bytes(), file


def test_init_comes_from_the_project_routine_not_the_library():
    """Fixed numbers of the seeded routine (Python's random stream is stable across releases)."""
    assert tiny.parameter_seed("tiny-llama", "model.embed_tokens.weight") == 14932650843853335096
    assert tiny.normal_values(4, 12345) == [
        0.020721373107011914,
        0.0013257921877343488,
        -0.011238993186604316,
        0.03562309750638894,
    ]
    model = load_model("tiny-llama", plugins.models()).model
    assert model.model.layers[1].mlp.down_proj.weight[0, :4].tolist() == [
        0.002610462950542569,
        0.006334281526505947,
        -0.002968377433717251,
        0.01961151324212551,
    ]
    assert model.model.embed_tokens.weight[3, :4].tolist() == [
        -0.013830809853971004,
        -0.007446242496371269,
        0.0035383093636482954,
        0.023243790492415428,
    ]
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)  # tied, stored once
    assert torch.all(model.model.norm.weight == 1)
    gemma = load_model("tiny-gemma3", plugins.models()).model
    assert torch.all(gemma.model.norm.weight == 0)  # Gemma's norms scale by 1 + w


def test_initialise_draws_every_matrix_zeroes_biases_and_refuses_other_vectors():
    module = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.LayerNorm(5))
    tiny.initialise(module, "tiny-test")
    assert module[0].weight.flatten().tolist() == pytest.approx(
        tiny.normal_values(15, tiny.parameter_seed("tiny-test", "0.weight")), abs=1e-8
    )
    assert torch.all(module[0].bias == 0) and torch.all(module[1].bias == 0)
    assert torch.all(module[1].weight == 1)
    module[1].weight.data[0] = 0.5  # a 1-D value the library drew would leak into the checkpoint
    with pytest.raises(ValueError, match="1.weight: 1-D, not a bias"):
        tiny.initialise(module, "tiny-test")


def test_checkpoint_files_carry_no_library_version():
    path = tiny.checkpoint_dir(cache_dir(), "tiny-llama")
    load_model("tiny-llama", plugins.models())
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    config = json.loads((path / "config.json").read_text())
    assert config == tiny.config_dict("tiny-llama") and "transformers_version" not in config


def test_byte_tokenizer_covers_every_byte_of_any_language():
    assert tiny._byte_alphabet() == sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = tiny.byte_tokenizer()
    assert len(tokenizer) == 259 and (tokenizer.pad_token_id, tokenizer.bos_token_id) == (0, 1)
    text = "Prahy, 東京 — Ünïcode\n\ttabs "
    ids = tokenizer(text).input_ids
    assert ids[0] == 1 and len(ids) == 1 + len(text.encode())
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
