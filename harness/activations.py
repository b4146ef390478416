"""Forward passes that record a module's activations, stop once they are seen, or resume from states
that an optimisation cannot change.

An editor that adds a trainable change at layer L, column a of a prompt can only move the hidden
states at layers >= L and columns >= a. ``FrozenPrefix`` computes the rest once (the key/value states
of every column before a, and the hidden states entering layer L) so that each optimisation step runs
only the layers from L up on the columns from a on. Rows are aligned so that every row's anchor column
falls on the same batch column (left padding), with position ids that keep each token's original
position: the step computes what a full forward pass would, on less input.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from harness.models import architecture


class _StopForward(Exception):
    """Raised by a hook once every module of interest has run: the rest of the model is not needed."""


@contextlib.contextmanager
def _tap_then_stop(targets: Sequence[torch.nn.Module], side: str) -> Iterator[dict[int, torch.Tensor]]:
    """Record each target's input (``side="input"``) or output by its index in ``targets``, then
    abort the forward pass once all of them have run."""
    seen: dict[int, torch.Tensor] = {}

    def record(index: int, value: torch.Tensor) -> None:
        seen[index] = value.detach()
        if len(seen) == len(targets):
            raise _StopForward

    def tap(index: int, target: torch.nn.Module):
        if side == "input":
            return target.register_forward_pre_hook(
                lambda _m, args, kwargs: record(index, args[0] if args else kwargs["hidden_states"]),
                with_kwargs=True,
            )
        return target.register_forward_hook(
            lambda _m, _a, out: record(index, out[0] if isinstance(out, tuple) else out)
        )

    handles = [tap(i, target) for i, target in enumerate(targets)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def run_until(
    model, ids: torch.Tensor, mask: torch.Tensor, modules: Sequence[torch.nn.Module], side: str, **inputs: Any
) -> list[torch.Tensor]:
    """Forward pass that stops once all ``modules`` have run; their inputs or outputs, in that order.
    ``inputs`` go to the base model as well (position ids, a key/value cache)."""
    with contextlib.suppress(_StopForward), _tap_then_stop(modules, side) as seen:
        model.base_model(input_ids=ids, attention_mask=mask, **inputs)
    return [seen[i] for i in range(len(modules))]


def input_and_output(
    model, ids: torch.Tensor, mask: torch.Tensor, module: torch.nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """``module``'s input and its own output on ``ids`` (read before any other hook on it may replace
    the output), without running the layers above it."""
    seen: dict[str, torch.Tensor] = {}
    handle = module.register_forward_hook(
        lambda _m, args, out: seen.update(input=args[0].detach(), output=out.detach()), prepend=True
    )
    try:
        with torch.no_grad():
            run_until(model, ids, mask, [module], "output")
    finally:
        handle.remove()
    return seen["input"], seen["output"]


def decoder_layers(model) -> torch.nn.ModuleList:
    return model.get_submodule(architecture(model).layers)


def layer_of(model, target: torch.nn.Module) -> int:
    """Index of the decoder layer that contains ``target``."""
    for index, layer in enumerate(decoder_layers(model)):
        if any(m is target for m in layer.modules()):
            return index
    raise ValueError(f"{type(target).__name__} is not inside a decoder layer of this model")


@contextlib.contextmanager
def _resume_at(model, layer: int, layer_input: torch.Tensor):
    """Layers below ``layer`` pass their input through untouched, and ``layer`` receives
    ``layer_input`` instead of what reaches it."""
    layers = decoder_layers(model)

    def substitute(_module, args, kwargs):
        if args:
            return (layer_input, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": layer_input}

    skipped = {below: below.__dict__.get("forward") for below in layers[:layer]}
    for below in skipped:
        below.forward = _pass_through  # an instance attribute wins over the class's forward
    handle = layers[layer].register_forward_pre_hook(substitute, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        for below, own in skipped.items():  # a wrapper set by accelerate's dispatch comes back
            if own is None:
                del below.forward
            else:
                below.forward = own


def _pass_through(hidden_states: torch.Tensor, *_args: Any, **_kwargs: Any) -> torch.Tensor:
    return hidden_states


@dataclass
class FrozenPrefix:
    """Rows split at their anchor columns: what comes before is encoded once, and each step runs the
    columns from the anchor on ("live" columns), through the layers from ``layer`` up only.

    Live column 0 of every row is its anchor; live column j is original column ``anchors[i] + j``.
    """

    layer: int
    anchors: torch.Tensor  # (rows,) original column of each row's anchor
    ids: torch.Tensor  # (rows, live) live token ids, right-padded
    mask: torch.Tensor  # (rows, prefix + live) which prefix and live columns hold tokens
    positions: torch.Tensor  # (rows, live) each live token's position in its original row
    states: Any  # key/value cache of the prefix columns (None when no row has a prefix)
    layer_input: torch.Tensor  # (rows, live, d) hidden states entering ``layer`` at the live columns

    @classmethod
    @torch.no_grad()
    def encode(
        cls, model, sequences: Sequence[Sequence[int]], anchors: Sequence[int], layer: int, pad_id: int
    ) -> FrozenPrefix:
        device = model.get_input_embeddings().weight.device
        width = max(anchors)
        live = max(len(seq) - a for seq, a in zip(sequences, anchors, strict=True))
        prefix_ids, prefix_mask, prefix_pos, ids, live_mask, positions = [], [], [], [], [], []
        for seq, anchor in zip(sequences, anchors, strict=True):
            if not 0 <= anchor < len(seq):
                raise ValueError(f"anchor column {anchor} is outside a row of {len(seq)} tokens")
            pad, tail = width - anchor, len(seq) - anchor
            prefix_ids.append([pad_id] * pad + list(seq[:anchor]))
            prefix_mask.append([0] * pad + [1] * anchor)
            prefix_pos.append([0] * pad + list(range(anchor)))
            ids.append(list(seq[anchor:]) + [pad_id] * (live - tail))
            live_mask.append([1] * tail + [0] * (live - tail))
            positions.append(list(range(anchor, anchor + live)))

        def tensor(rows):
            return torch.tensor(rows, dtype=torch.long, device=device)

        states = None
        if width:
            states = model.base_model(
                input_ids=tensor(prefix_ids),
                attention_mask=tensor(prefix_mask),
                position_ids=tensor(prefix_pos),
                use_cache=True,
            ).past_key_values
        live_ids, positions_t = tensor(ids), tensor(positions)
        full_mask = tensor([p + m for p, m in zip(prefix_mask, live_mask, strict=True)])
        entry = decoder_layers(model)[layer]
        (layer_input,) = run_until(
            model, live_ids, full_mask, [entry], "input", **_cache_inputs(states, positions_t)
        )
        return cls(layer, tensor(list(anchors)), live_ids, full_mask, positions_t, states, layer_input)

    def final_hidden(self, model, rows: torch.Tensor) -> torch.Tensor:
        """Last hidden states (after the final norm) at the live columns of ``rows``: (rows, live, d).
        Hooks on modules of layers >= ``layer`` act as in a full pass (at live columns)."""
        rows = rows.to(self.ids.device)
        with _resume_at(model, self.layer, self.layer_input[rows.to(self.layer_input.device)]):
            return model.base_model(
                input_ids=self.ids[rows],
                attention_mask=self.mask[rows],
                **_cache_inputs(self.states, self.positions[rows], rows),
            ).last_hidden_state


def _cache_inputs(states: Any, positions: torch.Tensor, rows: torch.Tensor | None = None) -> dict[str, Any]:
    """Position ids and a fresh copy of the prefix's states (of ``rows``) for a pass over live columns."""
    if states is None:
        return {"position_ids": positions}
    states = copy.deepcopy(states)  # the model appends the live columns to what it is given
    if rows is not None:  # CPU indices select on every device a device map spreads the layers over
        states.batch_select_indices(rows.cpu())
    return {"position_ids": positions, "past_key_values": states, "use_cache": True}
