"""AlphaEdit: MEMIT's spread of values over a layer range, with each layer's update projected onto
the null space of the preserved knowledge's keys (Fang et al., 2025, "AlphaEdit: Null-Space
Constrained Knowledge Editing for Language Models").

Values, targets and the layer-by-layer split of the residual gap are MEMIT's (``MEMIT.edit``); only
the write differs. Instead of MEMIT's least squares against lambda C, every layer takes
U = R K^T P ((K_p K_p^T + K K^T) P + l2 I)^-1, with P the projector onto the eigen-directions of the
layer's key second moments C that the corpus keys (nearly) never take, and K_p the keys of the edits
already in force. Those keys are the editor's memory: a sequential run keeps them, saves them after
every edit call and puts them back when it resumes; a restored edit takes its keys out again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.api import Capabilities, Edit, EditorContext, EditRequest
from harness.models import architecture, check_layers
from harness.weight_editing.second_moments import moment_corpus, second_moments
from harness.weight_editing.updates import null_space_projector, projected_update
from harness_plugins.methods.memit.editor import MEMIT, SpreadHparams


@dataclass(frozen=True)
class AlphaEditHparams(SpreadHparams):
    """MEMIT's spreading settings plus the null space and the size penalty of the projected write."""

    # eigen-directions of C that make up the null space: eigenvalue <= this share of the largest
    null_space_threshold: float = 1e-2
    l2: float = 10.0  # penalty on the size of the projected update (the reference's L2)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.second_moments:
            raise ValueError("second_moments must stay true: AlphaEdit projects onto their null space")
        if not 0 < self.null_space_threshold < 1:
            raise ValueError(f"null_space_threshold must be in (0, 1), got {self.null_space_threshold}")
        if self.l2 <= 0:
            raise ValueError(f"l2 must be > 0, got {self.l2}")


class AlphaEdit(MEMIT):
    """MEMIT's writes projected onto the null space of the preserved keys, remembering earlier edits."""

    hparams_class = AlphaEditHparams
    capabilities = Capabilities(batch=True, locates_subject=True, memory=True)

    def __init__(self, hparams: AlphaEditHparams):
        super().__init__(hparams)
        self.projectors: dict[str, torch.Tensor] = {}  # per MLP output module, on its weight's device
        self.null_space_dims: dict[str, int] = {}
        self.earlier: dict[str, torch.Tensor] = {}  # per MLP output module: K_p^T, (edits, d_in), float64
        self.written: dict[str, torch.Tensor] = {}  # the keys the current edit call wrote, per module

    def setup(self, model, tokenizer, context: EditorContext) -> None:
        hp = self.hparams
        check_layers("alphaedit", "layers", hp.layers, model)
        arch = architecture(model)
        names = [arch.mlp_out.format(layer) for layer in sorted(hp.layers)]
        texts, self.corpus = moment_corpus(model, tokenizer, hp, context)
        moments = second_moments(
            model, tokenizer, names, texts, hp.second_moment_tokens, Path(context.cache_dir)
        )
        self.projectors = {
            name: null_space_projector(
                moment.to(model.get_submodule(name).weight.device), hp.null_space_threshold
            )
            for name, moment in moments.items()
        }
        self.null_space_dims = {name: round(float(torch.trace(p))) for name, p in self.projectors.items()}

    def write(self, model, layer: int, keys: torch.Tensor, change: torch.Tensor) -> None:
        """AlphaEdit's projected write at ``layer``, penalising changes at the earlier edits' keys."""
        arch = architecture(model)
        name = arch.mlp_out.format(layer)
        projector = self.projectors[name]
        earlier = self.earlier.get(name)
        gram = torch.zeros_like(projector) if earlier is None else earlier.T @ earlier
        weight = model.get_parameter(arch.mlp_out_weight(layer))
        projected_update(weight, keys, change, projector, gram, self.hparams.l2, arch.transposed)
        self.written[name] = keys.detach().to(projector.device, torch.float64)

    def edit(self, model, tokenizer, requests: list[EditRequest]) -> Edit:
        before, self.written = dict(self.earlier), {}
        edit = super().edit(model, tokenizer, requests)
        for name, keys in self.written.items():
            self.earlier[name] = keys if name not in before else torch.cat([before[name], keys])
        edit.also_undo(lambda: self._remember(before))
        edit.info["null_space_dims"] = self.null_space_dims
        edit.info["earlier_keys"] = {name: len(keys) for name, keys in before.items()}
        return edit

    def _remember(self, earlier: dict[str, torch.Tensor]) -> None:
        self.earlier = earlier

    def memory_state(self) -> dict[str, Any]:
        return {"earlier_keys": {name: keys.cpu() for name, keys in self.earlier.items()}}

    def load_memory_state(self, model, state: dict[str, Any]) -> None:
        self.earlier = {
            name: keys.to(self.projectors[name].device) for name, keys in state["earlier_keys"].items()
        }

    def clear_memory(self, model) -> None:
        self.earlier = {}
