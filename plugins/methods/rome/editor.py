"""ROME: key = subject representation averaged over contexts, value = optimised, rank-one write."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from harness.api import Capabilities, Edit, Editor, EditorContext, EditRequest
from harness.models import architecture, check_layers
from harness.weight_editing.keys import SubjectContexts, representations, subject_keys, subject_last_token
from harness.weight_editing.second_moments import SecondMomentSettings, regularised_moments
from harness.weight_editing.updates import equality_constrained_update, rank_one_update
from harness.weight_editing.values import ValueObjective, optimise_values, subject_goals

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ROMEHparams(ValueObjective, SecondMomentSettings, SubjectContexts):
    """Where ROME writes, plus the shared value-optimisation, context and second-moment settings.

    ``value_norm`` is the v0 whose norm scales the clamp and the weight decay: ``averaged_key`` W k*
    (k* the key averaged over contexts), or ``prompt_output`` the MLP output at the subject's last
    token of the plain prompt, as ROME's reference records it.

    ``update_key`` is the key the write makes exact: ``averaged`` k*, the key the value was optimised
    for and the one C^-1 k* is taken of, so W' k* = W k* + delta (r-ROME's correction); ``plain``
    the plain prompt's key in the residual and the denominator, as ROME's reference writes it, so
    W' k_plain = W k_plain + delta while the direction stays C^-1 k*.
    """

    layer: int = 5
    value_norm: str = "averaged_key"
    update_key: str = "averaged"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.value_norm not in ("averaged_key", "prompt_output"):
            raise ValueError(f"value_norm must be 'averaged_key' or 'prompt_output', got {self.value_norm!r}")
        if self.update_key not in ("averaged", "plain"):
            raise ValueError(f"update_key must be 'averaged' or 'plain', got {self.update_key!r}")


class ROME(Editor):
    """Rank-one model editing: write (subject key -> optimised value) into one MLP matrix."""

    hparams_class = ROMEHparams
    capabilities = Capabilities(locates_subject=True)

    def __init__(self, hparams: ROMEHparams):
        super().__init__(hparams)
        self.inverse_moment: torch.Tensor | None = None
        self.corpus = "none (C = I)"

    def setup(self, model, tokenizer, context: EditorContext) -> None:
        check_layers("rome", "layer", self.hparams.layer, model)
        if self.hparams.second_moments:
            name = architecture(model).mlp_out.format(self.hparams.layer)
            moments, self.corpus = regularised_moments(model, tokenizer, [name], self.hparams, context)
            self.inverse_moment = torch.linalg.inv(moments[name])

    def reference_norm(self, model, tokenizer, request: EditRequest, key: torch.Tensor) -> float:
        """||v0|| by ``value_norm``: of W k* (``key``), or of the MLP output at the plain prompt."""
        arch = architecture(model)
        module_name = arch.mlp_out.format(self.hparams.layer)
        if self.hparams.value_norm == "prompt_output":
            position = subject_last_token(tokenizer, request.prompt, request.subject)
            return float(
                representations(model, tokenizer, [request.prompt], [position], module_name, "output").norm()
            )
        weight = model.get_parameter(arch.mlp_out_weight(self.hparams.layer))
        value = (key @ weight.float()) if arch.transposed else (weight.float() @ key.to(weight.device))
        return float(value.norm())

    def keys_and_values(self, model, tokenizer, requests: list[EditRequest]):
        """Per request its prompts (plain first), its averaged key k* and its optimised value change."""
        module_name = architecture(model).mlp_out.format(self.hparams.layer)
        prompt_sets = self.hparams.prompt_sets(model, tokenizer, requests, self.context)
        keys = subject_keys(model, tokenizer, prompt_sets, [r.subject for r in requests], module_name)
        norms = [self.reference_norm(model, tokenizer, r, k) for r, k in zip(requests, keys, strict=True)]
        goals = subject_goals(requests, prompt_sets, norms)
        return (
            prompt_sets,
            keys,
            optimise_values(model, tokenizer, goals, module_name, self.hparams.objective()),
        )

    def edit(self, model, tokenizer, requests: list[EditRequest]) -> Edit:
        arch = architecture(model)
        module_name = arch.mlp_out.format(self.hparams.layer)
        weight = model.get_parameter(arch.mlp_out_weight(self.hparams.layer))
        prompt_sets, keys, (result,) = self.keys_and_values(model, tokenizer, requests)
        key = keys[0]
        direction = key  # u = C^-1 k*, or k* itself with C = I
        if self.inverse_moment is not None:
            direction = (self.inverse_moment @ key.double()).to(key.dtype)
        exact = key
        if self.hparams.update_key == "plain":
            plain = [prompt_sets[0][:1]]  # the first prompt of the set is the one without a prefix
            exact = subject_keys(model, tokenizer, plain, [requests[0].subject], module_name)[0]
        edit = Edit.snapshot(model, [arch.mlp_out_weight(self.hparams.layer)])
        rank_one_update(weight, exact, result.delta, direction, transposed=arch.transposed)
        edit.info = {
            "value_steps": result.steps,
            "final_loss": result.losses[-1],
            "delta_norm": float(result.delta.norm()),
            "from_cache": result.reused,
            "second_moment_corpus": self.corpus,
        }
        return edit


class RROME(ROME):
    """r-ROME: ROME writing exactly the key its value was optimised for (W' k* = v*).

    Gupta et al. (2024) traced the sudden collapse of long sequential ROME runs to the reference
    writing the plain prompt's key while the value and the direction come from the averaged one."""

    def setup(self, model, tokenizer, context: EditorContext) -> None:
        if self.hparams.update_key != "averaged":
            raise ValueError(
                f"r-rome: update_key={self.hparams.update_key!r}; r-ROME writes the averaged key. ROME's "
                "reference write is --editor rome --set update_key=plain"
            )
        super().setup(model, tokenizer, context)


class EMMET(RROME):
    """EMMET: ROME for a batch, every fact's key written exactly at once (equality-constrained)."""

    capabilities = Capabilities(batch=True, locates_subject=True)

    def edit(self, model, tokenizer, requests: list[EditRequest]) -> Edit:
        arch = architecture(model)
        weight = model.get_parameter(arch.mlp_out_weight(self.hparams.layer))
        _, keys, results = self.keys_and_values(model, tokenizer, requests)
        deltas = torch.stack([result.delta for result in results])
        edit = Edit.snapshot(model, [arch.mlp_out_weight(self.hparams.layer)])
        try:
            equality_constrained_update(weight, keys, deltas, self.inverse_moment, arch.transposed)
        except torch.linalg.LinAlgError as error:
            ids = [r.record_id or r.prompt for r in requests]
            raise ValueError(
                f"emmet: the keys of records {ids} are linearly dependent (two edits of one subject?), so "
                "no update writes every value exactly; edit them in separate batches"
            ) from error
        edit.info = {
            "value_steps": [result.steps for result in results],
            "final_loss": [result.losses[-1] for result in results],
            "delta_norm": [float(result.delta.norm()) for result in results],
            "from_cache": all(result.reused for result in results),
            "second_moment_corpus": self.corpus,
        }
        return edit
