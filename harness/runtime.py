"""The model runtime: which device(s) a model lives on, in which dtype, and where inputs go.

It is decided once, when a model is loaded (``--device``, ``--dtype``, ``--device-map``), and
attached to the model; every other module asks it (``runtime_of(model)``) instead of deciding. The
dtype policy every editor follows is in docs/devices-and-dtypes.md: weights may be bf16/fp16,
optimised vectors, deltas and optimiser state stay fp32, solves run in fp64, second moments are
accumulated in fp64.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)
# accelerate's big-model placements ("" keeps the whole model on one device)
DEVICE_MAPS = ("", "auto", "balanced", "balanced_low_0", "sequential")
MASTER_DTYPE = torch.float32  # what optimised vectors, deltas and optimiser state are kept in


class PlacementError(ValueError):
    """A device, dtype or device map that cannot be used here; the message names the option."""


@dataclass(frozen=True)
class Placement:
    """What the user asked for: ``device`` auto|cpu|cuda|cuda:N|mps, ``dtype`` auto|float32|bfloat16|
    float16 (auto: the checkpoint's own), ``device_map`` "" or one of accelerate's placements."""

    device: str = "auto"
    dtype: str = "auto"
    device_map: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_CHOICES:
            raise PlacementError(f"dtype: {self.dtype!r} is not one of {list(DTYPE_CHOICES)}")
        if self.device_map not in DEVICE_MAPS:
            raise PlacementError(f"device_map: {self.device_map!r} is not one of {list(DEVICE_MAPS)}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as error:
                raise PlacementError(
                    f"device: {self.device!r} is not a device (auto, cpu, cuda, cuda:N, mps)"
                ) from error


def resolve_device(spec: str) -> torch.device:
    """The device ``spec`` names here. ``auto``: a GPU when there is one (``cuda:LOCAL_RANK`` under
    torchrun or accelerate launch), else the CPU; a bare ``cuda`` also takes the local rank."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PlacementError(f"device: {spec!r} asked for, but torch sees no CUDA device here")
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise PlacementError(f"device: {spec!r}: only {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PlacementError(f"device: {spec!r} asked for, but MPS is not available here")
    return device


def resolve_dtype(spec: str, stored: Any = None) -> torch.dtype:
    """The weights' dtype: the named one, or for ``auto`` the checkpoint's stored dtype (float32 when
    it names none or one the harness does not run in)."""
    if spec != "auto":
        return DTYPES[spec]
    if isinstance(stored, torch.dtype) and stored in DTYPES.values():
        return stored
    return DTYPES.get(str(stored).removeprefix("torch."), torch.float32)


@dataclass(frozen=True)
class ModelRuntime:
    """Where one loaded model lives. ``device`` is where its inputs go (the input embeddings' device);
    with a device map the layers are spread as ``device_map`` says and the model moves activations
    between devices itself."""

    device: torch.device
    dtype: torch.dtype
    device_map: dict[str, str] | None = None

    def describe(self) -> dict[str, Any]:
        """For run.json and results.json."""
        described: dict[str, Any] = {"device": str(self.device), "dtype": dtype_name(self.dtype)}
        if self.device_map:
            described["device_map"] = sorted(set(self.device_map.values()))
        return described

    def value_identity(self) -> dict[str, str]:
        """What changes the numbers a model computes (and so keys every cache of them): dtype and the
        kind of device. The device index and the placement over devices do not."""
        kinds = {torch.device(d).type for d in self.device_map.values()} if self.device_map else set()
        return {"dtype": dtype_name(self.dtype), "device": "+".join(sorted(kinds)) or self.device.type}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cache_fingerprint(content_sha256: str, runtime: ModelRuntime) -> str:
    """Key of values derived from a model: its weights' content hash plus the runtime's value identity,
    so a cache built in float32 is never served to a bfloat16 run."""
    parts = {"model": content_sha256, **runtime.value_identity()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def attach(model: torch.nn.Module, runtime: ModelRuntime) -> None:
    model.harness_runtime = runtime


def runtime_of(model: torch.nn.Module) -> ModelRuntime:
    """The runtime attached when the model was loaded; for a model built elsewhere (a test, a notebook)
    the one its input embeddings imply."""
    attached = getattr(model, "harness_runtime", None)
    if attached is not None:
        return attached
    weight = model.get_input_embeddings().weight
    return ModelRuntime(device=weight.device, dtype=weight.dtype)


def device_of(model: torch.nn.Module) -> torch.device:
    """Where the model's inputs go."""
    return runtime_of(model).device


class MasterCopies:
    """Float32 master copies of parameters trained while the model holds them in a lower precision.

    The optimiser steps the masters; ``step`` hands it the parameters' gradients in float32 and then
    writes the masters back, rounded once, into the model's dtype (an Adam step taken on bf16 weights
    themselves loses most small updates). Float32 parameters are their own masters: nothing is copied.
    """

    def __init__(self, parameters: list[torch.nn.Parameter]):
        self.parameters = list(parameters)
        self.masters = [
            p if p.dtype == MASTER_DTYPE else p.detach().to(MASTER_DTYPE).requires_grad_(True)
            for p in self.parameters
        ]

    def step(self, optimiser: torch.optim.Optimizer) -> None:
        """One optimiser step on the masters after ``backward()`` filled the parameters' gradients."""
        for parameter, master in zip(self.parameters, self.masters, strict=True):
            if master is not parameter:
                master.grad = None if parameter.grad is None else parameter.grad.to(MASTER_DTYPE)
                parameter.grad = None
        optimiser.step()
        self.write_back()

    @torch.no_grad()
    def refresh(self) -> None:
        """Take the parameters' current values as the masters (after a checkpoint was loaded into them)."""
        for parameter, master in zip(self.parameters, self.masters, strict=True):
            if master is not parameter:
                master.copy_(parameter)

    @torch.no_grad()
    def write_back(self) -> None:
        for parameter, master in zip(self.parameters, self.masters, strict=True):
            if master is not parameter:
                parameter.copy_(master)
