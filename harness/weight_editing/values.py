"""What a fact should read: the value v* that makes the model emit the new target, found by
optimising a delta added to the MLP output at the subject (ROME's and MEMIT's shared objective)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import torch

from harness import fallbacks
from harness.activations import FrozenPrefix, layer_of
from harness.answers import at_positions, final_hidden, output_logits, pad_batch, prompt_ids, target_ids
from harness.api import EditRequest
from harness.models import reused_on_unedited_weights
from harness.runtime import MASTER_DTYPE, device_of
from harness.weight_editing.keys import subject_last_token

log = logging.getLogger(__name__)


# Prompts whose next-token distribution at the subject must stay put (ROME's "essence" drift term).
ESSENCE_PROMPTS = {
    "en": "{} is a",
    "zh": "{}是",
    "cs": "{} je",
    "de": "{} ist ein",
    "es": "{} es un",
    "fr": "{} est un",
    "nl": "{} is een",
    "pt": "{} é um",
    "ru": "{} это",
}


@contextlib.contextmanager
def add_to_output(target: torch.nn.Module, rows: torch.Tensor, cols: torch.Tensor, delta: torch.Tensor):
    """Add ``delta`` (one vector, or one per row) to ``target``'s output at (row, position) pairs. The
    sum is taken in float32 (the delta's master dtype) and written back in the output's dtype, on the
    output's device."""

    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        at = (rows.to(hidden.device), cols.to(hidden.device))
        hidden[at] = (hidden[at].to(MASTER_DTYPE) + delta.to(hidden.device)).to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = target.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@dataclass(frozen=True)
class ValueObjective:
    """Hyper-parameters of the value optimisation shared by ROME and MEMIT."""

    steps: int = 25
    lr: float = 0.5
    weight_decay: float = 1e-3
    kl_factor: float = 0.0625
    clamp_norm_factor: float = 4.0
    stop_loss: float = 5e-2
    stop_on: str = "nll"  # a goal stops once this is below stop_loss: "nll", or "total" (the references)
    kl_position: str = "prompt_end"  # where KL is taken in the essence prompt, or "subject_last" (refs)
    # each step runs only the layers from the edited one up, on the columns from the subject's last
    # token on (the rest cannot change and is encoded once); False: the whole prompt every step
    skip_frozen: bool = True

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.stop_on not in ("nll", "total"):
            raise ValueError(f"stop_on must be 'nll' or 'total', got {self.stop_on!r}")
        if self.kl_position not in ("prompt_end", "subject_last"):
            raise ValueError(f"kl_position must be 'prompt_end' or 'subject_last', got {self.kl_position!r}")
        for name in ("lr", "clamp_norm_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "kl_factor", "stop_loss"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def objective(self) -> ValueObjective:
        """Just the value-optimisation fields of an editor's hparams (which inherit this class)."""
        return ValueObjective(**{f.name: getattr(self, f.name) for f in fields(ValueObjective)})


@dataclass(frozen=True)
class ValueGoal:
    """One request's optimisation problem: make ``target`` follow every prompt in ``prompts``."""

    prompts: tuple[str, ...]  # the plain prompt and its context-prefixed copies
    subject: str
    target: str
    essence_prompt: str  # "<subject> is a": its next-token distribution should stay put
    reference_norm: float  # ||v0||: the clamp and the weight decay are relative to it


def essence_template(language: str) -> str:
    """The essence prompt in ``language``; the English one (noted) for a language without its own."""
    if language not in ESSENCE_PROMPTS:
        fallbacks.note("essence prompt", language, f"the English one {ESSENCE_PROMPTS['en']!r}")
    return ESSENCE_PROMPTS.get(language, ESSENCE_PROMPTS["en"])


def subject_goals(
    requests: Sequence[EditRequest], prompt_sets: Sequence[tuple[str, ...]], reference_norms: Sequence[float]
) -> list[ValueGoal]:
    """The value-optimisation goal of each request, with its essence prompt in its own language."""
    return [
        ValueGoal(
            prompts=tuple(prompts),
            subject=request.subject,
            target=request.target,
            essence_prompt=essence_template(request.language).format(request.subject),
            reference_norm=norm,
        )
        for request, prompts, norm in zip(requests, prompt_sets, reference_norms, strict=True)
    ]


@dataclass
class ValueResult:
    delta: torch.Tensor
    losses: list[float]
    steps: int
    reused: bool = False  # read from the value cache, not optimised by this call


@dataclass
class _Packed:
    """Every goal's prompts (with the target teacher-forced) and essence prompt in one padded batch."""

    sequences: list[list[int]]
    ids: torch.Tensor
    mask: torch.Tensor
    subject_cols: torch.Tensor  # per row
    rows: list[torch.Tensor]  # per goal: its rows, the essence row last
    goal_cols: list[torch.Tensor]  # per goal: positions (within each prompt row) predicting the target
    goal_tokens: list[torch.Tensor]
    essence_cols: torch.Tensor  # per goal: the position of its essence row whose KL is taken


def essence_position(tokenizer, goal: ValueGoal, kl_position: str) -> int:
    """Where the essence prompt's next-token distribution is held: its last token (``prompt_end``) or
    the subject's last token (``subject_last``, where ROME's and MEMIT's references take it)."""
    if kl_position == "subject_last":
        return subject_last_token(tokenizer, goal.essence_prompt, goal.subject)
    return len(prompt_ids(tokenizer, goal.essence_prompt)) - 1


def _pack(tokenizer, goals: Sequence[ValueGoal], device: torch.device, kl_position: str) -> _Packed:
    sequences, subject_cols, rows, goal_cols, goal_tokens, essence_cols = [], [], [], [], [], []
    for goal in goals:
        tokens = target_ids(tokenizer, goal.target)
        first = len(sequences)
        cols = []
        for text in goal.prompts:
            encoded = prompt_ids(tokenizer, text)
            sequences.append(encoded + tokens[:-1])
            subject_cols.append(subject_last_token(tokenizer, text, goal.subject))
            cols.append(list(range(len(encoded) - 1, len(encoded) - 1 + len(tokens))))
        essence = prompt_ids(tokenizer, goal.essence_prompt)
        sequences.append(essence)
        subject_cols.append(subject_last_token(tokenizer, goal.essence_prompt, goal.subject))
        rows.append(torch.arange(first, len(sequences), device=device))
        goal_cols.append(torch.tensor(cols, device=device))
        goal_tokens.append(torch.tensor(tokens, device=device))
        essence_cols.append(essence_position(tokenizer, goal, kl_position))
    ids, mask = pad_batch(sequences, tokenizer.pad_token_id, device)
    return _Packed(
        sequences,
        ids,
        mask,
        torch.tensor(subject_cols, device=device),
        rows,
        goal_cols,
        goal_tokens,
        torch.tensor(essence_cols, device=device),
    )


def optimise_values(
    model,
    tokenizer,
    goals: Sequence[ValueGoal],
    module_name: str,
    objective: ValueObjective,
    chunk: int = 8,
) -> list[ValueResult]:
    """For each goal, a vector delta added to ``module_name``'s output at the last subject token that
    makes the model emit the goal's target after each of its prompts.

    loss = mean NLL(target) + kl_factor * KL(essence with delta || without) + weight_decay *
    ||delta|| / reference_norm^2, KL at ``kl_position``; Adam, and after each step ||delta|| is clamped
    to clamp_norm_factor * reference_norm. Goals are optimised ``chunk`` at a time in one batch, each
    with its own optimiser, and leave the batch when their NLL (``stop_on="nll"``) or loss
    (``"total"``) drops below ``stop_loss``: the result for a goal is the same as optimising it alone.

    While the model holds verified unedited weights, the results are cached under them, the goals
    and the settings (``harness.models.reused_on_unedited_weights``), so editors that optimise the
    same values (ROME, RECT-ROME, r-ROME and EMMET at one layer; MEMIT and AlphaEdit) and the scoring
    profiles of one run optimise them once.
    """

    def optimise() -> list[dict]:
        results: list[ValueResult] = []
        for start in range(0, len(goals), chunk):
            results += _optimise_chunk(model, tokenizer, goals[start : start + chunk], module_name, objective)
        return [{"delta": r.delta.cpu(), "losses": r.losses, "steps": r.steps} for r in results]

    parts = ["values-v1", module_name, [asdict(goal) for goal in goals], asdict(objective), chunk]
    found, reused = reused_on_unedited_weights("values", parts, model, optimise)
    device = device_of(model)
    return [ValueResult(r["delta"].to(device), r["losses"], r["steps"], reused) for r in found]


def _optimise_chunk(model, tokenizer, goals, module_name, objective) -> list[ValueResult]:
    device = device_of(model)
    packed = _pack(tokenizer, goals, device, objective.kl_position)
    essence_rows = torch.stack([r[-1] for r in packed.rows])
    with torch.no_grad():
        hidden = final_hidden(model, packed.ids[essence_rows], packed.mask[essence_rows])
        picked = at_positions(hidden, torch.arange(len(goals), device=device), packed.essence_cols)
        essence_before = output_logits(model, picked).to(MASTER_DTYPE).log_softmax(-1)
    width = hidden.shape[-1]
    # the deltas and Adam's state stay float32 whatever the weights' dtype
    deltas = [torch.zeros(width, dtype=MASTER_DTYPE, device=device, requires_grad=True) for _ in goals]
    optimisers = [torch.optim.Adam([delta], lr=objective.lr) for delta in deltas]
    results = [ValueResult(delta=delta, losses=[], steps=0) for delta in deltas]
    target = model.get_submodule(module_name)
    frozen = None
    if objective.skip_frozen and objective.steps:
        anchors = packed.subject_cols.tolist()
        layer = layer_of(model, target)
        frozen = FrozenPrefix.encode(model, packed.sequences, anchors, layer, tokenizer.pad_token_id)
    active = list(range(len(goals)))
    for step in range(1, objective.steps + 1):
        rows = torch.cat([packed.rows[g] for g in active])
        per_row = torch.stack([deltas[g] for g in active for _ in packed.rows[g]])
        hidden, shift = _with_deltas(model, packed, frozen, target, rows, per_row)
        scored_states = _scored_states(packed, active, hidden, shift)
        log_probs = output_logits(model, scored_states).to(MASTER_DTYPE).log_softmax(-1)
        sizes = [len(packed.goal_tokens[g]) * (len(packed.rows[g]) - 1) + 1 for g in active]
        still_active, total = [], 0.0
        for g, scored in zip(active, log_probs.split(sizes), strict=True):
            tokens = packed.goal_tokens[g].repeat(len(packed.rows[g]) - 1).to(scored.device)
            nll = -scored[:-1].gather(-1, tokens[:, None]).mean()
            kl = torch.nn.functional.kl_div(
                essence_before[g].to(scored.device), scored[-1], log_target=True, reduction="sum"
            )
            norm = goals[g].reference_norm
            decay = (objective.weight_decay * deltas[g].norm() / norm**2).to(kl.device)
            loss = nll + objective.kl_factor * kl + decay
            results[g].losses.append(loss.item())
            results[g].steps = step
            if (nll if objective.stop_on == "nll" else loss).item() >= objective.stop_loss:
                still_active.append(g)
                total = total + loss
        active = still_active
        if not active:
            break
        for g in active:
            optimisers[g].zero_grad()
        total.backward()
        with torch.no_grad():
            for g in active:
                optimisers[g].step()
                max_norm = objective.clamp_norm_factor * goals[g].reference_norm
                if (norm := deltas[g].norm()) > max_norm:
                    deltas[g].mul_(max_norm / norm)
    for result in results:
        result.delta = result.delta.detach()
    return results


def _scored_states(packed: _Packed, active: list[int], hidden: torch.Tensor, shift: torch.Tensor):
    """Every active goal's hidden states at its target positions, then at its essence position, in
    one matrix so that the output head runs once per step. ``shift``: each row's first column."""
    picked, offset = [], 0
    for g in active:
        n_rows = len(packed.rows[g])
        goal_cols = packed.goal_cols[g] - shift[offset : offset + n_rows - 1, None]
        prompt_rows = torch.arange(offset, offset + n_rows - 1, device=shift.device)[:, None]
        picked.append(at_positions(hidden, prompt_rows, goal_cols).flatten(0, 1))
        essence_col = packed.essence_cols[g] - shift[offset + n_rows - 1]
        picked.append(hidden[offset + n_rows - 1, essence_col.to(hidden.device)][None])
        offset += n_rows
    return torch.cat(picked)


def _with_deltas(model, packed: _Packed, frozen: FrozenPrefix | None, target, rows, per_row):
    """Final hidden states of ``rows`` with each row's delta added to ``target``'s output at its
    subject's last token, and per row the original column of the first column returned (0 for a
    full pass; the subject's last token when the frozen prefix is reused)."""
    if frozen is None:
        local = torch.arange(len(rows), device=rows.device)
        with add_to_output(target, local, packed.subject_cols[rows], per_row):
            return final_hidden(model, packed.ids[rows], packed.mask[rows]), torch.zeros_like(rows)
    at_anchor = torch.zeros_like(rows)
    with add_to_output(target, torch.arange(len(rows), device=rows.device), at_anchor, per_row):
        return frozen.final_hidden(model, rows), frozen.anchors[rows]
