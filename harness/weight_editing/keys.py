"""Where a fact lives: the subject's last token, the MLP key there, averaged over context prefixes.

At layer L the MLP's output matrix W maps a key k (its input, d_ff) to a value v (its output, d).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.activations import run_until
from harness.answers import at_positions, pad_batch, prompt_ids
from harness.api import EditRequest
from harness.model_text import context_prefixes
from harness.runtime import MASTER_DTYPE, device_of

log = logging.getLogger(__name__)


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
    target = model.get_submodule(module_name)
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
