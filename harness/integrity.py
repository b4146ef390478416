"""Whole-model fingerprints: the check that a restored model is the model the run started with.

``Edit.restore`` verifies the tensors an editor declared, bit for bit. An editor that snapshots one
tensor and writes another would pass that check and leave every later record probed on a changed
model. A fingerprint covers every parameter and buffer with a checksum of each tensor's raw bits (so a
NaN compares equal to itself, and swapped values differ), computed where the tensor lives.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass

import torch

from harness.api import RestoreError

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_CHUNK = 1 << 22  # elements per step on an accelerator: 32 MiB of int64 temporaries


def tensor_checksum(tensor: torch.Tensor) -> int:
    """A checksum of the tensor's raw bits that changes when any value's bits or position change: CRC-32
    of the bytes on the CPU (no copy), a position-weighted integer sum on an accelerator."""
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.device.type == "cpu":
        return zlib.crc32(memoryview(flat.view(torch.uint8).numpy()))
    bits = flat.view(_BITS[flat.element_size()]) if flat.dtype != torch.bool else flat.to(torch.uint8)
    total = torch.zeros((), dtype=torch.int64, device=flat.device)
    for start in range(0, bits.numel(), _CHUNK):
        chunk = bits[start : start + _CHUNK].to(torch.int64)
        weights = torch.arange(start, start + len(chunk), dtype=torch.int64, device=flat.device) % 65521 + 1
        total += (chunk * weights).sum()
    return int(total)


@dataclass(frozen=True)
class ModelFingerprint:
    """A checksum of every named parameter and buffer of a model."""

    checksums: dict[str, int]

    @classmethod
    def of(cls, model: torch.nn.Module) -> ModelFingerprint:
        named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        return cls({name: tensor_checksum(tensor) for name, tensor in named.items()})

    def digest(self) -> str:
        """One hash of every tensor's name and checksum: the weights' state."""
        return hashlib.sha256(json.dumps(sorted(self.checksums.items())).encode()).hexdigest()

    def verify(self, model: torch.nn.Module, after: str) -> None:
        """Raise RestoreError naming every tensor that differs from when the fingerprint was taken."""
        now = ModelFingerprint.of(model).checksums
        changed = sorted(
            name for name in {*self.checksums, *now} if self.checksums.get(name) != now.get(name)
        )
        if changed:
            shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
            raise RestoreError(
                f"after {after}, the model differs from the one the run started with in: {shown}. An editor "
                "changed tensors its edit did not restore; no later record is evaluated on that model"
            )
