"""Load a causal LM from a named source, a local directory, a GGUF file or a hub id.

GGUF files are dequantised once into a plain fp32 checkpoint in the cache, keyed by the file's
SHA-256, because a GGUF-loaded model is flagged as quantised and cannot be trained or saved.
Module names per architecture live in one map keyed by ``config.model_type``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Architecture:
    """Where a family keeps its decoder layers and MLP matrices (``{}`` is the layer index)."""

    layers: str
    mlp_out: str  # the "down" matrix: input = key k (d_ff), output = value v (d)
    transposed: bool = False  # GPT-2's Conv1D stores weights as (in, out)
    mlp_post: str | None = None  # applied to the MLP output before the residual add (Gemma 2/3's norm)

    def layer(self, index: int) -> str:
        """The decoder layer whose output is the residual stream after layer ``index``."""
        return f"{self.layers}.{index}"

    def mlp_out_weight(self, layer: int) -> str:
        return f"{self.mlp_out.format(layer)}.weight"


_LLAMA_STYLE = Architecture(layers="model.layers", mlp_out="model.layers.{}.mlp.down_proj")
_GEMMA2_STYLE = dataclasses.replace(_LLAMA_STYLE, mlp_post="model.layers.{}.post_feedforward_layernorm")
ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA_STYLE,
    "qwen2": _LLAMA_STYLE,
    "qwen3": _LLAMA_STYLE,
    "mistral": _LLAMA_STYLE,
    "gemma": _LLAMA_STYLE,
    "gemma2": _GEMMA2_STYLE,
    "gemma3_text": _GEMMA2_STYLE,
    "gpt2": Architecture(
        layers="transformer.h",
        mlp_out="transformer.h.{}.mlp.c_proj",
        transposed=True,
    ),
}


def architecture(model: torch.nn.Module) -> Architecture:
    model_type = model.config.model_type
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"no architecture map for model_type {model_type!r}; known: {sorted(ARCHITECTURES)}. "
            "Add an entry to harness.models.ARCHITECTURES."
        )
    return ARCHITECTURES[model_type]


def check_layers(editor: str, key: str, value: int | tuple[int, ...], model: torch.nn.Module) -> None:
    """Raise naming the editor, the hparam and the bad values if a layer index is not in the model."""
    n_layers = model.config.num_hidden_layers
    bad = [layer for layer in ([value] if isinstance(value, int) else value) if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"{editor}: {key}={value} has {bad} outside the model's 0..{n_layers - 1}")


@dataclass(frozen=True)
class ModelSource:
    """A named model a plugin provides. ``locate()`` returns a ``.gguf`` file or an HF directory."""

    name: str
    description: str
    locate: Callable[[Path], Path]  # receives the harness cache dir


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    identity: dict[str, Any]


def cache_dir() -> Path:
    root = os.environ.get("HARNESS_CACHE_DIR") or Path.home() / ".cache" / "kedit-harness"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` that a killed process cannot leave half-written: the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    torch.save(obj, partial)
    os.replace(partial, path)


def publish_directory(partial: Path, target: Path, complete: str) -> None:
    """Move a fully written cache directory into place. Several processes (the shards of a run) may
    build the same entry at once: the first complete one wins, the others drop their copy; a
    leftover without the ``complete`` marker file is replaced."""
    if target.exists() and not (target / complete).exists():
        shutil.rmtree(target, ignore_errors=True)
    try:
        partial.rename(target)
    except OSError:
        if not (target / complete).exists():
            raise
        shutil.rmtree(partial, ignore_errors=True)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, computed once per process for an unchanged file (size and mtime)."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def directory_fingerprint(path: Path) -> str:
    """Content hash of a checkpoint directory's weight and config files."""
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.suffix in {".safetensors", ".bin", ".json", ".model"}:
            digest.update(file.name.encode())
            digest.update(file_sha256(file).encode())
    return digest.hexdigest()


_COMPLETE = "harness-converted.json"


def convert_gguf(gguf_path: Path, root: Path) -> tuple[Path, str]:
    """Dequantise a GGUF file into ``root/models/<sha>``; return that directory and the file hash."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sha = file_sha256(gguf_path)
    target = root / "models" / sha[:24]
    if (target / _COMPLETE).exists():
        return target, sha
    log.info("converting %s to an fp32 checkpoint in %s (once)", gguf_path.name, target)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
    config = quantised.config
    config.quantization_config = None
    if hasattr(config, "__dict__"):
        config.__dict__.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    (partial / _COMPLETE).write_text(json.dumps({"gguf": gguf_path.name, "sha256": sha}))
    publish_directory(partial, target, _COMPLETE)
    return target, sha


def load_model(spec: str, sources: dict[str, ModelSource], dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Resolve ``spec`` (registered name, local dir, .gguf file, or hub id) and load it for editing."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = cache_dir()
    identity: dict[str, Any] = {"spec": spec}
    location: Path | str = spec
    if spec in sources:
        location = sources[spec].locate(root)
        identity["source"] = spec
    path = Path(location)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"--model {spec!r}: GGUF file {path} does not exist")
        location, sha = convert_gguf(path, root)
        identity.update(format="gguf", file=path.name, sha256=sha)
    elif path.is_dir():
        identity.update(format="hf-dir", path=str(path.resolve()), sha256=directory_fingerprint(path))
    else:
        identity.update(format="hub", hub_id=spec)
    tokenizer = AutoTokenizer.from_pretrained(str(location))
    model = AutoModelForCausalLM.from_pretrained(str(location), dtype=dtype)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    identity.update(
        model_type=model.config.model_type,
        parameters=sum(p.numel() for p in model.parameters()),
        dtype=str(dtype).removeprefix("torch."),
    )
    if "sha256" not in identity:
        identity["sha256"] = identity.get("hub_id", "")
    model.harness_fingerprint = identity["sha256"]  # keys caches of values derived from the weights
    return LoadedModel(model=model, tokenizer=tokenizer, identity=identity)
