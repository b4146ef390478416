"""FT-L and FT-M: fine-tune only the MLP output matrices of chosen layers on the new facts.

FT-L (the ROME paper's baseline) scores every target token at the last prompt position and keeps the
weights inside an L-infinity ball around the originals; FT-M teacher-forces ``prompt + target`` and
masks the prompt out of the loss. Both train on all requests of a batch at once with Adam.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.activations import FrozenPrefix
from harness.answers import TargetBatch, pad_batch, prompt_ids, target_ids
from harness.api import Capabilities, Edit, Editor, EditorContext, EditRequest
from harness.models import architecture, check_layers
from harness.runtime import MasterCopies, device_of

OBJECTIVES = ("last_position", "masked")


@dataclass(frozen=True)
class FTHparams:
    """FT-L defaults: last-position loss, weights clamped to [W0 - eps, W0 + eps]."""

    layers: tuple[int, ...] = (5,)
    steps: int = 25
    lr: float = 5e-4
    stop_loss: float = 1e-2
    norm_constraint: float = 5e-4  # L-infinity radius eps; 0 means unconstrained
    objective: str = "last_position"  # or "masked"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.norm_constraint < 0:
            raise ValueError(f"norm_constraint must be >= 0, got {self.norm_constraint}")
        if not self.layers:
            raise ValueError("layers must name at least one layer")


@dataclass(frozen=True)
class FTMHparams(FTHparams):
    """FT-M defaults: masked teacher-forced loss, no weight constraint."""

    norm_constraint: float = 0.0
    objective: str = "masked"


def _batch(tokenizer, requests: list[EditRequest], objective: str, device: torch.device) -> TargetBatch:
    """Masked: each target token after the one before it; last_position: every target token is
    scored at the prompt's last position (FT-L)."""
    if objective == "masked":
        return TargetBatch.of(tokenizer, [(r.prompt, r.target) for r in requests], device)
    prompts = [prompt_ids(tokenizer, r.prompt) for r in requests]
    targets = [target_ids(tokenizer, r.target) for r in requests]
    ids, mask = pad_batch(prompts, tokenizer.pad_token_id, device)
    rows = [row for row, t in enumerate(targets) for _ in t]
    cols = [len(prompts[row]) - 1 for row in rows]
    tokens = [tok for t in targets for tok in t]
    return TargetBatch(
        ids, mask, *(torch.tensor(v, device=device) for v in (rows, cols, tokens)), len(requests)
    )


class FT(Editor):
    """FT-L: fine-tune MLP output matrices on the target, inside an L-infinity ball (ROME-paper baseline)."""

    name = "ft-l"
    hparams_class: type[FTHparams] = FTHparams
    capabilities = Capabilities(batch=True)

    def setup(self, model, tokenizer, context: EditorContext) -> None:
        check_layers(self.name, "layers", self.hparams.layers, model)

    def edit(self, model, tokenizer, requests: list[EditRequest]) -> Edit:
        hp = self.hparams
        torch.manual_seed(self.context.seed)
        names = [architecture(model).mlp_out_weight(layer) for layer in sorted(set(hp.layers))]
        edit = Edit.snapshot(model, names)
        weights = [model.get_parameter(name) for name in names]
        batch = _batch(tokenizer, requests, hp.objective, device_of(model))
        # the layers below the lowest trained one give the same states at every step: encoded once
        below = min(hp.layers)
        frozen = FrozenPrefix.encode(
            model, batch.sequences(), [0] * len(batch.ids), below, tokenizer.pad_token_id
        )
        masters = MasterCopies(weights)  # Adam steps float32 copies of bf16/fp16 weights
        optimiser = torch.optim.Adam(masters.masters, lr=hp.lr)
        for weight in weights:
            weight.requires_grad_(True)
        try:
            for step in range(hp.steps + 1):  # the extra pass only measures the final loss
                loss = batch.nll_per_pair(model, frozen).mean()
                if loss.item() < hp.stop_loss or step == hp.steps:
                    break
                optimiser.zero_grad()
                loss.backward()
                masters.step(optimiser)
                if hp.norm_constraint > 0:
                    with torch.no_grad():
                        for master, name in zip(masters.masters, names):
                            original = edit.originals[name].to(master.dtype)
                            master.copy_(
                                torch.clamp(
                                    master, original - hp.norm_constraint, original + hp.norm_constraint
                                )
                            )
                    masters.write_back()
        finally:
            for weight in weights:
                weight.requires_grad_(False)
                weight.grad = None
        edit.info = {"steps": step, "final_loss": loss.item()}
        return edit


class FTM(FT):
    """FT-M: the same trainer with the masked teacher-forced objective by default."""

    name = "ft-m"
    hparams_class = FTMHparams
