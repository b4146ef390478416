"""MEMIT: residual-stream targets at the last edited layer, least-squares writes over a layer range.

For every request a value change is optimised at the MLP output of the last layer of ``layers`` with
ROME's objective; the residual stream after that layer with the change applied is the request's
target z (on LLaMA-style models this is exactly MEMIT's residual optimisation; on models that
normalise the MLP output, like Gemma 3, it keeps z reachable and the step size meaningful). Then,
layer by layer in order, the remaining gap z - h (h: the current residual after the last layer) is
split evenly over the layers still to come, and each layer's MLP output matrix takes its share for all
requests at once with U = R K^T (lambda C + K K^T)^-1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.api import Capabilities, Edit, Editor, EditorContext, EditRequest
from harness.models import architecture, check_layers
from harness.runtime import device_of
from harness.weight_editing.keys import SubjectContexts, representations, subject_keys, subject_last_token
from harness.weight_editing.second_moments import SecondMomentSettings, regularised_moments
from harness.weight_editing.updates import least_squares_update, value_change
from harness.weight_editing.values import ValueObjective, add_to_output, optimise_values, subject_goals


@dataclass(frozen=True)
class SpreadHparams(ValueObjective, SecondMomentSettings, SubjectContexts):
    """How a batch of values is spread over a layer range (MEMIT's procedure, which AlphaEdit shares),
    plus the shared value-optimisation, context and moment settings."""

    layers: tuple[int, ...] = (4, 5, 6, 7, 8)
    second_moments: bool = True
    value_chunk: int = 8  # requests whose values are optimised together (bounds memory)
    value_norm: str = "mlp_output"  # v0 of the clamp and decay, or "residual" (the reference's)
    key_average: str = "flat"  # over all prompts, or "per_length": mean of per-length means (reference)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.layers:
            raise ValueError("layers must name at least one layer")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must not repeat a layer, got {self.layers}")
        if self.value_chunk < 1:
            raise ValueError(f"value_chunk must be >= 1, got {self.value_chunk}")
        if self.value_norm not in ("mlp_output", "residual"):
            raise ValueError(f"value_norm must be 'mlp_output' or 'residual', got {self.value_norm!r}")
        if self.key_average not in ("flat", "per_length"):
            raise ValueError(f"key_average must be 'flat' or 'per_length', got {self.key_average!r}")


@dataclass(frozen=True)
class MEMITHparams(SpreadHparams):
    """MEMIT's lambda, on top of the spreading settings."""

    update_weight: float = 15_000.0  # lambda: how much the keys in C keep their old values

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.update_weight < 0:
            raise ValueError(f"update_weight must be >= 0, got {self.update_weight}")


class MEMIT(Editor):
    """Mass-editing memory in a transformer: a batch of facts written over several MLP layers."""

    hparams_class = MEMITHparams
    capabilities = Capabilities(batch=True, locates_subject=True)

    def __init__(self, hparams: MEMITHparams):
        super().__init__(hparams)
        self.moments: dict[str, torch.Tensor] = {}
        self.corpus = ""

    def setup(self, model, tokenizer, context: EditorContext) -> None:
        check_layers("memit", "layers", self.hparams.layers, model)
        arch = architecture(model)
        names = [arch.mlp_out.format(layer) for layer in sorted(self.hparams.layers)]
        self.moments, self.corpus = regularised_moments(model, tokenizer, names, self.hparams, context)

    def write(self, model, layer: int, keys: torch.Tensor, change: torch.Tensor) -> None:
        """Write the change wanted at each key ((n, d_in) keys, (n, d_out) changes) into the MLP output
        matrix of ``layer``: MEMIT's least squares against lambda C."""
        arch = architecture(model)
        weight = model.get_parameter(arch.mlp_out_weight(layer))
        preservation = self.hparams.update_weight * self.moments[arch.mlp_out.format(layer)]
        least_squares_update(weight, keys, change, preservation, arch.transposed)

    def edit(self, model, tokenizer, requests: list[EditRequest]) -> Edit:
        hp, arch = self.hparams, architecture(model)
        layers = sorted(hp.layers)
        residual_at = arch.layer(layers[-1])
        prompts = [r.prompt for r in requests]
        positions = [subject_last_token(tokenizer, r.prompt, r.subject) for r in requests]

        def residual() -> torch.Tensor:
            return representations(model, tokenizer, prompts, positions, residual_at, side="output")

        prompt_sets = hp.prompt_sets(model, tokenizer, requests, self.context)
        last_mlp = arch.mlp_out.format(layers[-1])
        start = residual()
        if hp.value_norm == "residual":
            reference = start
        else:
            reference = representations(model, tokenizer, prompts, positions, last_mlp, "output")
        goals = subject_goals(requests, prompt_sets, reference.norm(dim=-1).tolist())
        values = optimise_values(model, tokenizer, goals, last_mlp, hp.objective(), hp.value_chunk)
        deltas = torch.stack([v.delta for v in values])
        rows = torch.arange(len(requests), device=device_of(model))
        with add_to_output(
            model.get_submodule(last_mlp), rows, torch.tensor(positions, device=rows.device), deltas
        ):
            targets = representations(
                model, tokenizer, prompts, positions, residual_at, "output", len(prompts)
            )

        groups = hp.prompt_groups() if hp.key_average == "per_length" else ()
        edit = Edit.snapshot(model, [arch.mlp_out_weight(layer) for layer in layers])
        for done, layer in enumerate(layers):
            name = arch.mlp_out.format(layer)
            keys = subject_keys(model, tokenizer, prompt_sets, [r.subject for r in requests], name, groups)
            wanted = (targets - residual()) / (len(layers) - done)
            post = model.get_submodule(arch.mlp_post.format(layer)) if arch.mlp_post else None
            outputs = representations(model, tokenizer, prompts, positions, name, "output") if post else None
            self.write(model, layer, keys, value_change(post, outputs, wanted))
        gap = (targets - residual()).norm(dim=-1) / (targets - start).norm(dim=-1).clamp_min(1e-12)
        edit.info = {
            "value_steps": [v.steps for v in values],
            "final_loss": [v.losses[-1] for v in values],
            "delta_norm": [float(v.delta.norm()) for v in values],
            "from_cache": all(v.reused for v in values),
            "residual_gap": gap.tolist(),  # ||z - h|| after the edit over before: 0 means z was reached
            "second_moment_corpus": self.corpus,
        }
        return edit
