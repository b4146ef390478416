"""example-ft: fine-tune one MLP down-projection until the model answers the new fact.

A small but real weight editor, the worked example of docs/writing-an-editor.md. It trains a single
matrix (the MLP down-projection of one decoder layer) with Adam on the teacher-forced loss of
``prompt + target`` and stops at the first step after which every target token is the model's top
prediction, so an edit takes as few steps as the fact needs. The harness restores that matrix bit
for bit after each record (single mode) from the snapshot ``apply`` takes before touching it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.answers import TargetBatch
from harness.api import Capabilities, Edit, Editor, EditorContext, EditRequest
from harness.hookspecs import hookimpl
from harness.models import architecture
from harness.runtime import device_of

NAME = "example-ft"
DEFAULT_DEPTH = 0.6  # no layer given: 60% up the stack (kept locality better than the last on Gemma-3)


@dataclass(frozen=True)
class ExampleFTHparams:
    """Settings; ``--set key=value`` or ``[models."<model>".example-ft]`` in harness.toml change them."""

    layer: int | None = None  # decoder layer whose down-projection is trained; negative counts from the end
    steps: int = 50  # at most this many optimiser steps per edit
    lr: float = 5e-4  # right for Gemma-3-270M (1-2 steps); tiny random models need 1e-2 and 200 steps

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def reaches_target(logits: torch.Tensor, batch: TargetBatch) -> bool:
    """Whether every target token is the top prediction at its position (the edit is written)."""
    return bool((logits.argmax(-1) == batch.targets).all())


class ExampleFT(Editor):
    """Fine-tunes one MLP down-projection until the teacher-forced answer is the target."""

    hparams_class = ExampleFTHparams
    capabilities = Capabilities(batch=True)  # one call can write several facts: they share one loss

    def __init__(self, hparams: ExampleFTHparams):
        super().__init__(hparams)
        self.weight_name = ""

    def setup(self, model: torch.nn.Module, tokenizer, context: EditorContext) -> None:
        """Resolve the layer against this model once, so a bad ``layer`` fails before any edit."""
        count = model.config.num_hidden_layers
        layer = int(DEFAULT_DEPTH * count) if self.hparams.layer is None else self.hparams.layer
        if not -count <= layer < count:
            raise ValueError(f"{NAME}: layer={layer} is outside the model's {count} layers")
        self.weight_name = architecture(model).mlp_out_weight(layer % count)

    def edit(self, model: torch.nn.Module, tokenizer, requests: list[EditRequest]) -> Edit:
        """Train the chosen matrix in place; the returned Edit holds its original for ``restore()``."""
        edit = Edit.snapshot(model, [self.weight_name])  # before any change: restore() copies it back
        weight = model.get_parameter(self.weight_name)
        batch = TargetBatch.of(tokenizer, [(r.prompt, r.target) for r in requests], device_of(model))
        optimiser = torch.optim.Adam([weight], lr=self.hparams.lr)
        weight.requires_grad_(True)
        steps = 0
        try:
            while True:
                logits = batch.logits(model)
                if steps == self.hparams.steps or reaches_target(logits, batch):
                    break
                loss = torch.nn.functional.cross_entropy(logits, batch.targets)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                steps += 1
        finally:
            weight.requires_grad_(False)
            weight.grad = None
        edit.info = {"steps": steps, "weight": self.weight_name, "written": reaches_target(logits, batch)}
        return edit


# settings this package was tuned with, per model: a random 64-wide test model needs larger steps
TUNED = {"tiny-llama": {"lr": 1e-2, "steps": 200}}


@hookimpl
def editor_defaults(editor: str, model: str) -> dict | None:
    """Ship per-model settings (below harness.toml and --set) for the models this editor was tried on."""
    return TUNED.get(model) if editor == NAME else None


@hookimpl
def register_editors(register) -> None:
    """The package's one hook: make ``example-ft`` known to ``harness ls editors`` and ``--editor``."""
    register(NAME, ExampleFT)
