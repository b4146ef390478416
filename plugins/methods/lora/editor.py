"""LoRA: a low-rank adapter (peft) trained on the new facts, merged into the weights it adapts for
probing, and gone with them on restore."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.answers import TargetBatch
from harness.api import Capabilities, Edit, Editor, EditorContext, EditRequest
from harness.models import architecture, check_layers
from harness.optimisation import minimise
from harness.runtime import device_of


@dataclass(frozen=True)
class LoRAHparams:
    """Which matrices get an adapter (the MLP output matrices of ``layers``, or the modules named in
    ``target_modules``), its rank and alpha (scale alpha / rank), and the training."""

    layers: tuple[int, ...] = (5,)
    target_modules: tuple[str, ...] = ()  # full module names; empty: the MLP output matrices of layers
    rank: int = 8
    alpha: float = 16.0
    steps: int = 30
    lr: float = 5e-3
    stop_loss: float = 1e-2  # stop once the mean target NLL is below this

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        for name in ("alpha", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not self.layers and not self.target_modules:
            raise ValueError("layers or target_modules must name at least one module")


class LoRA(Editor):
    """LoRA: a low-rank adapter trained on the new facts (peft), merged for probing, gone on restore."""

    hparams_class = LoRAHparams
    capabilities = Capabilities(batch=True)

    def __init__(self, hparams: LoRAHparams):
        super().__init__(hparams)
        self.targets: list[str] = []

    def setup(self, model, tokenizer, context: EditorContext) -> None:
        if self.hparams.target_modules:
            self.targets = list(self.hparams.target_modules)
            names = dict(model.named_modules())
            missing = [name for name in self.targets if not isinstance(names.get(name), torch.nn.Linear)]
            if missing:
                raise ValueError(f"lora: target_modules {missing} are not linear modules of this model")
        else:
            check_layers("lora", "layers", self.hparams.layers, model)
            self.targets = [
                architecture(model).mlp_out.format(layer) for layer in sorted(set(self.hparams.layers))
            ]

    def edit(self, model, tokenizer, requests: list[EditRequest]) -> Edit:
        from peft import LoraConfig, get_peft_model

        hp = self.hparams
        torch.manual_seed(self.context.seed)
        edit = Edit.snapshot(model, [f"{name}.weight" for name in self.targets])
        config = LoraConfig(r=hp.rank, lora_alpha=hp.alpha, target_modules=self.targets, lora_dropout=0.0)
        with torch.device(device_of(model)):  # peft builds adapters on the default device, then moves
            adapted = get_peft_model(model, config)  # them to their base layers' (float32 always)
        batch = TargetBatch.of(tokenizer, [(r.prompt, r.target) for r in requests], device_of(model))
        optimiser = torch.optim.Adam([p for p in adapted.parameters() if p.requires_grad], lr=hp.lr)
        try:
            steps, loss = minimise(
                lambda: batch.nll_per_pair(model).mean(), optimiser, hp.steps, hp.stop_loss
            )
        finally:
            with torch.no_grad():
                adapted.merge_and_unload()  # W += (alpha / rank) B A, the original modules back in place
        edit.info = {"steps": steps, "final_loss": loss, "adapted": self.targets}
        return edit
