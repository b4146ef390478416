"""Load a causal LM from a named source, a local directory, a GGUF file or a hub id.

GGUF files are dequantised once into a plain checkpoint in the cache (fp32, or the dtype the run
asks for), keyed by the file's SHA-256, because a GGUF-loaded model is flagged as quantised and
cannot be trained or saved. Where the model lives and in which dtype is the runtime's
(``harness.runtime``). Module names per architecture live in one map keyed by ``config.model_type``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout

from harness.api import unedited_weights
from harness.runtime import (
    ModelRuntime,
    Placement,
    attach,
    cache_fingerprint,
    device_of,
    dtype_name,
    resolve_device,
    resolve_dtype,
)

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

    def out_in(self, weight: torch.Tensor) -> tuple[int, int]:
        """(output width, input width) of a matrix stored in this family's layout."""
        rows, columns = weight.shape
        return (columns, rows) if self.transposed else (rows, columns)


_LLAMA_STYLE = Architecture(layers="model.layers", mlp_out="model.layers.{}.mlp.down_proj")
_GEMMA2_STYLE = dataclasses.replace(_LLAMA_STYLE, mlp_post="model.layers.{}.post_feedforward_layernorm")
# Built-in module maps by transformers ``config.model_type``; plugins add others through the
# ``register_architectures`` hook.
ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA_STYLE,  # Llama 2 and 3
    "mistral": _LLAMA_STYLE,
    "qwen2": _LLAMA_STYLE,
    "qwen3": _LLAMA_STYLE,
    "phi3": _LLAMA_STYLE,  # gate and up are one fused matrix; down_proj is as in Llama
    "gemma": _LLAMA_STYLE,
    "gemma2": _GEMMA2_STYLE,
    "gemma3_text": _GEMMA2_STYLE,
    "gpt2": Architecture(layers="transformer.h", mlp_out="transformer.h.{}.mlp.c_proj", transposed=True),
    "gptj": Architecture(layers="transformer.h", mlp_out="transformer.h.{}.mlp.fc_out"),
}


def architecture(model: torch.nn.Module) -> Architecture:
    """The module map of the model's ``config.model_type``: built in, or added by a plugin."""
    from harness import plugins

    model_type = model.config.model_type
    if model_type in ARCHITECTURES:
        return ARCHITECTURES[model_type]
    added = plugins.architectures()
    if model_type not in added:
        raise ValueError(
            f"no architecture map for model_type {model_type!r}; known: {sorted({*ARCHITECTURES, *added})}. "
            "A plugin adds one with the register_architectures hook: register(model_type, "
            "harness.models.Architecture(layers=..., mlp_out=...)), see docs/hooks.md"
        )
    return added[model_type]


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
    samples: Path | None = None  # text this model wrote (harness.model_text), so first runs sample none


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any  # shared by every load of the same checkpoint in this process: read it, never set it
    identity: dict[str, Any]
    runtime: ModelRuntime

    @property
    def fingerprint(self) -> str:
        """Key of every cache of values derived from this model: weights, dtype and device kind."""
        return self.model.harness_fingerprint


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


@contextlib.contextmanager
def cache_lock(entry: Path) -> Iterator[None]:
    """Hold the lock of a cache entry while building it. Processes that share a cache (the shards of
    a run, test workers) then build an entry one at a time, and the later ones find it built instead
    of computing it again. The lock is the file ``<entry>.lock``; the OS releases it if the holder
    dies."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{entry}.lock")
    try:
        lock.acquire(blocking=False)
    except Timeout:
        log.info("waiting for another process to finish building %s", entry)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def build_once(entry: Path, build: Callable[[], None]) -> None:
    """Run ``build``, which writes ``entry``, unless ``entry`` exists, under the entry's lock."""
    if entry.exists():
        return
    with cache_lock(entry):
        if not entry.exists():
            build()


def reused_on_unedited_weights(kind: str, parts: Any, model: torch.nn.Module, compute: Callable[[], Any]):
    """``(compute(), False)``, or ``(result, True)`` with the result an earlier call of the same
    ``kind`` and ``parts`` (JSON) stored while the model held the same verified unedited weights
    (``api.unedited_weights``: single and batch modes, before the editor's first write) on the same
    kind of device with the same thread count, so it is what computing again would give, bit for bit.
    Without such weights nothing is read or stored. The result must be what ``torch.save`` with
    weights only holds; read back, its tensors are on the CPU."""
    weights = unedited_weights()
    if weights is None:
        return compute(), False
    source = [kind, weights, parts, str(device_of(model)), torch.get_num_threads()]
    key = hashlib.sha256(json.dumps(source, ensure_ascii=False).encode()).hexdigest()[:32]
    path = cache_dir() / kind / f"{key}.pt"
    fresh: list[Any] = []

    def compute_and_store() -> None:
        fresh.append(compute())
        save_atomic(fresh[0], path)

    build_once(path, compute_and_store)
    if fresh:
        return fresh[0], False
    return torch.load(path, map_location="cpu", weights_only=True), True


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


def convert_gguf(gguf_path: Path, root: Path, dtype: torch.dtype = torch.float32) -> tuple[Path, str]:
    """Dequantise a GGUF file into ``root/models/<sha>`` (``<sha>-<dtype>`` for other than float32);
    return that directory and the file hash. A bfloat16 checkpoint holds exactly the float32 one's
    values rounded to bfloat16, at half the size; it is rounded from the float32 checkpoint when that
    exists (seconds instead of a second dequantisation)."""
    sha = file_sha256(gguf_path)
    suffix = "" if dtype == torch.float32 else f"-{dtype_name(dtype)}"
    target = root / "models" / f"{sha[:24]}{suffix}"
    if not (target / _COMPLETE).exists():
        with cache_lock(target):  # beside the directory: publishing replaces the directory
            if not (target / _COMPLETE).exists():
                _dequantise(gguf_path, sha, target, root, dtype)
    return target, sha


def _dequantise(gguf_path: Path, sha: str, target: Path, root: Path, dtype: torch.dtype) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a %s checkpoint in %s (once)", gguf_path.name, dtype_name(dtype), target)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    full = root / "models" / sha[:24]
    if dtype != torch.float32 and (full / _COMPLETE).exists():
        source, kwargs = full, {}
    else:
        source, kwargs = gguf_path.parent, {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32, **kwargs)
    config = loaded.config
    config.quantization_config = None
    if hasattr(config, "__dict__"):
        config.__dict__.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.to(dtype)
    plain.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    (partial / _COMPLETE).write_text(json.dumps({"gguf": gguf_path.name, "sha256": sha}))
    publish_directory(partial, target, _COMPLETE)


@functools.lru_cache(maxsize=4)
def _tokenizer(location: str, content: str) -> Any:
    """The checkpoint's tokenizer, loaded once per process: parsing a 262k-token vocabulary takes
    seconds, and a leaderboard or test session loads the same model for every run. ``content`` (the
    weights' fingerprint) keys a directory whose files were replaced."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str, sources: dict[str, ModelSource], placement: Placement | None = None) -> LoadedModel:
    """Resolve ``spec`` (registered name, local dir, .gguf file, or hub id) and load it for editing,
    on the device(s) and in the dtype ``placement`` asks for."""
    from transformers import AutoConfig, AutoModelForCausalLM

    placement = placement or Placement()
    root = cache_dir()
    identity: dict[str, Any] = {"spec": spec}
    location: Path | str = spec
    if spec in sources:
        location = sources[spec].locate(root)
        identity["source"] = spec
    path = Path(location)
    device = None if placement.device_map else resolve_device(placement.device)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"--model {spec!r}: GGUF file {path} does not exist")
        dtype = resolve_dtype(placement.dtype)  # auto: the fp32 the dequantised weights come as
        location, sha = convert_gguf(path, root, dtype)
        identity.update(format="gguf", file=path.name, sha256=sha)
    else:
        if path.is_dir():
            _check_directory(spec, path)
            identity.update(format="hf-dir", path=str(path.resolve()), sha256=directory_fingerprint(path))
        elif _looks_like_a_path(str(location)):
            raise FileNotFoundError(f"--model {spec!r}: no such file or directory {path}")
        else:
            identity.update(format="hub", hub_id=spec)
        stored = AutoConfig.from_pretrained(str(location))
        dtype = resolve_dtype(placement.dtype, getattr(stored, "dtype", None))
    try:
        tokenizer = _tokenizer(str(location), identity.get("sha256", spec))
        model, loading = AutoModelForCausalLM.from_pretrained(
            str(location), output_loading_info=True, **_placement_kwargs(placement, device, dtype)
        )
    except Exception as error:  # noqa: BLE001 - the loaders raise many kinds; one message naming the files
        weights = (
            sorted(p.name for p in Path(location).glob("*.safetensors")) if Path(location).is_dir() else []
        )
        raise CheckpointError(
            f"--model {spec!r}: cannot load {location}{f' (weight files {weights})' if weights else ''}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}"
        ) from error
    _check_loaded(spec, loading)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    runtime = ModelRuntime(
        device=model.get_input_embeddings().weight.device,
        dtype=dtype,
        device_map=_device_map(model) if placement.device_map else None,
    )
    attach(model, runtime)
    identity.update(
        model_type=model.config.model_type,
        parameters=sum(p.numel() for p in model.parameters()),
        **runtime.describe(),
    )
    if identity["format"] == "hub":
        identity.update(_hub_identity(spec))
    model.harness_fingerprint = cache_fingerprint(identity["sha256"], runtime)
    model.harness_samples = sources[spec].samples if spec in sources else None
    return LoadedModel(model=model, tokenizer=tokenizer, identity=identity, runtime=runtime)


def _hub_identity(hub_id: str) -> dict[str, str]:
    """A hub model is known by the commit its files came from (the snapshot just loaded), never by its
    id alone: a newer revision of the same id shares no cache entry and resumes no run. A model whose
    commit cannot be found gets a key of its own, shared with nothing."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, "config.json")
    snapshot = Path(found).parent if isinstance(found, str) else None
    if snapshot is not None and snapshot.parent.name == "snapshots":
        key = hashlib.sha256(f"hub:{hub_id}@{snapshot.name}".encode()).hexdigest()
        return {"revision": snapshot.name, "sha256": key}
    log.warning("--model %s: hub revision unknown; it shares no cache entry and resumes no run", hub_id)
    return {"revision": "", "sha256": f"unresolved-{uuid.uuid4().hex}"}


class CheckpointError(ValueError):
    """A checkpoint that does not hold exactly the weights its architecture needs, or cannot be read."""


def _looks_like_a_path(spec: str) -> bool:
    """Absolute, home-relative or explicitly relative: never a hub id (those read ``org/name``)."""
    return spec.startswith(("/", "./", "../", "~")) or spec in (".", "..")


def _check_directory(spec: str, path: Path) -> None:
    """A model directory needs a config and weights; say which is missing instead of a hub error."""
    missing = [
        what
        for what, there in (
            ("config.json", (path / "config.json").is_file()),
            ("weights (*.safetensors or *.bin)", any(path.glob("*.safetensors")) or any(path.glob("*.bin"))),
        )
        if not there
    ]
    if missing:
        raise CheckpointError(
            f"--model {spec!r}: {path} is not a model directory: it has no {' and no '.join(missing)}"
        )


def _check_loaded(spec: str, loading: dict[str, Any]) -> None:
    """Refuse a checkpoint whose tensors do not match the model: a missing weight would be left at its
    random initial value and the run would report numbers of a different model."""
    problems = {
        "missing (would be random)": sorted(loading.get("missing_keys") or ()),
        "unexpected": sorted(loading.get("unexpected_keys") or ()),
        "of the wrong shape": sorted(
            str(k[0] if isinstance(k, tuple) else k) for k in loading.get("mismatched_keys") or ()
        ),
    }
    found = {kind: names for kind, names in problems.items() if names}
    if found:
        listed = "; ".join(
            f"{kind}: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"
            for kind, names in found.items()
        )
        raise CheckpointError(
            f"--model {spec!r}: the checkpoint's weights do not match its architecture ({listed})"
        )


def _placement_kwargs(
    placement: Placement, device: torch.device | None, dtype: torch.dtype
) -> dict[str, Any]:
    """``from_pretrained`` arguments that load the weights straight onto their device(s) in ``dtype``."""
    if placement.device_map:
        return {"dtype": dtype, "device_map": placement.device_map}
    if device is None or device.type == "cpu":
        return {"dtype": dtype}
    return {"dtype": dtype, "device_map": {"": str(device)}}


def _device_map(model: torch.nn.Module) -> dict[str, str]:
    """accelerate's placement of each module, with GPU indices written as devices (``cuda:1``)."""
    placed = getattr(model, "hf_device_map", None) or {}
    return {name: f"cuda:{where}" if isinstance(where, int) else str(where) for name, where in placed.items()}
