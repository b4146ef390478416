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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from harness.answers import output_logits, pad_batch, prompt_ids, target_ids

log = logging.getLogger(__name__)

# Prompts whose next-token distribution at the subject must stay put (ROME's "essence" drift term).
ESSENCE_PROMPTS = {"en": "{} is a", "zh": "{}是"}


class SubjectNotFound(ValueError):
    """The subject's text does not occur in the prompt, so its tokens cannot be located."""


def subject_last_token(tokenizer, text: str, subject: str) -> int:
    """Index (in ``tokenizer(text).input_ids``) of the last token overlapping the subject's text.

    The subject is matched exactly, then case-insensitively; otherwise SubjectNotFound.
    """
    start = text.find(subject)
    if start < 0:
        start = text.casefold().find(subject.casefold())
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
def capture_input(target: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the first positional input of ``target`` on every forward call."""
    seen: list[torch.Tensor] = []
    handle = target.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        yield seen
    finally:
        handle.remove()


@contextlib.contextmanager
def add_to_output(target: torch.nn.Module, rows: torch.Tensor, cols: torch.Tensor, delta: torch.Tensor):
    """Add ``delta`` (one vector, or one per row) to ``target``'s output at (row, position) pairs."""

    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[rows, cols] = hidden[rows, cols] + delta
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = target.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def keys_at(
    model, tokenizer, texts: Sequence[str], positions: Sequence[int], module_name: str, batch_size: int = 32
) -> torch.Tensor:
    """Input of ``module_name`` at ``positions[i]`` of ``texts[i]``: (n, d_in)."""
    found = []
    target = module(model, module_name)
    for start in range(0, len(texts), batch_size):
        chunk = list(range(start, min(start + batch_size, len(texts))))
        ids, mask = pad_batch([prompt_ids(tokenizer, texts[i]) for i in chunk], tokenizer.pad_token_id)
        with capture_input(target) as seen:
            model.base_model(input_ids=ids, attention_mask=mask)
        rows = torch.arange(len(chunk))
        found.append(seen[0][rows, torch.tensor([positions[i] for i in chunk])])
    return torch.cat(found)


STARTERS = {"en": ["The", "Therefore", "Because", "I", "You"], "zh": ["这", "因此", "因为", "我", "你"]}


@torch.no_grad()
def sample_texts(
    model,
    tokenizer,
    starters: Sequence[str],
    length: int,
    count: int,
    top_k: int,
    seed: int,
    batch_size: int = 32,
) -> list[str]:
    """``count`` continuations of ``length`` tokens sampled (top-k) from the model, cycling ``starters``."""
    torch.manual_seed(seed)
    texts: list[str] = []
    starts = range(0, count, batch_size)
    for start in tqdm(starts, desc="sampling text", unit="batch", leave=False, disable=len(starts) < 2):
        prompts = [
            prompt_ids(tokenizer, starters[i % len(starters)])
            for i in range(start, min(start + batch_size, count))
        ]
        ids, mask = pad_batch(prompts, tokenizer.pad_token_id, left=True)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            top_k=top_k,
            top_p=1.0,
            temperature=1.0,
            max_new_tokens=length,
            min_new_tokens=length,
            pad_token_id=tokenizer.pad_token_id,
        )
        texts += [tokenizer.decode(row, skip_special_tokens=True).replace("\n", " ").strip() for row in out]
    return texts


def _cached_json(path: Path, compute):
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    partial.rename(path)
    return value


def _cache_key(model, *parts) -> str:
    fingerprint = getattr(model, "harness_fingerprint", "unknown")
    return hashlib.sha256(json.dumps([fingerprint, *parts], ensure_ascii=False).encode()).hexdigest()[:24]


def context_prefixes(
    model,
    tokenizer,
    language: str,
    seed: int,
    cache: Path,
    lengths: Sequence[tuple[int, int]] = ((5, 10), (10, 10)),
) -> list[str]:
    """Short texts sampled from the model itself, used to average keys and values over contexts.

    ``lengths`` lists (tokens, count) pairs. Cached per model fingerprint, language and seed. The
    empty prefix (the plain prompt) always comes first.
    """
    starters = STARTERS.get(language, STARTERS["en"])

    def compute() -> list[str]:
        prefixes = [""]
        for length, count in lengths:
            prefixes += [t + ". " for t in sample_texts(model, tokenizer, starters, length, count, 5, seed)]
        return prefixes

    key = _cache_key(model, "prefixes-v2", language, seed, [list(pair) for pair in lengths])
    return _cached_json(cache / "context_prefixes" / f"{key}.json", compute)


def sampled_corpus(
    model, tokenizer, languages: Sequence[str], tokens: int, seed: int, cache: Path, length: int = 128
) -> list[str]:
    """Text sampled from the model in each language, for second moments when no corpus is on disk."""
    per_language = -(-tokens // (length * max(len(languages), 1)))

    def compute() -> list[str]:
        texts: list[str] = []
        for language in languages:
            starters = STARTERS.get(language, STARTERS["en"])
            texts += sample_texts(model, tokenizer, starters, length, per_language, 40, seed)
        return texts

    key = _cache_key(model, "corpus-v1", list(languages), tokens, seed, length)
    return _cached_json(cache / "sampled_corpus" / f"{key}.json", compute)


@dataclass(frozen=True)
class ValueObjective:
    """Hyper-parameters of the value optimisation shared by ROME and MEMIT."""

    steps: int = 25
    lr: float = 0.5
    weight_decay: float = 1e-3
    kl_factor: float = 0.0625
    clamp_norm_factor: float = 4.0
    stop_loss: float = 5e-2


@dataclass
class ValueResult:
    delta: torch.Tensor
    losses: list[float]
    steps: int


def optimise_value(
    model,
    tokenizer,
    *,
    prefixed_prompts: Sequence[str],
    subject: str,
    target: str,
    essence_prompt: str,
    module_name: str,
    reference_norm: float,
    objective: ValueObjective,
    seed: int = 0,
) -> ValueResult:
    """Find delta, added to ``module_name``'s output at the last subject token, that makes the model
    emit ``target`` after every prefixed prompt, with a KL term keeping "<subject> is a" in place.

    loss = mean NLL(target) + kl_factor * KL(essence with delta || without) + weight_decay *
    ||delta|| / reference_norm^2; after each Adam step ||delta|| is clamped to
    clamp_norm_factor * reference_norm.
    """
    torch.manual_seed(seed)
    goal = target_ids(tokenizer, target)
    texts = list(prefixed_prompts) + [essence_prompt]
    encoded = [prompt_ids(tokenizer, t) for t in texts]
    fed = [ids + goal[:-1] for ids in encoded[:-1]] + [encoded[-1]]
    ids, mask = pad_batch(fed, tokenizer.pad_token_id)
    subject_cols = torch.tensor([subject_last_token(tokenizer, t, subject) for t in texts])
    rows = torch.arange(len(texts))
    n_prompts = len(prefixed_prompts)
    goal_rows = torch.arange(n_prompts).repeat_interleave(len(goal))
    goal_cols = torch.cat([torch.arange(len(e) - 1, len(e) - 1 + len(goal)) for e in encoded[:-1]])
    goal_tokens = torch.tensor(goal).repeat(n_prompts)
    essence_row, essence_col = n_prompts, len(encoded[-1]) - 1
    target_module = module(model, module_name)

    with torch.no_grad():
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        essence_before = output_logits(model, hidden[essence_row, essence_col]).log_softmax(-1)

    delta = torch.zeros(hidden.shape[-1], requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=objective.lr)
    max_norm = objective.clamp_norm_factor * reference_norm
    losses: list[float] = []
    step = 0
    for step in range(1, objective.steps + 1):  # noqa: B007 - the count is returned
        with add_to_output(target_module, rows, subject_cols, delta):
            hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        picked = torch.cat([hidden[goal_rows, goal_cols], hidden[essence_row, essence_col][None]])
        log_probs = output_logits(model, picked).log_softmax(-1)
        token_nll = -log_probs[:-1].gather(-1, goal_tokens[:, None]).squeeze(-1)
        nll = token_nll.view(n_prompts, len(goal)).mean()
        kl = torch.nn.functional.kl_div(essence_before, log_probs[-1], log_target=True, reduction="sum")
        loss = nll + objective.kl_factor * kl + objective.weight_decay * delta.norm() / reference_norm**2
        losses.append(loss.item())
        if nll.item() < objective.stop_loss:
            break
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            norm = delta.norm()
            if norm > max_norm:
                delta.mul_(max_norm / norm)
    return ValueResult(delta=delta.detach(), losses=losses, steps=step)


def rank_one_update(
    weight: torch.Tensor,
    key: torch.Tensor,
    delta: torch.Tensor,
    direction: torch.Tensor | None = None,
    transposed: bool = False,
) -> None:
    """In place: W <- W + delta u^T / (u^T k), so that W'k = Wk + delta and W'x = Wx when u^T x = 0.

    ``direction`` is u = C^-1 k (None: u = k, i.e. C = I). ``transposed`` for (in, out) layouts.
    """
    u = key if direction is None else direction
    scale = torch.dot(u.double(), key.double())
    update = torch.outer(delta.double(), u.double()) / scale
    with torch.no_grad():
        weight.add_((update.T if transposed else update).to(weight.dtype))


# ---------------------------------------------------------------- second moments C = E[k k^T]


def corpus_texts(files: Sequence[Path]) -> list[str]:
    """Lines of text from .tsv (columns joined by a space) or .txt files, in file order."""
    texts: list[str] = []
    for path in files:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            line = line.replace("\t", " ").strip()
            if line:
                texts.append(line)
    return texts


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
        saved = torch.load(path, weights_only=True)
        moment, key, checksum = saved["moment"], saved["key"], saved["checksum"]
    except Exception:  # noqa: BLE001 - a partial or corrupt file is rebuilt, never trusted
        log.warning("second-moment cache %s is unreadable; recomputing", path)
        return None
    if key != expected_key or checksum != float(moment.sum()):
        log.warning("second-moment cache %s does not match its key or checksum; recomputing", path)
        return None
    return moment


class _StopForward(Exception):
    """Raised by a hook once the layer of interest has run: the rest of the model is not needed."""


@contextlib.contextmanager
def inputs_then_stop(target: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Capture ``target``'s input and abort the forward pass right there (catch _StopForward)."""
    seen: list[torch.Tensor] = []

    def hook(_module, args):
        seen.append(args[0].detach())
        raise _StopForward

    handle = target.register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def second_moment(
    model, tokenizer, module_name: str, texts: Sequence[str], tokens: int, cache: Path, batch_size: int = 64
) -> torch.Tensor:
    """E[k k^T] of ``module_name``'s input over up to ``tokens`` tokens of ``texts`` (float64), cached.

    The cache key covers the model's content fingerprint, module, corpus hash, token budget and
    dtype; a file that fails its checksum is recomputed. Each batch stops at the module.
    """
    fingerprint = getattr(model, "harness_fingerprint", "unknown")
    key = _second_moment_key(fingerprint, module_name, texts, tokens, model.dtype)
    path = cache / "second_moments" / f"{key}.pt"
    if path.exists() and (moment := _load_verified(path, key)) is not None:
        return moment
    target = module(model, module_name)
    total, count = None, 0
    progress = tqdm(total=tokens, desc=f"second moment {module_name}", unit="tok", leave=False)
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            if count >= tokens:
                break
            batch = [prompt_ids(tokenizer, t) for t in texts[start : start + batch_size]]
            ids, mask = pad_batch(batch, tokenizer.pad_token_id)
            with contextlib.suppress(_StopForward), inputs_then_stop(target) as seen:
                model.base_model(input_ids=ids, attention_mask=mask)
            keys = seen[0][mask.bool()][: tokens - count]
            product = (keys.T @ keys).double()
            total = product if total is None else total + product
            count += len(keys)
            progress.update(len(keys))
    progress.close()
    if total is None:
        raise ValueError("second moment: the corpus is empty")
    moment = total / count
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"moment": moment, "key": key, "checksum": float(moment.sum()), "tokens": count}, partial)
    partial.rename(path)
    return moment
