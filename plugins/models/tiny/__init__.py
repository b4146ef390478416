"""Tiny random models built from a config, for fast unit tests and CI smoke runs.

Weights come from a fixed seed, so every machine with the same torch builds the same checkpoint.
The tokenizer is byte-level (256 byte tokens plus BOS/EOS/PAD), so any language encodes offline.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from harness.hookspecs import hookimpl
from harness.models import ModelSource, publish_directory

VERSION = "1"
SPECIALS = ["<pad>", "<bos>", "<eos>"]


def byte_tokenizer():
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(SPECIALS + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


def _config(family: str, vocab_size: int):
    from transformers import Gemma3TextConfig, GPT2Config, LlamaConfig

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "llama":
        return LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            **common,
        )
    if family == "gemma3":
        return Gemma3TextConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=512,
            sliding_window=64,
            **common,
        )
    return GPT2Config(n_embd=64, n_layer=4, n_head=4, n_positions=512, **common)


def build(family: str, target: Path) -> Path:
    from transformers import AutoModelForCausalLM

    if (target / "config.json").exists():
        return target
    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(family, len(tokenizer)), dtype=torch.float32)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    model.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    publish_directory(partial, target, "config.json")
    return target


@hookimpl
def register_models(register):
    for family in ("llama", "gemma3", "gpt2"):
        name = f"tiny-{family}"
        register(
            ModelSource(
                name,
                f"random {family}, 4 layers, d=64, byte tokenizer (tests only)",
                lambda cache, family=family, name=name: build(family, cache / "tiny" / f"{name}-v{VERSION}"),
            )
        )
