"""The step loop that editors which optimise something per edit share (an adapter, a stored value,
a side memory): step until the loss is small enough or the steps run out."""

from __future__ import annotations

from collections.abc import Callable

import torch


def minimise(
    loss: Callable[[], torch.Tensor],
    optimiser: torch.optim.Optimizer,
    steps: int,
    stop_loss: float = float("-inf"),
    before_step: Callable[[], None] | None = None,
) -> tuple[int, float]:
    """Take at most ``steps`` optimiser steps on ``loss()``, stopping as soon as it is below
    ``stop_loss``; ``before_step`` may change the gradients first (a mask). Returns the steps taken
    and the loss after the last of them (one more evaluation measures it)."""
    taken = 0
    while True:
        value = loss()
        if value.item() < stop_loss or taken == steps:
            return taken, value.item()
        optimiser.zero_grad()
        value.backward()
        if before_step is not None:
            before_step()
        optimiser.step()
        taken += 1
