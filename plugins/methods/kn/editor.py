"""KN: find the neurons that carry an answer, then swap the old answer's embedding for the new target's
in their value columns.

A neuron is one unit j of an MLP; its value column W[:, j] (W: the MLP's output matrix) is what it
writes into the residual stream. Attribution uses integrated gradients at the last prompt position: the
unit's activation a_j is scaled by alpha over ``steps`` points, and attribution = a_j * mean over alpha
of d p(token) / d (alpha a_j).

Two variants (``variant``):

- ``paper`` (the default): the unit is W's input (for gated MLPs the gate's output passes a
  nonlinearity and a product before it reaches W, so W's input is the unit whose column is edited);
  alpha runs over k / steps, k = 1..steps; attribution is for the model's current first visible
  answer token; the edit adds ``enhance`` x the new answer's first-token embedding and subtracts
  ``erase`` x the old one's.
- ``easyedit``: as EasyEdit's knowledge_neurons code ran in the Bi-ZsRE paper (hparams steps=1,
  adaptive_threshold=0.2, refine=false). The unit is the gate (first MLP projection) output; alpha runs
  over linspace(0, 1, steps) (with steps=1 that is alpha = 0 alone); attribution is for every token
  of ``attribution_text`` (tokenised with special tokens; Bi-ZsRE passed no ground truth, so EasyEdit
  used its default "<|endoftext|>"), token i scored after the prompt plus the model's first i greedy
  tokens, averaged over tokens. The edit subtracts the embeddings of the model's greedy continuation
  and adds those of the target (tokenised with special tokens, as many greedy tokens as target
  tokens): 2x the embedding when there is one token, 1x each when there are several.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import torch

from harness.activations import FrozenPrefix, layer_of, run_until
from harness.answers import final_hidden, output_logits, prompt_ids, target_ids
from harness.api import Edit, Editor, EditorContext, EditRequest
from harness.models import architecture, check_layers, reused_on_unedited_weights
from harness.runtime import MASTER_DTYPE, device_of
from harness.weight_editing.keys import SubjectContexts

VARIANTS = ("paper", "easyedit")
# The first MLP projection (the gate in gated MLPs) beside each output matrix's name.
GATE_OF = {"down_proj": "gate_proj", "c_proj": "c_fc", "fc_out": "fc_in"}


@dataclass(frozen=True)
class KNHparams(SubjectContexts):
    """Which layers to search, the attribution and selection rule, and the edit's strength.

    Refinement (paper variant, off by default) also attributes on ``contexts_per_length``
    context-prefixed copies of the prompt and keeps the neurons selected for at least ``share`` of all
    prompts. ``steps`` None: the variant's own (paper 20, easyedit 1). ``erase``/``enhance`` and
    refinement belong to the paper variant; ``attribution_text`` to the easyedit one.
    """

    variant: str = "paper"
    layers: tuple[int, ...] = ()  # empty: every layer
    steps: int | None = None  # integrated-gradient points
    threshold: float = 0.2  # keep neurons above threshold * the largest attribution
    max_neurons: int = 0  # 0: no cap; else keep the strongest this many
    share: float = 0.5
    erase: float = 1.0  # times the old answer's embedding taken out of each value column
    enhance: float = 8.0  # times the new answer's embedding put in
    context_lengths: tuple[int, ...] = (5,)
    contexts_per_length: int = 0
    attribution_text: str = "<|endoftext|>"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1], got {self.share}")
        if self.max_neurons < 0:
            raise ValueError(f"max_neurons must be >= 0, got {self.max_neurons}")
        paper_only = (self.erase, self.enhance, self.contexts_per_length)
        if self.variant == "easyedit" and paper_only != (1.0, 8.0, 0):
            raise ValueError("erase, enhance and contexts_per_length belong to variant=paper")

    @property
    def integration_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        return 20 if self.variant == "paper" else 1


def integration_alphas(steps: int, grid: str, device: torch.device) -> torch.Tensor:
    """Scales of the activation, on ``device``: ``right`` k / steps for k = 1..steps (the paper's
    Riemann sum), ``linspace`` linspace(0, 1, steps) (EasyEdit's, which starts at 0)."""
    if grid == "right":
        return torch.arange(1, steps + 1, dtype=MASTER_DTYPE, device=device) / steps
    if grid == "linspace":
        return torch.linspace(0, 1, steps, dtype=MASTER_DTYPE, device=device)
    raise ValueError(f"grid must be 'right' or 'linspace', got {grid!r}")


def neuron_attributions(
    model,
    tokenizer,
    prompt: str,
    token: int,
    module_names: list[str],
    steps: int,
    side: str = "input",
    grid: str = "right",
) -> torch.Tensor:
    """Integrated-gradient attribution of p(``token`` next) to each unit of each module's input
    (``side="input"``) or output, at the prompt's last position: (len(module_names), width).

    Only the last position at the module's layer and above depends on the scaling, so each module's
    ``steps`` passes resume there from states encoded once (``harness.activations.FrozenPrefix``).
    """
    tokens = prompt_ids(tokenizer, prompt)
    ids = torch.tensor([tokens], device=device_of(model))
    last = len(tokens) - 1
    targets = [model.get_submodule(name) for name in module_names]
    with torch.no_grad():
        clean = [seen[0, last] for seen in run_until(model, ids, torch.ones_like(ids), targets, side)]
    alphas = integration_alphas(steps, grid, clean[0].device).to(clean[0].dtype)[:, None]
    rows = []
    for target, activation in zip(targets, clean, strict=True):
        scaled = (alphas * activation).requires_grad_(True)
        frozen = FrozenPrefix.encode(model, [tokens], [last], layer_of(model, target), tokenizer.pad_token_id)

        def replace_input(_module, args, scaled=scaled):
            inputs = args[0].clone()
            inputs[:, 0] = scaled  # live column 0 is the prompt's last position
            return (inputs, *args[1:])

        def replace_output(_module, _args, output, scaled=scaled):
            output = output.clone()
            output[:, 0] = scaled
            return output

        if side == "input":
            handle = target.register_forward_pre_hook(replace_input)
        else:
            handle = target.register_forward_hook(replace_output)
        try:
            hidden = frozen.final_hidden(model, torch.zeros(steps, dtype=torch.long, device=ids.device))[:, 0]
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
    visible = answer_tokens(tokenizer, ranked)
    return visible[0] if visible else ranked[0]


def answer_tokens(tokenizer, ranked: list[int]) -> list[int]:
    """The tokens of ``ranked`` that can open an answer: visible text from the base vocabulary. Added
    tokens are control symbols even when not flagged special (Gemma 3's ``<start_of_image>``)."""
    excluded = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    return [t for t in ranked if t not in excluded and tokenizer.decode([t]).strip()]


@torch.no_grad()
def greedy_texts(model, tokenizer, prompt: str, count: int) -> tuple[list[str], list[int]]:
    """The prompt before each of ``count`` greedy steps, and the tokens chosen. As EasyEdit does, each
    chosen token is decoded, appended to the text and the text tokenised again."""
    texts, tokens = [], []
    for _ in range(count):
        texts.append(prompt)
        ids = torch.tensor([prompt_ids(tokenizer, prompt)], device=device_of(model))
        token = int(output_logits(model, final_hidden(model, ids, torch.ones_like(ids))[0, -1]).argmax())
        tokens.append(token)
        prompt += tokenizer.decode([token])
    return texts, tokens


def embedding_sum(embeddings: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """EasyEdit's edit term: 2x the embedding of a single token, the plain sum for several."""
    rows = embeddings[tokens].to(MASTER_DTYPE)
    return 2 * rows[0] if len(tokens) == 1 else rows.sum(0)


class KN(Editor):
    """Knowledge neurons: erase the old answer from the neurons that carry it and write the new one."""

    hparams_class = KNHparams

    def __init__(self, hparams: KNHparams):
        super().__init__(hparams)
        self.layers: list[int] = []

    def setup(self, model, tokenizer, context: EditorContext) -> None:
        check_layers("kn", "layers", self.hparams.layers, model)
        self.layers = sorted(set(self.hparams.layers)) or list(range(model.config.num_hidden_layers))
        if self.hparams.variant == "easyedit":
            self.unit_modules(model)  # fails here, before any edit, on an MLP without a known gate

    def unit_modules(self, model) -> list[str]:
        """Per searched layer, the module whose input (paper) or output (easyedit) holds the units."""
        arch = architecture(model)
        names = [arch.mlp_out.format(layer) for layer in self.layers]
        if self.hparams.variant == "paper":
            return names
        parent, _, leaf = arch.mlp_out.rpartition(".")
        if leaf not in GATE_OF:
            raise ValueError(f"kn: variant=easyedit needs a known first MLP projection beside {leaf!r}")
        return [f"{parent}.{GATE_OF[leaf]}".format(layer) for layer in self.layers]

    def neurons(self, model, tokenizer, prompts: tuple[str, ...], token: int) -> list[tuple[int, int]]:
        """(layer, unit) pairs chosen for ``token``: per prompt by threshold, then shared by ``share``."""
        hp = self.hparams
        names = self.unit_modules(model)
        counts: Counter[tuple[int, int]] = Counter()
        for prompt in prompts:
            scores = neuron_attributions(model, tokenizer, prompt, token, names, hp.integration_steps)
            counts.update(select_neurons(scores, hp.threshold, 0))
        shared = [n for n, c in counts.most_common() if c >= hp.share * len(prompts)]
        if hp.max_neurons:
            shared = shared[: hp.max_neurons]
        return [(self.layers[row], unit) for row, unit in shared]

    def easyedit_neurons(self, model, tokenizer, prompt: str) -> list[tuple[int, int]]:
        """(layer, unit) pairs above threshold x the peak of the attributions to ``attribution_text``'s
        tokens, each after the prompt plus the greedy tokens before it, averaged over the tokens."""
        hp = self.hparams
        names = self.unit_modules(model)
        tokens = prompt_ids(tokenizer, hp.attribution_text)
        texts, _ = greedy_texts(model, tokenizer, prompt, len(tokens))
        scores = torch.stack(
            [
                neuron_attributions(
                    model, tokenizer, text, token, names, hp.integration_steps, "output", "linspace"
                )
                for text, token in zip(texts, tokens, strict=True)
            ]
        ).mean(0)
        chosen = select_neurons(scores, hp.threshold, hp.max_neurons)
        return [(self.layers[row], unit) for row, unit in chosen]

    def shift(self, model, tokenizer, request: EditRequest) -> tuple[list, torch.Tensor, dict[str, str]]:
        """The neurons to edit, the vector added to each of their value columns, and what it encodes."""
        hp = self.hparams
        embeddings = model.get_input_embeddings().weight
        if hp.variant == "easyedit":
            chosen, reused = self.reused(
                model, [request.prompt], lambda: self.easyedit_neurons(model, tokenizer, request.prompt)
            )
            new = prompt_ids(tokenizer, request.target)
            _, old = greedy_texts(model, tokenizer, request.prompt, len(new))
            vector = embedding_sum(embeddings, new) - embedding_sum(embeddings, old)
        else:
            old = [current_answer_token(model, tokenizer, request.prompt)]
            new = target_ids(tokenizer, request.target)[:1]
            (prompts,) = hp.prompt_sets(model, tokenizer, [request], self.context)
            chosen, reused = self.reused(
                model, [list(prompts), old[0]], lambda: self.neurons(model, tokenizer, prompts, old[0])
            )
            new_row, old_row = (embeddings[t[0]].to(MASTER_DTYPE) for t in (new, old))
            vector = hp.enhance * new_row - hp.erase * old_row
        info = {"old_token": tokenizer.decode(old), "new_token": tokenizer.decode(new), "from_cache": reused}
        return chosen, vector, info

    def reused(self, model, parts: list, choose) -> tuple[list[tuple[int, int]], bool]:
        """``choose()``'s neurons, read from the cache when the unedited weights chose them before for
        the same ``parts`` and settings (both scoring profiles of a run attribute the same prompts)."""
        key = ["kn-neurons-v1", self.layers, asdict(self.hparams), *parts]
        found, reused = reused_on_unedited_weights("kn-neurons", key, model, choose)
        return [(int(layer), int(unit)) for layer, unit in found], reused

    def edit(self, model, tokenizer, requests: list[EditRequest]) -> Edit:
        arch = architecture(model)
        chosen, vector, tokens = self.shift(model, tokenizer, requests[0])
        layers = sorted({layer for layer, _ in chosen})
        edit = Edit.snapshot(model, [arch.mlp_out_weight(layer) for layer in layers])
        with torch.no_grad():
            for layer, unit in chosen:
                weight = model.get_parameter(arch.mlp_out_weight(layer))
                column = weight[unit] if arch.transposed else weight[:, unit]
                column.copy_(column.to(MASTER_DTYPE) + vector.to(weight.device))
        edit.info = {"neurons": [list(n) for n in chosen], "variant": self.hparams.variant, **tokens}
        return edit
