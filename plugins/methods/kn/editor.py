"""KN: find the neurons that carry the model's current answer, then swap that answer's embedding for
the new target's in their value columns.

A neuron is one input unit of an MLP output matrix W (one entry of the key k); its value column
W[:, j] is what it writes into the residual stream. Attribution uses integrated gradients at the last
prompt position: the activation a_j is scaled by alpha in (0, 1] over ``steps`` points, and
attribution = a_j * mean over alpha of d p(answer) / d (alpha a_j). The method is often phrased on the
gate projection's output; for gated MLPs that output passes a nonlinearity and a product before it
reaches W, so the unit whose column is edited is W's input, and that is what is scaled here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from harness.answers import final_hidden, output_logits, prompt_ids, target_ids
from harness.api import Edit, EditorContext, EditRequest
from harness.models import architecture, check_layers
from harness.runtime import MASTER_DTYPE, device_of
from harness.weight_editing import SubjectContexts, module, run_until


@dataclass(frozen=True)
class KNHparams(SubjectContexts):
    """Which layers to search, the attribution and selection rule, and the edit's strength.

    Refinement (off by default) also attributes on ``contexts_per_length`` context-prefixed copies of
    the prompt and keeps the neurons selected for at least ``share`` of all prompts.
    """

    layers: tuple[int, ...] = ()  # empty: every layer
    steps: int = 20  # integrated-gradient points
    threshold: float = 0.2  # keep neurons above threshold * the largest attribution
    max_neurons: int = 0  # 0: no cap; else keep the strongest this many
    share: float = 0.5
    erase: float = 1.0  # times the old answer's embedding taken out of each value column
    enhance: float = 8.0  # times the new answer's embedding put in
    context_lengths: tuple[int, ...] = (5,)
    contexts_per_length: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1], got {self.share}")
        if self.max_neurons < 0:
            raise ValueError(f"max_neurons must be >= 0, got {self.max_neurons}")


def neuron_attributions(
    model, tokenizer, prompt: str, token: int, module_names: list[str], steps: int
) -> torch.Tensor:
    """Integrated-gradient attribution of p(``token`` next) to each input unit of each module, at the
    prompt's last position: (len(module_names), d_ff)."""
    ids = torch.tensor([prompt_ids(tokenizer, prompt)] * steps, device=device_of(model))
    mask = torch.ones_like(ids)
    last = ids.shape[1] - 1
    targets = [module(model, name) for name in module_names]
    with torch.no_grad():
        clean = [seen[0, last] for seen in run_until(model, ids[:1], mask[:1], targets, "input")]
    alphas = torch.arange(1, steps + 1, dtype=clean[0].dtype, device=clean[0].device)[:, None] / steps
    rows = []
    for target, activation in zip(targets, clean, strict=True):
        scaled = (alphas * activation).requires_grad_(True)

        def replace(_module, args, scaled=scaled):
            inputs = args[0].clone()
            inputs[:, last] = scaled
            return (inputs, *args[1:])

        handle = target.register_forward_pre_hook(replace)
        try:
            hidden = final_hidden(model, ids, mask)[:, last]
        finally:
            handle.remove()
        probability = output_logits(model, hidden).float().softmax(-1)[:, token]
        (gradient,) = torch.autograd.grad(probability.sum(), scaled)
        rows.append((activation.to(MASTER_DTYPE) * gradient.to(MASTER_DTYPE).mean(0)).to(ids.device))
    return torch.stack(rows)


def select_neurons(attributions: torch.Tensor, threshold: float, limit: int) -> list[tuple[int, int]]:
    """(row, unit) pairs above ``threshold`` x the maximum, strongest first, at most ``limit`` (0: all)."""
    peak = attributions.max()
    if peak <= 0:
        return []
    rows, units = torch.nonzero(attributions > threshold * peak, as_tuple=True)
    order = attributions[rows, units].argsort(descending=True)
    picked = [(int(rows[i]), int(units[i])) for i in order]
    return picked[:limit] if limit else picked


@torch.no_grad()
def current_answer_token(model, tokenizer, prompt: str, candidates: int = 50) -> int:
    """The model's most likely next token that has visible text: base models often open an answer
    with a newline, and the neurons behind a newline are shared by every question."""
    ids = torch.tensor([prompt_ids(tokenizer, prompt)], device=device_of(model))
    logits = output_logits(model, final_hidden(model, ids, torch.ones_like(ids))[0, -1])
    ranked = logits.topk(candidates).indices.tolist()
    special = set(tokenizer.all_special_ids)
    visible = [t for t in ranked if t not in special and tokenizer.decode([t]).strip()]
    return visible[0] if visible else ranked[0]


class KN:
    """Knowledge neurons: erase the old answer from the neurons that carry it and write the new one."""

    hparams_class = KNHparams
    supports_batch = False

    def __init__(self, hparams: KNHparams):
        self.hparams = hparams
        self.context: EditorContext | None = None
        self.layers: list[int] = []

    def prepare(self, model, tokenizer, context: EditorContext) -> None:
        check_layers("kn", "layers", self.hparams.layers, model)
        self.layers = sorted(set(self.hparams.layers)) or list(range(model.config.num_hidden_layers))
        self.context = context

    def neurons(self, model, tokenizer, prompts: tuple[str, ...], token: int) -> list[tuple[int, int]]:
        """(layer, unit) pairs chosen for ``token``: per prompt by threshold, then shared by ``share``."""
        hp, arch = self.hparams, architecture(model)
        names = [arch.mlp_out.format(layer) for layer in self.layers]
        counts: Counter[tuple[int, int]] = Counter()
        for prompt in prompts:
            scores = neuron_attributions(model, tokenizer, prompt, token, names, hp.steps)
            counts.update(select_neurons(scores, hp.threshold, 0))
        shared = [n for n, c in counts.most_common() if c >= hp.share * len(prompts)]
        if hp.max_neurons:
            shared = shared[: hp.max_neurons]
        return [(self.layers[row], unit) for row, unit in shared]

    def apply(self, model, tokenizer, requests: list[EditRequest]) -> Edit:
        if self.context is None:
            raise RuntimeError("kn: call prepare() before apply()")
        if len(requests) != 1:
            raise ValueError(f"kn edits one fact at a time, got {len(requests)}")
        (request,) = requests
        arch = architecture(model)
        old = current_answer_token(model, tokenizer, request.prompt)
        new = target_ids(tokenizer, request.target)[0]
        (prompts,) = self.hparams.prompt_sets(model, tokenizer, [request], self.context)
        chosen = self.neurons(model, tokenizer, prompts, old)
        layers = sorted({layer for layer, _ in chosen})
        edit = Edit.snapshot(model, [arch.mlp_out_weight(layer) for layer in layers])
        embeddings = model.get_input_embeddings().weight
        new_row, old_row = (embeddings[token].to(MASTER_DTYPE) for token in (new, old))
        shift = self.hparams.enhance * new_row - self.hparams.erase * old_row
        with torch.no_grad():
            for layer, unit in chosen:
                weight = model.get_parameter(arch.mlp_out_weight(layer))
                column = weight[unit] if arch.transposed else weight[:, unit]
                column.copy_(column.to(MASTER_DTYPE) + shift.to(weight.device))
        edit.info = {
            "neurons": [list(n) for n in chosen],
            "old_token": tokenizer.decode([old]),
            "new_token": tokenizer.decode([new]),
        }
        return edit
