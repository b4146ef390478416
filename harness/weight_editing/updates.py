"""Writing key -> value associations into a weight matrix: rank-one (ROME) and least-squares (MEMIT)."""

from __future__ import annotations

import logging
import math

import torch

from harness.runtime import MASTER_DTYPE

log = logging.getLogger(__name__)


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


@torch.no_grad()
def keep_largest_relative_change(weight: torch.Tensor, original: torch.Tensor, share: float) -> int:
    """In place: of the change ``weight`` - ``original``, keep it on the ``ceil(share * n)`` entries
    whose change is largest relative to the original value (|dW| / |W|; an entry that was 0 and moved
    counts as infinitely large) and put every other entry back to its original value, exactly. This
    is RECT's regularisation of an edit (Gu et al., 2024). Returns how many entries were kept."""
    original = original.to(weight.device)
    change = weight.to(MASTER_DTYPE) - original.to(MASTER_DTYPE)
    relative = torch.nan_to_num(change.abs() / original.to(MASTER_DTYPE).abs(), nan=0.0)  # 0/0: unchanged
    count = math.ceil(share * relative.numel())
    kept = torch.zeros(relative.numel(), dtype=torch.bool, device=weight.device)
    kept[torch.topk(relative.flatten(), count).indices] = True
    weight.copy_(torch.where(kept.view_as(weight), weight, original))
    return count


def equality_constrained_update(
    weight: torch.Tensor,
    keys: torch.Tensor,
    residuals: torch.Tensor,
    inverse_moment: torch.Tensor | None = None,
    transposed: bool = False,
) -> torch.Tensor:
    """In place: W <- W + R (K^T C^-1 K)^-1 K^T C^-1, solved in float64; returns the update.

    ``keys`` K^T is (n, d_in), ``residuals`` R^T is (n, d_out). Of all updates with (W + U) k_i =
    W k_i + r_i for every key exactly, this one changes the outputs of ordinary keys least (it
    minimises ||U C^{1/2}||, C the keys' second moments; ``inverse_moment`` C^-1, None: C = I). With
    one key it is the rank-one update; EMMET (Gupta et al., 2024) writes a batch this way.
    """
    k = keys.to(weight.device, torch.float64).T
    whitened = k if inverse_moment is None else inverse_moment.to(weight.device, torch.float64) @ k
    system = k.T @ whitened  # K^T C^-1 K, (n, n)
    update = residuals.to(weight.device, torch.float64).T @ torch.linalg.solve(system, whitened.T)
    _write(weight, update.T if transposed else update)
    return update


def null_space_projector(moment: torch.Tensor, threshold: float) -> torch.Tensor:
    """P = V V^T over the eigenvectors of ``moment`` C = E[k k^T] whose eigenvalue is at most
    ``threshold`` times the largest: the directions the keys C was estimated from (nearly) never
    take. Any change U with U = U P moves those keys' outputs only by what they have in these
    directions (AlphaEdit's projection, Fang et al., 2025). Float64, on the moment's device."""
    values, vectors = torch.linalg.eigh(moment.to(torch.float64))
    kept = vectors[:, values <= threshold * values[-1]]
    return kept @ kept.T


def projected_update(
    weight: torch.Tensor,
    keys: torch.Tensor,
    residuals: torch.Tensor,
    projector: torch.Tensor,
    earlier: torch.Tensor,
    l2: float,
    transposed: bool = False,
) -> torch.Tensor:
    """In place: W <- W + R K^T P ((K_p K_p^T + K K^T) P + l2 I)^-1, solved in float64; returns it.

    ``keys`` K^T is (n, d_in), ``residuals`` R^T is (n, d_out), ``projector`` P (d_in, d_in) from
    ``null_space_projector``, ``earlier`` K_p K_p^T the keys of edits already made (zeros for the
    first). This is AlphaEdit's closed form for writing R at K through P while penalising changes at
    the earlier keys (||U P K_p||^2) and the size of the change (l2 ||U P||^2). The update lies in P's
    range (U = U P), so the preserved keys' outputs move only by what those keys have in P's range;
    for keys inside P's range, with no earlier keys, U K = R K^T K (K^T K + l2 I)^-1: R as l2 -> 0.
    """
    k = keys.to(weight.device, torch.float64).T
    p = projector.to(weight.device, torch.float64)
    gram = earlier.to(weight.device, torch.float64) + k @ k.T
    system = p @ gram + l2 * torch.eye(len(p), dtype=torch.float64, device=weight.device)
    update = torch.linalg.solve(system, p @ k @ residuals.to(weight.device, torch.float64)).T
    _write(weight, update.T if transposed else update)
    return update
