"""Tiny random models built from a config, for fast unit tests and CI smoke runs.

Every file of a tiny checkpoint is written by this module, so its bytes (and the model's sha256)
depend on this code alone, not on the installed transformers, tokenizers or torch:

- the structure comes from transformers (``AutoConfig.for_model`` + ``from_config``), but every
  parameter is then overwritten by the project's own seeded routine (``initialise``): weights of two
  or more dimensions get normal(0, 0.02) draws from Python's ``random.Random`` (whose stream the
  Python documentation guarantees across releases), seeded per parameter from a hash of the model's
  and the parameter's names, so the draw depends neither on the parameter order nor on torch's
  random number generator; 1-D ``*bias`` parameters are zero and the other 1-D parameters (norm
  scales) keep their constant constructor value (ones, or zeros for Gemma's ``1 + w`` norms);
- ``config.json`` holds only the settings named here (no ``transformers_version``: a loading release
  fills in its own defaults), the weights are written as safetensors by ``write_safetensors``
  (tensors sorted by name), the tokenizer files are the JSON of ``tokenizer_files``.

The tokenizer is byte-level (256 byte tokens plus PAD/BOS/EOS), so any language encodes offline.
Bump ``VERSION`` whenever what is written changes, so caches do not serve an old build.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import struct
from pathlib import Path
from typing import Any

import torch

from harness.hookspecs import hookimpl
from harness.models import ModelSource, publish_directory

VERSION = "2"
SPECIALS = ["<pad>", "<bos>", "<eos>"]
INIT_STD = 0.02
INIT_TAG = "kedit-harness tiny init v1"  # part of every parameter's seed

# the decoder every Llama-style tiny model shares; families override what differs
DECODER: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)

# model name -> (config.model_type, the config's settings besides COMMON); 4 layers, d=64 each
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny-llama": ("llama", {**DECODER, "tie_word_embeddings": True}),
    "tiny-gemma3": (
        "gemma3_text",
        {**DECODER, "num_key_value_heads": 1, "head_dim": 16, "sliding_window": 64},
    ),
    "tiny-gpt2": ("gpt2", dict(n_embd=64, n_layer=4, n_head=4, n_positions=512)),
    "tiny-mistral": ("mistral", {**DECODER, "sliding_window": None}),
    "tiny-qwen2": ("qwen2", {**DECODER, "tie_word_embeddings": True}),
    "tiny-qwen3": ("qwen3", {**DECODER, "head_dim": 16, "tie_word_embeddings": True}),
    "tiny-gemma2": ("gemma2", {**DECODER, "head_dim": 16, "sliding_window": 64}),
    "tiny-gptj": ("gptj", dict(n_embd=64, n_layer=4, n_head=4, n_inner=128, rotary_dim=16, n_positions=512)),
    "tiny-phi3": ("phi3", {**DECODER, "original_max_position_embeddings": 512}),
}


# ---------------------------------------------------------------- tokenizer


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE maps bytes to (GPT-2's table), sorted."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = [b for b in range(256) if b not in printable]
    return sorted([chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))])


def _vocab() -> dict[str, int]:
    return {token: i for i, token in enumerate(SPECIALS + _byte_alphabet())}


def tokenizer_files() -> dict[str, dict[str, Any]]:
    """``tokenizer.json`` and ``tokenizer_config.json`` of the byte tokenizer, as written."""
    added = [
        dict(
            id=i, content=token, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True
        )
        for i, token in enumerate(SPECIALS)
    ]
    bos = {"SpecialToken": {"id": "<bos>", "type_id": 0}}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": False,
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                bos,
                {"Sequence": {"id": "A", "type_id": 0}},
                bos,
                {"Sequence": {"id": "B", "type_id": 0}},
            ],
            "special_tokens": {"<bos>": {"id": "<bos>", "ids": [1], "tokens": ["<bos>"]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": _vocab(),
            "merges": [],
        },
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "clean_up_tokenization_spaces": False,
    }
    return {"tokenizer.json": tokenizer, "tokenizer_config.json": config}


def byte_tokenizer():
    """The byte tokenizer as a transformers tokenizer (built from ``tokenizer_files``)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer.from_str(json.dumps(tokenizer_files()["tokenizer.json"]))
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


# ---------------------------------------------------------------- weights


def parameter_seed(model: str, name: str) -> int:
    """The seed of one parameter: a hash of the model's and the parameter's names (stable under
    reordering and across machines; same-named parameters of two tiny models differ)."""
    return int.from_bytes(hashlib.sha256(f"{INIT_TAG}:{model}:{name}".encode()).digest()[:8], "little")


def normal_values(count: int, seed: int, std: float = INIT_STD) -> list[float]:
    """``count`` normal(0, std) draws by Box-Muller on ``random.Random(seed).random()``."""
    rng = random.Random(seed)
    values: list[float] = []
    while len(values) < count:
        radius = std * math.sqrt(-2.0 * math.log(1.0 - rng.random()))  # 1 - u in (0, 1]
        angle = 2.0 * math.pi * rng.random()
        values += (radius * math.cos(angle), radius * math.sin(angle))
    return values[:count]


@torch.no_grad()
def initialise(model: torch.nn.Module, model_name: str) -> None:
    """Overwrite every parameter with the project's seeded values (see the module docstring).

    A 1-D parameter that is neither a bias nor constant would carry the library's initialiser into
    the checkpoint, so it is an error naming the parameter.
    """
    for name, param in model.named_parameters():  # tied parameters once, under their first name
        if not param.dtype.is_floating_point:
            raise ValueError(f"tiny model parameter {name}: dtype {param.dtype} is not floating point")
        if param.dim() >= 2:
            seeded = normal_values(param.numel(), parameter_seed(model_name, name))
            values = torch.tensor(seeded, dtype=torch.float64, device=param.device)
            param.copy_(values.to(param.dtype).view(param.shape))
        elif name.endswith("bias"):
            param.zero_()
        else:
            first = param.reshape(-1)[0].item()
            if first not in (0.0, 1.0) or not torch.all(param == first):
                raise ValueError(f"tiny model parameter {name}: 1-D, not a bias and not all ones or zeros")
            param.fill_(first)


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """float32 tensors as a safetensors file: tensors sorted by name, header JSON with sorted keys."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu", torch.float32).contiguous()
        data = tensor.numpy().astype("<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(chunks))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without tied duplicates (the first name of a shared tensor is kept)."""
    seen: set[int] = set()
    state = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        state[name] = tensor
    return state


# ---------------------------------------------------------------- building


def config_dict(name: str) -> dict[str, Any]:
    """``config.json`` of a tiny model: its model_type, the special token ids and its settings."""
    model_type, settings = FAMILIES[name]
    vocab_size = len(SPECIALS) + 256
    return dict(
        model_type=model_type,
        vocab_size=vocab_size,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **settings,
    )


def checkpoint_dir(cache: Path, name: str) -> Path:
    """Where the tiny model ``name`` is built inside the harness cache."""
    return cache / "tiny" / f"{name}-v{VERSION}"


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(
        json.dumps(content, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def build(name: str, target: Path) -> Path:
    """Build the tiny model ``name`` into ``target`` (once; a finished build is reused)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if (target / "config.json").exists():
        return target
    settings = config_dict(name)
    model_type = settings.pop("model_type")
    config = AutoConfig.for_model(model_type, **settings)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    initialise(model, name)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    write_safetensors(_state(model), partial / "model.safetensors")
    for file, content in tokenizer_files().items():
        _write_json(partial / file, content)
    _write_json(partial / "config.json", config_dict(name))  # last: it marks a complete build
    publish_directory(partial, target, "config.json")
    return target


@hookimpl
def register_models(register):
    for name, (model_type, _) in FAMILIES.items():
        register(
            ModelSource(
                name,
                f"random {model_type}, 4 layers, d=64, byte tokenizer, seeded by the project (tests only)",
                lambda cache, name=name: build(name, checkpoint_dir(cache, name)),
            )
        )
