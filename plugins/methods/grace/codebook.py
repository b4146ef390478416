"""GRACE's codebook: keys (an MLP's hidden activation at one token), the values that replace the
MLP's output there, a deferral radius per key and the answer each entry was written for."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.runtime import MASTER_DTYPE


@dataclass(frozen=True)
class Codebook:
    """Entries as stacked tensors (keys (m, d_in), values (m, d_out), radii (m,)) and labels. Never
    changed in place: every edit makes a new one, so undoing an edit is putting the old one back."""

    keys: torch.Tensor
    values: torch.Tensor
    radii: torch.Tensor
    labels: tuple[str, ...]

    @classmethod
    def empty(cls, d_in: int, d_out: int, device: torch.device) -> Codebook:
        zeros = torch.zeros(0, dtype=MASTER_DTYPE, device=device)
        return cls(zeros.reshape(0, d_in), zeros.reshape(0, d_out), zeros, ())

    def __len__(self) -> int:
        return len(self.labels)

    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query row, the distance to the closest key and that key's index."""
        # the exact distances, not the matrix-product shortcut cdist takes for over 25 rows, which
        # puts identical vectors a rounding error apart
        exact = "donot_use_mm_for_euclid_dist"
        distances = torch.cdist(queries.to(MASTER_DTYPE), self.keys.to(queries.device), compute_mode=exact)
        return distances.min(dim=-1)

    def replace(self, keys: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """``outputs`` with every position whose key lies within an entry's radius replaced by that
        entry's value; the very same tensor when no position does (bit-identical outputs)."""
        if not len(self):
            return outputs
        flat_keys, flat_outputs = keys.reshape(-1, keys.shape[-1]), outputs.reshape(-1, outputs.shape[-1])
        distance, index = self.nearest(flat_keys)
        inside = distance <= self.radii.to(distance.device)[index]
        if not bool(inside.any()):
            return outputs
        replaced = flat_outputs.clone()
        replaced[inside] = self.values.to(outputs.device)[index[inside]].to(outputs.dtype)
        return replaced.view_as(outputs)

    def with_entry(self, key: torch.Tensor, value: torch.Tensor, radius: float, label: str) -> Codebook:
        return Codebook(
            torch.cat([self.keys, key[None].to(self.keys)]),
            torch.cat([self.values, value[None].to(self.values)]),
            torch.cat([self.radii, torch.tensor([radius], dtype=self.radii.dtype, device=self.radii.device)]),
            (*self.labels, label),
        )

    def without(self, index: int) -> Codebook:
        kept = [i for i in range(len(self)) if i != index]
        return Codebook(
            self.keys[kept], self.values[kept], self.radii[kept], tuple(self.labels[i] for i in kept)
        )

    def with_radius(self, index: int, radius: float) -> Codebook:
        radii = self.radii.clone()
        radii[index] = radius
        return Codebook(self.keys, self.values, radii, self.labels)

    def state(self) -> dict:
        """Tensors on the CPU and the labels: what ``torch.save`` with weights only can hold."""
        return {
            "keys": self.keys.cpu(),
            "values": self.values.cpu(),
            "radii": self.radii.cpu(),
            "labels": list(self.labels),
        }

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> Codebook:
        return cls(
            state["keys"].to(device),
            state["values"].to(device),
            state["radii"].to(device),
            tuple(state["labels"]),
        )
