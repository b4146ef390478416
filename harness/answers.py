"""Read answers off a model, batched: teacher-forced (paper-compatible) or greedy generation.

Only the positions that are scored go through the output head: on a 262k-vocabulary model the head
is most of the cost, so hidden states are gathered first and projected as one matrix product.
Prompts that all start with one long shared prefix (in-context editing) can have the prefix encoded
once (``SharedPrefix``) and only their own tokens run per batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from harness.runtime import device_of

if TYPE_CHECKING:
    from harness.activations import FrozenPrefix

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
    sequences: list[list[int]], pad_id: int, device: torch.device | str, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists into (ids, attention_mask) on ``device``, padding right (or left for
    generation). Built as lists and moved once: one host-to-device copy per batch."""
    width = max(len(s) for s in sequences)
    ids, mask = [], []
    for seq in sequences:
        pad = [pad_id] * (width - len(seq))
        ids.append(pad + list(seq) if left else list(seq) + pad)
        ones, zeros = [1] * len(seq), [0] * (width - len(seq))
        mask.append(zeros + ones if left else ones + zeros)
    return (
        torch.tensor(ids, dtype=torch.long, device=device),
        torch.tensor(mask, dtype=torch.long, device=device),
    )


@dataclass(frozen=True)
class SharedPrefix:
    """Token ids that every prompt of a call starts with and, once encoded, the model's key/value
    states for them (a transformers cache of batch size 1); without states the ids are fed whole."""

    ids: tuple[int, ...]
    states: Any = None

    @classmethod
    @torch.no_grad()
    def encode(cls, model: torch.nn.Module, ids: list[int]) -> SharedPrefix:
        """Run the prefix through the model once and keep its key/value states."""
        out = model.base_model(input_ids=torch.tensor([ids], device=device_of(model)), use_cache=True)
        return cls(tuple(ids), out.past_key_values)

    def states_for(self, batch: int) -> Any:
        """A fresh copy of the states for ``batch`` rows (the model appends to what it is given)."""
        states = copy.deepcopy(self.states)
        if batch > 1:
            states.batch_repeat_interleave(batch)
        return states


def final_hidden(
    model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, prefix: SharedPrefix | None = None
) -> torch.Tensor:
    """Last hidden states (after the final norm) without computing the full-vocabulary logits.

    With an encoded ``prefix``, ``ids`` continue it: every row attends to all prefix positions.
    """
    if prefix is None:
        return model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    seen = torch.ones((len(ids), len(prefix.ids)), dtype=mask.dtype, device=mask.device)
    return model.base_model(
        input_ids=ids,
        attention_mask=torch.cat([seen, mask], dim=1),
        past_key_values=prefix.states_for(len(ids)),
        use_cache=True,
    ).last_hidden_state


def scored_positions(
    prompt_lengths: list[int], target_lengths: list[int], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position) pairs whose outputs predict the target tokens, for right-padded rows."""
    rows, cols = [], []
    for row, (p, t) in enumerate(zip(prompt_lengths, target_lengths)):
        rows += [row] * t
        cols += range(p - 1, p - 1 + t)
    return (
        torch.tensor(rows, dtype=torch.long, device=device),
        torch.tensor(cols, dtype=torch.long, device=device),
    )


def at_positions(hidden: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``hidden[rows, cols]`` wherever ``hidden`` lives (the last layer's device under a device map)."""
    return hidden[rows.to(hidden.device), cols.to(hidden.device)]


@dataclass(frozen=True)
class TargetBatch:
    """Padded inputs and the (row, position) pairs whose outputs should predict ``targets``: the unit
    of every teacher-forced training loss (fine-tuning, MEND's edit gradient, SERAC's counterfactual)."""

    ids: torch.Tensor
    mask: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    targets: torch.Tensor
    count: int  # pairs (rows of the batch)

    def sequences(self) -> list[list[int]]:
        """Each row's tokens without its padding."""
        return [row[: int(m.sum())].tolist() for row, m in zip(self.ids, self.mask, strict=True)]

    @classmethod
    def of(cls, tokenizer: Any, pairs: list[tuple[str, str]], device: torch.device | str) -> TargetBatch:
        """``prompt + " " + target`` per pair, each target token scored after the token before it."""
        encoded = [(prompt_ids(tokenizer, p), target_ids(tokenizer, t)) for p, t in pairs]
        ids, mask = pad_batch([p + t for p, t in encoded], tokenizer.pad_token_id, device)
        rows, cols = scored_positions([len(p) for p, _ in encoded], [len(t) for _, t in encoded], device)
        targets = torch.tensor([tok for _, t in encoded for tok in t], dtype=torch.long, device=device)
        return cls(ids, mask, rows, cols, targets, len(pairs))

    def logits(self, model: torch.nn.Module, frozen: FrozenPrefix | None = None) -> torch.Tensor:
        """Float32 logits at the scored positions, (target tokens, vocabulary). With ``frozen``
        (encoded from these rows, anchored at column 0) the layers below its layer are not run."""
        if frozen is None:
            every = final_hidden(model, self.ids, self.mask)
        else:
            every = frozen.final_hidden(model, torch.arange(len(self.ids), device=self.ids.device))
        return output_logits(model, at_positions(every, self.rows, self.cols)).float()

    def nll_per_pair(self, model: torch.nn.Module, frozen: FrozenPrefix | None = None) -> torch.Tensor:
        """Mean NLL of each pair's target tokens, (count,), in float32."""
        logits = self.logits(model, frozen)
        rows = self.rows.to(logits.device)
        nll = torch.nn.functional.cross_entropy(logits, self.targets.to(logits.device), reduction="none")
        counts = torch.bincount(rows, minlength=self.count).float()
        return torch.zeros(self.count, device=logits.device).index_add(0, rows, nll) / counts


def _batches(order: list[int], size: int):
    for start in range(0, len(order), size):
        yield order[start : start + size]


Encoded = list[tuple[list[int], list[int]]]  # per prompt: (prompt ids, expected-answer ids)


def teacher_forced(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 16) -> list[Answer]:
    """For each (prompt, target): feed prompt + " " + target once; the argmax at each target position.

    The decoded argmax tokens are the answer, as in the Bi-ZsRE evaluation script.
    """
    encoded = [(prompt_ids(tokenizer, p), target_ids(tokenizer, t)) for p, t in pairs]
    return _teacher_forced_ids(model, tokenizer, encoded, batch_size)


@torch.no_grad()
def _teacher_forced_ids(
    model, tokenizer, encoded: Encoded, batch_size: int, prefix: SharedPrefix | None = None
) -> list[Answer]:
    """Teacher-forced answers for token ids; with an encoded ``prefix`` the ids continue it."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    answers: list[Answer | None] = [None] * len(encoded)
    device = device_of(model)
    for chunk in _batches(order, batch_size):
        ids, mask = pad_batch([encoded[i][0] + encoded[i][1] for i in chunk], tokenizer.pad_token_id, device)
        rows, cols = scored_positions(
            [len(encoded[i][0]) for i in chunk], [len(encoded[i][1]) for i in chunk], device
        )
        hidden = final_hidden(model, ids, mask, prefix)
        predicted = output_logits(model, at_positions(hidden, rows, cols)).argmax(-1).tolist()
        start = 0
        for i in chunk:
            tokens = tuple(predicted[start : start + len(encoded[i][1])])
            start += len(tokens)
            answers[i] = Answer(tokenizer.decode(tokens, skip_special_tokens=True), tokens)
    return answers  # type: ignore[return-value]


def generated(
    model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 16, extra_tokens: int = 3
) -> list[Answer]:
    """Greedy continuation of each prompt, up to len(target) + extra_tokens, cut at newline or EOS."""
    budgets = [len(target_ids(tokenizer, t)) + extra_tokens for _, t in pairs]
    return _generated_ids(model, tokenizer, [prompt_ids(tokenizer, p) for p, _ in pairs], budgets, batch_size)


@torch.no_grad()
def _generated_ids(
    model, tokenizer, prompts: list[list[int]], budgets: list[int], batch_size: int
) -> list[Answer]:
    """Greedy continuations of token-id prompts, each up to its budget of new tokens."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[Answer | None] = [None] * len(prompts)
    for chunk in _batches(order, batch_size):
        ids, mask = pad_batch(
            [prompts[i] for i in chunk], tokenizer.pad_token_id, device_of(model), left=True
        )
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max(budgets[i] for i in chunk),
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row, i in enumerate(chunk):
            tokens = out[row, ids.shape[1] : ids.shape[1] + budgets[i]].tolist()
            answers[i] = _cut_at_line_end(tokenizer, tokens)
    return answers  # type: ignore[return-value]


@torch.no_grad()
def greedy_after_prefix(
    model, tokenizer, prefix: SharedPrefix, prompt: list[int], budget: int, stops: tuple[str, ...]
) -> list[int]:
    """Greedy continuation of ``prompt`` after an encoded prefix, one token at a time (batch 1).

    Stops at EOS, after ``budget`` tokens, or once the decoded text contains one of ``stops``; the
    tokens are returned uncut (EOS included), the caller cuts.
    """
    states, feed, seen = prefix.states_for(1), prompt, len(prefix.ids)
    tokens: list[int] = []
    device = device_of(model)
    while len(tokens) < budget:
        seen += len(feed)
        hidden = model.base_model(
            input_ids=torch.tensor([feed], device=device),
            attention_mask=torch.ones((1, seen), dtype=torch.long, device=device),
            past_key_values=states,
            use_cache=True,
        ).last_hidden_state
        token = int(output_logits(model, hidden[0, -1]).argmax())
        tokens.append(token)
        if token == tokenizer.eos_token_id or any(stop in tokenizer.decode(tokens) for stop in stops):
            break
        feed = [token]
    return tokens


def answers_after_prefix(
    model,
    tokenizer,
    prefix: SharedPrefix,
    pairs: list[tuple[str, str]],
    mode: str,
    batch_size: int,
    extra_tokens: int = 3,
) -> list[Answer]:
    """Answers to (prompt, target) pairs whose prompts all follow ``prefix``.

    The model reads ``prefix.ids + tokenizer(prompt)`` (the prompt without special tokens) whether
    or not the prefix is encoded, so both ways see the same ids; with encoded states only the
    prompt and answer tokens run per batch.
    """
    _check_mode(mode)
    prompts = [tokenizer(p, add_special_tokens=False).input_ids for p, _ in pairs]
    if not all(prompts):
        raise ValueError("every prompt after a shared prefix needs at least one token")
    cached = prefix.states is not None
    if not cached:
        prompts = [list(prefix.ids) + p for p in prompts]
    if mode == "teacher_forced":
        encoded = [(p, target_ids(tokenizer, t)) for p, (_, t) in zip(prompts, pairs)]
        return _teacher_forced_ids(model, tokenizer, encoded, batch_size, prefix if cached else None)
    budgets = [len(target_ids(tokenizer, t)) + extra_tokens for _, t in pairs]
    if cached:
        return [
            _cut_at_line_end(tokenizer, greedy_after_prefix(model, tokenizer, prefix, p, b, ("\n",)))
            for p, b in zip(prompts, budgets)
        ]
    return _generated_ids(model, tokenizer, prompts, budgets, batch_size)


def _cut_at_line_end(tokenizer, tokens: list[int]) -> Answer:
    """Keep what comes before EOS and the first newline; ids end with the last whole token kept."""
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    if "\n" not in text:
        return Answer(text, tuple(tokens))
    kept = next(k for k in range(len(tokens) + 1) if "\n" in tokenizer.decode(tokens[: k + 1]))
    return Answer(text.split("\n")[0], tuple(tokens[:kept]))


def _check_mode(mode: str) -> None:
    if mode not in ANSWER_MODES:
        raise ValueError(f"answer_mode must be one of {ANSWER_MODES}, got {mode!r}")


def read_answers(model, tokenizer, pairs: list[tuple[str, str]], mode: str, batch_size: int) -> list[Answer]:
    _check_mode(mode)
    if mode == "teacher_forced":
        return teacher_forced(model, tokenizer, pairs, batch_size)
    return generated(model, tokenizer, pairs, batch_size)
