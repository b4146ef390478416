"""Shared math of locate-then-edit methods (ROME, MEMIT, KN, FT): one copy, used by all of them.

Vocabulary: at layer L the MLP's output matrix W maps a key k (its input, d_ff) to a value v (its
output, d). Editors find the key of a subject, optimise the value that makes the model emit the new
target, and write that key -> value association into W.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from harness.activations import FrozenPrefix, layer_of, run_until
from harness.answers import at_positions, final_hidden, output_logits, pad_batch, prompt_ids, target_ids
from harness.api import EditRequest
from harness.model_text import context_prefixes, corpus_spec, sampled_corpus, shipped_samples
from harness.models import architecture, save_atomic
from harness.runtime import MASTER_DTYPE, device_of

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


class SubjectNotFound(ValueError):
    """The subject's text does not occur in the prompt, so its tokens cannot be located."""


def subject_last_token(tokenizer, text: str, subject: str) -> int:
    """Index (in ``tokenizer(text).input_ids``) of the last token overlapping the subject's text.

    The subject's last occurrence is used (context-prefixed copies end with the prompt, and a subject
    aligned at the prompt's end is found there), matched exactly, then case-insensitively; otherwise
    SubjectNotFound. Requests reach editors with the subject as written in the prompt
    (``harness.subjects``).
    """
    start = text.rfind(subject)
    if start < 0:
        start = text.casefold().rfind(subject.casefold())
    if start < 0 or not subject:
        raise SubjectNotFound(f"subject {subject!r} not found in {text!r}")
    end = start + len(subject)
    offsets = tokenizer(text, return_offsets_mapping=True).offset_mapping
    last = None
    for index, (lo, hi) in enumerate(offsets):
        if hi > lo and lo < end:
            last = index
    if last is None:
        raise SubjectNotFound(f"subject {subject!r} has no tokens in {text!r}")
    return last


def module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    return model.get_submodule(name)


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


@torch.no_grad()
def representations(
    model,
    tokenizer,
    texts: Sequence[str],
    positions: Sequence[int],
    module_name: str,
    side: str = "input",
    batch_size: int = 32,
) -> torch.Tensor:
    """Input (keys) or output (values, residual stream) of ``module_name`` at ``positions[i]`` of
    ``texts[i]``: (n, width), in float32 on the module's device. The forward pass stops at the module."""
    found = []
    target = module(model, module_name)
    device = device_of(model)
    for start in range(0, len(texts), batch_size):
        chunk = list(range(start, min(start + batch_size, len(texts))))
        ids, mask = pad_batch(
            [prompt_ids(tokenizer, texts[i]) for i in chunk], tokenizer.pad_token_id, device
        )
        (seen,) = run_until(model, ids, mask, [target], side)
        rows = torch.arange(len(chunk), device=device)
        found.append(at_positions(seen, rows, torch.tensor([positions[i] for i in chunk], device=device)))
    return torch.cat(found).to(MASTER_DTYPE)


def keys_at(
    model, tokenizer, texts: Sequence[str], positions: Sequence[int], module_name: str, batch_size: int = 32
) -> torch.Tensor:
    """Input of ``module_name`` (the key, for an MLP output matrix) at the given positions."""
    return representations(model, tokenizer, texts, positions, module_name, "input", batch_size)


def subject_keys(
    model,
    tokenizer,
    prompt_sets: Sequence[Sequence[str]],
    subjects: Sequence[str],
    module_name: str,
    groups: Sequence[int] = (),
) -> torch.Tensor:
    """One key per request: the input of ``module_name`` at the subject's last token, averaged over
    that request's prompts (the plain prompt and its context-prefixed copies). (n, d_in).

    ``groups`` (sizes of consecutive runs of each request's prompts, e.g. the plain prompt and each
    prefix length) makes the key the mean of the runs' means, as MEMIT's reference averages keys;
    empty: one flat mean, as ROME's reference does.
    """
    texts = [t for prompts in prompt_sets for t in prompts]
    positions = [
        subject_last_token(tokenizer, t, subject)
        for prompts, subject in zip(prompt_sets, subjects, strict=True)
        for t in prompts
    ]
    keys = keys_at(model, tokenizer, texts, positions, module_name)
    sizes = [len(prompts) for prompts in prompt_sets]
    if not groups:
        return torch.stack([chunk.mean(0) for chunk in keys.split(sizes)])
    return torch.stack(
        [torch.stack([g.mean(0) for g in chunk.split(list(groups))]).mean(0) for chunk in keys.split(sizes)]
    )


@dataclass(frozen=True)
class SubjectContexts:
    """Keys and values are averaged over the plain prompt and prefixed copies of it: short texts the
    model itself wrote, ``contexts_per_length`` of each length in ``context_lengths`` (tokens)."""

    context_lengths: tuple[int, ...] = (5, 10)
    contexts_per_length: int = 10

    def prompt_sets(
        self, model, tokenizer, requests: Sequence[EditRequest], context
    ) -> list[tuple[str, ...]]:
        """Per request: its prompt after each prefix, the plain prompt first."""
        lengths = [(n, self.contexts_per_length) for n in self.context_lengths]
        sets = []
        for request in requests:
            prefixes = context_prefixes(
                model, tokenizer, request.language, context.seed, Path(context.cache_dir), lengths
            )
            sets.append(tuple(prefix + request.prompt for prefix in prefixes))
        return sets

    def prompt_groups(self) -> tuple[int, ...]:
        """Sizes of the runs in each prompt set: the plain prompt, then each prefix length's copies."""
        if not self.contexts_per_length:
            return (1,)
        return (1,) + (self.contexts_per_length,) * len(self.context_lengths)


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


def subject_goals(
    requests: Sequence[EditRequest], prompt_sets: Sequence[tuple[str, ...]], reference_norms: Sequence[float]
) -> list[ValueGoal]:
    """The value-optimisation goal of each request, with its essence prompt in its own language."""
    return [
        ValueGoal(
            prompts=tuple(prompts),
            subject=request.subject,
            target=request.target,
            essence_prompt=ESSENCE_PROMPTS.get(request.language, ESSENCE_PROMPTS["en"]).format(
                request.subject
            ),
            reference_norm=norm,
        )
        for request, prompts, norm in zip(requests, prompt_sets, reference_norms, strict=True)
    ]


@dataclass
class ValueResult:
    delta: torch.Tensor
    losses: list[float]
    steps: int


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
    """
    results: list[ValueResult] = []
    for start in range(0, len(goals), chunk):
        results += _optimise_chunk(model, tokenizer, goals[start : start + chunk], module_name, objective)
    return results


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
    target = module(model, module_name)
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


def value_change(
    post: torch.nn.Module | None,
    values: torch.Tensor,
    wanted: torch.Tensor,
    iterations: int = 100,
    smallness: float = 1e-4,
) -> torch.Tensor:
    """Change of an MLP's output that moves the residual stream by ``wanted`` (both (n, d)).

    Without a post-MLP module (LLaMA, Qwen, GPT-2) the MLP output is added to the residual stream as
    is, so the change is ``wanted`` itself. With one (Gemma 2/3 normalise the MLP output before the
    add) it is found by L-BFGS from zero, minimising ||post(values + c) - post(values) - wanted||^2 /
    ||wanted||^2 + smallness * ||c||^2 / ||values||^2 per row. An RMS norm ignores the scale of its
    input, so without the second term any multiple of a solution would do and the optimiser may
    return a huge one, which the least-squares write would then force on every similar key.
    """
    if post is None:
        return wanted
    values, wanted = values.detach().to(MASTER_DTYPE), wanted.to(MASTER_DTYPE)
    with torch.no_grad():
        goal = post(values) + wanted
    wanted_scale = wanted.pow(2).sum(-1).clamp_min(1e-12)
    value_scale = values.pow(2).sum(-1).clamp_min(1e-12)
    change = torch.zeros_like(values, requires_grad=True)
    optimiser = torch.optim.LBFGS([change], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        miss = (post(values + change) - goal).pow(2).sum(-1) / wanted_scale
        loss = (miss + smallness * change.pow(2).sum(-1) / value_scale).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return change.detach()


def rank_one_update(
    weight: torch.Tensor,
    key: torch.Tensor,
    delta: torch.Tensor,
    direction: torch.Tensor | None = None,
    transposed: bool = False,
) -> None:
    """In place: W <- W + delta u^T / (u^T k), so that W'k = Wk + delta and W'x = Wx when u^T x = 0.

    ``direction`` is u = C^-1 k (None: u = k, i.e. C = I). ``transposed`` for (in, out) layouts. The
    update is computed in float64 on the weight's device and rounded once into the weight's dtype.
    """
    u = key if direction is None else direction
    u, key, delta = (t.to(weight.device, torch.float64) for t in (u, key, delta))
    scale = torch.dot(u, key)
    update = torch.outer(delta, u) / scale
    _write(weight, update.T if transposed else update)


@torch.no_grad()
def _write(weight: torch.Tensor, update: torch.Tensor) -> None:
    """W <- W + U with the sum taken in float64 and rounded once into the weight's dtype."""
    weight.copy_(weight.double() + update)


def least_squares_update(
    weight: torch.Tensor,
    keys: torch.Tensor,
    residuals: torch.Tensor,
    preservation: torch.Tensor,
    transposed: bool = False,
) -> torch.Tensor:
    """In place: W <- W + R K^T (P + K K^T)^-1, solved in float64; returns the update (d_out, d_in).

    ``keys`` K^T is (n, d_in), ``residuals`` R^T is (n, d_out): the change wanted at each key.
    ``preservation`` P = lambda * C weighs keeping W's answers on ordinary keys (MEMIT). The update
    minimises ||(W + U) K - (W K + R)||^2 + tr(U P U^T), i.e. satisfies U (P + K K^T) = R K^T.
    """
    k = keys.to(weight.device, torch.float64).T
    system = preservation.to(weight.device, torch.float64) + k @ k.T
    update = residuals.to(weight.device, torch.float64).T @ torch.linalg.solve(system, k).T
    _write(weight, update.T if transposed else update)
    return update


# ---------------------------------------------------------------- second moments C = E[k k^T]


@dataclass(frozen=True)
class SecondMomentSettings:
    """Where C = E[k k^T] comes from; inherited by the hparams of editors that use it."""

    second_moments: bool = False  # False: C = I
    second_moment_tokens: int = 20_000
    second_moment_corpus: tuple[str, ...] = ("zsre_train/train_en_10000.tsv", "zsre_train/train_zh_10000.tsv")
    second_moment_ridge: float = 1e-2  # added to C as ridge * mean(diag C) * I


def corpus_texts(files: Sequence[Path]) -> list[str]:
    """Lines of text from .tsv (columns joined by a space) or .txt files, in file order."""
    texts: list[str] = []
    for path in files:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            line = line.replace("\t", " ").strip()
            if line:
                texts.append(line)
    return texts


def moment_corpus(model, tokenizer, settings: SecondMomentSettings, context) -> tuple[list[str], str]:
    """The texts C is estimated from, and a label saying which: the configured files under the data
    dir, or (without them) text sampled from the model in the task's languages, cached."""
    files = (
        [Path(context.data_dir) / name for name in settings.second_moment_corpus] if context.data_dir else []
    )
    if files and all(f.is_file() for f in files):
        return corpus_texts(files), "files:" + ",".join(settings.second_moment_corpus)
    languages = context.languages or ("en",)
    tokens = settings.second_moment_tokens
    specs = [corpus_spec(language, len(languages), tokens, context.seed) for language in languages]
    shipped = all(shipped_samples(model, spec) is not None for spec in specs)
    log.warning(
        "no data dir with the second_moment_corpus files; second moments from text the model wrote (%s)%s",
        "/".join(languages),
        ", shipped with the model" if shipped else ", sampled once and cached",
    )
    texts = sampled_corpus(model, tokenizer, languages, tokens, context.seed, Path(context.cache_dir))
    return texts, ("model-samples(shipped):" if shipped else "model-samples:") + "/".join(languages)


def regularised_moments(
    model, tokenizer, module_names: Sequence[str], settings: SecondMomentSettings, context
) -> tuple[dict[str, torch.Tensor], str]:
    """C + ridge * mean(diag C) * I for each module (float64 on the module's device; identity when
    second moments are off), and the corpus label."""
    if not settings.second_moments:
        identity = {}
        for name in module_names:
            device = _weight(model, name).device
            identity[name] = torch.eye(_input_width(model, name), dtype=torch.float64, device=device)
        return identity, "none (C = I)"
    texts, label = moment_corpus(model, tokenizer, settings, context)
    moments = second_moments(
        model, tokenizer, module_names, texts, settings.second_moment_tokens, Path(context.cache_dir)
    )
    regularised = {}
    for name, moment in moments.items():
        moment = moment.to(_weight(model, name).device)
        ridge = settings.second_moment_ridge * moment.diagonal().mean()
        regularised[name] = moment + ridge * torch.eye(len(moment), dtype=moment.dtype, device=moment.device)
    return regularised, label


def _weight(model, module_name: str) -> torch.Tensor:
    return module(model, module_name).weight


def _input_width(model, module_name: str) -> int:
    weight = _weight(model, module_name)
    return weight.shape[0] if architecture(model).transposed else weight.shape[1]


def _second_moment_key(fingerprint: str, module_name: str, texts: Sequence[str], tokens: int, dtype) -> str:
    corpus = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    parts = {
        "model": fingerprint,
        "module": module_name,
        "corpus": corpus,
        "tokens": tokens,
        "dtype": str(dtype),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _load_verified(path: Path, expected_key: str) -> torch.Tensor | None:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        moment, key, checksum = saved["moment"], saved["key"], saved["checksum"]
    except Exception:  # noqa: BLE001 - a partial or corrupt file is rebuilt, never trusted
        log.warning("second-moment cache %s is unreadable; recomputing", path)
        return None
    # the sum's last bits depend on the thread count that reduces it: equal to 1e-9, not bit for bit
    if key != expected_key or not math.isclose(checksum, float(moment.sum()), rel_tol=1e-9):
        log.warning("second-moment cache %s does not match its key or checksum; recomputing", path)
        return None
    return moment


def second_moments(
    model,
    tokenizer,
    module_names: Sequence[str],
    texts: Sequence[str],
    tokens: int,
    cache: Path,
    batch_size: int = 64,
    max_length: int = 256,
) -> dict[str, torch.Tensor]:
    """E[k k^T] of each module's input over the first ``tokens`` tokens of ``texts``: products in
    float32, sums in float64, returned on the CPU and cached.

    One file per module, keyed by the model's fingerprint (content, dtype, device kind), module,
    corpus hash, token budget and dtype; a file that is unreadable or fails its checksum is
    recomputed. Modules missing from the cache are computed together in one streaming pass (batches
    of ``batch_size`` texts, each cut to ``max_length`` tokens) that stops at the deepest of them:
    memory is one d_ff x d_ff sum per module plus one batch of activations.
    """
    fingerprint = getattr(model, "harness_fingerprint", "unknown")
    found: dict[str, torch.Tensor] = {}
    missing: dict[str, tuple[str, Path]] = {}
    for name in module_names:
        key = _second_moment_key(fingerprint, name, texts, tokens, model.dtype)
        path = cache / "second_moments" / f"{key}.pt"
        if path.exists() and (moment := _load_verified(path, key)) is not None:
            found[name] = moment
        else:
            missing[name] = (key, path)
    if missing:
        sums, count = _stream_moments(model, tokenizer, list(missing), texts, tokens, batch_size, max_length)
        for name, (key, path) in missing.items():
            found[name] = (sums[name] / count).cpu()
            payload = {
                "moment": found[name],
                "key": key,
                "checksum": float(found[name].sum()),
                "tokens": count,
            }
            save_atomic(payload, path)
    return {name: found[name] for name in module_names}


@torch.no_grad()
def _stream_moments(model, tokenizer, names, texts, tokens, batch_size, max_length):
    targets = [module(model, name) for name in names]
    sums: dict[str, torch.Tensor] = {}
    count = 0
    label = names[0] if len(names) == 1 else f"{len(names)} modules"
    progress = tqdm(total=tokens, desc=f"second moments ({label})", unit="tok", leave=False)
    for start in range(0, len(texts), batch_size):
        if count >= tokens:
            break
        batch = [prompt_ids(tokenizer, t)[:max_length] for t in texts[start : start + batch_size]]
        ids, mask = pad_batch(batch, tokenizer.pad_token_id, device_of(model))
        seen = run_until(model, ids, mask, targets, "input")
        take = None
        for name, inputs in zip(names, seen, strict=True):
            keys = inputs[mask.to(inputs.device).bool()][: tokens - count].to(MASTER_DTYPE)
            take = len(keys)
            product = (keys.T @ keys).double()
            sums[name] = sums[name] + product if name in sums else product
        count += take
        progress.update(take)
    progress.close()
    if not count:
        raise ValueError("second moments: the corpus is empty")
    return sums, count
