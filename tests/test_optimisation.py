"""The shared step loop: stops at the loss threshold or after the steps, reporting the final loss."""

from __future__ import annotations

import torch

from harness.optimisation import minimise


def test_it_stops_once_the_loss_is_below_the_threshold_and_reports_the_last_loss():
    x = torch.tensor([4.0], requires_grad=True)
    seen = []

    def loss():
        value = (x**2).sum()
        seen.append(value.item())
        return value

    steps, final = minimise(loss, torch.optim.SGD([x], lr=0.25), steps=100, stop_loss=1.0)
    # x halves each step (x - 0.25 * 2x): 16, 4, 1, 0.25 -> stops after three steps
    assert (steps, final) == (3, 0.25) and seen == [16.0, 4.0, 1.0, 0.25]


def test_it_takes_every_step_without_a_threshold_and_lets_the_gradient_be_masked():
    x = torch.tensor([1.0, 1.0], requires_grad=True)

    def frozen_second():
        x.grad[1] = 0

    steps, final = minimise(lambda: (x**2).sum(), torch.optim.SGD([x], lr=0.5), 2, before_step=frozen_second)
    assert steps == 2 and x.tolist() == [0.0, 1.0] and final == 1.0
