"""RECT: any weight editor whose update is cut back to the entries that change most, relative to
their value (Gu et al., 2024, "Model Editing Harms General Abilities of Large Language Models:
Regularization to the Rescue")."""

from __future__ import annotations

import dataclasses
from typing import Any

from harness.api import Edit, Editor, EditRequest
from harness.weight_editing.updates import keep_largest_relative_change

DEFAULT_SHARE = 0.2  # the share of each edited matrix's entries that keep their change, as in the paper


def hparams_with_rect(base: type) -> type:
    """``base`` (an editor's hparams dataclass) with one more field, ``rect``: the share of each
    edited matrix's entries that keep their change, in (0, 1]."""

    def __post_init__(self) -> None:
        inherited = getattr(base, "__post_init__", None)
        if inherited is not None:
            inherited(self)
        if not 0 < self.rect <= 1:
            raise ValueError(f"rect must be in (0, 1], got {self.rect}")

    namespace = {
        "__module__": __name__,
        "__doc__": f"{base.__name__} plus ``rect``, the share of each edited matrix's entries kept.",
        "__annotations__": {"rect": float},
        "rect": DEFAULT_SHARE,
        "__post_init__": __post_init__,
    }
    return dataclasses.dataclass(frozen=True)(type(f"RECT{base.__name__}", (base,), namespace))


def with_rect(base: type[Editor]) -> type[Editor]:
    """``base`` with RECT after every edit call: of each tensor the call changed, only the ``rect``
    share of entries with the largest relative change keep it; the rest are put back exactly."""
    summary = (base.__doc__ or base.__name__).strip().splitlines()[0].rstrip(".")

    class RECT(base):
        hparams_class = hparams_with_rect(base.hparams_class)

        def edit(self, model: Any, tokenizer: Any, requests: list[EditRequest]) -> Edit:
            edit = super().edit(model, tokenizer, requests)
            share = self.hparams.rect
            kept = {
                name: keep_largest_relative_change(model.get_parameter(name), original, share)
                for name, original in edit.originals.items()
            }
            edit.info = {**edit.info, "rect": {"share": share, "entries_kept": kept}}
            return edit

    RECT.__name__ = RECT.__qualname__ = f"RECT{base.__name__}"
    RECT.__doc__ = f"RECT on {summary}, keeping only the largest relative changes."
    return RECT
