"""Read answers off a model, batched: teacher-forced (paper-compatible) or greedy generation.

Only the positions that are scored go through the output head: on a 262k-vocabulary model the head
is most of the cost, so hidden states are gathered first and projected as one matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

ANSWER_MODES = ("teacher_forced", "generate")


@dataclass(frozen=True)
class Answer:
    text: str
    token_ids: tuple[int, ...]


def target_ids(tokenizer: Any, target: str) -> list[int]:
    """The expected answer's tokens as fed after a prompt: a leading space, no special tokens."""
    return tokenizer(" " + target, add_special_tokens=False).input_ids


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    return tokenizer(prompt).input_ids


def output_logits(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head (with the final logit soft-cap some families use) applied to selected hidden states."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def pad_batch(
    sequences: list[list[int]], pad_id: int, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists into (ids, attention_mask), padding right (or left for generation)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def final_hidden(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states (after the final norm) without computing the full-vocabulary logits."""
    return model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state


def scored_positions(
    prompt_lengths: list[int], target_lengths: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position) pairs whose outputs predict the target tokens, for right-padded rows."""
    rows, cols = [], []
    for row, (p, t) in enumerate(zip(prompt_lengths, target_lengths)):
        rows += [row] * t
        cols += range(p - 1, p - 1 + t)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)


def _batches(order: list[int], size: int):
    for start in range(0, len(order), size):
        yield order[start : start + size]


@torch.no_grad()
def teacher_forced(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 16) -> list[Answer]:
    """For each (prompt, target): feed prompt + " " + target once; the argmax at each target position.

    The decoded argmax tokens are the answer, as in the Bi-ZsRE evaluation script.
    """
    encoded = [(prompt_ids(tokenizer, p), target_ids(tokenizer, t)) for p, t in pairs]
    order = sorted(range(len(pairs)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    answers: list[Answer | None] = [None] * len(pairs)
    for chunk in _batches(order, batch_size):
        ids, mask = pad_batch([encoded[i][0] + encoded[i][1] for i in chunk], tokenizer.pad_token_id)
        rows, cols = scored_positions(
            [len(encoded[i][0]) for i in chunk], [len(encoded[i][1]) for i in chunk]
        )
        hidden = final_hidden(model, ids, mask)
        predicted = output_logits(model, hidden[rows, cols]).argmax(-1).tolist()
        start = 0
        for i in chunk:
            tokens = tuple(predicted[start : start + len(encoded[i][1])])
            start += len(tokens)
            answers[i] = Answer(tokenizer.decode(tokens, skip_special_tokens=True), tokens)
    return answers  # type: ignore[return-value]


@torch.no_grad()
def generated(
    model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 16, extra_tokens: int = 3
) -> list[Answer]:
    """Greedy continuation of each prompt, up to len(target) + extra_tokens, cut at newline or EOS."""
    encoded = [(prompt_ids(tokenizer, p), len(target_ids(tokenizer, t))) for p, t in pairs]
    order = sorted(range(len(pairs)), key=lambda i: len(encoded[i][0]))
    answers: list[Answer | None] = [None] * len(pairs)
    for chunk in _batches(order, batch_size):
        ids, mask = pad_batch([encoded[i][0] for i in chunk], tokenizer.pad_token_id, left=True)
        budget = max(encoded[i][1] for i in chunk) + extra_tokens
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=budget,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row, i in enumerate(chunk):
            tokens = out[row, ids.shape[1] : ids.shape[1] + encoded[i][1] + extra_tokens].tolist()
            answers[i] = _cut_at_line_end(tokenizer, tokens)
    return answers  # type: ignore[return-value]


def _cut_at_line_end(tokenizer, tokens: list[int]) -> Answer:
    """Keep what comes before EOS and the first newline; ids end with the last whole token kept."""
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    if "\n" not in text:
        return Answer(text, tuple(tokens))
    kept = next(k for k in range(len(tokens) + 1) if "\n" in tokenizer.decode(tokens[: k + 1]))
    return Answer(text.split("\n")[0], tuple(tokens[:kept]))


def read_answers(model, tokenizer, pairs: list[tuple[str, str]], mode: str, batch_size: int) -> list[Answer]:
    if mode == "teacher_forced":
        return teacher_forced(model, tokenizer, pairs, batch_size)
    if mode == "generate":
        return generated(model, tokenizer, pairs, batch_size)
    raise ValueError(f"answer_mode must be one of {ANSWER_MODES}, got {mode!r}")
