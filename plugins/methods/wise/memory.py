"""WISE's side memory: the change each shard of edits made to a copy of one MLP output matrix, the
merge of the full shards, and the router that sends a query to the memory it activates most."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.runtime import MASTER_DTYPE


def ties_merge(deltas: list[torch.Tensor], density: float) -> torch.Tensor:
    """TIES merging (Yadav et al., 2023) of several changes to one matrix: each keeps only its
    ``density`` share of entries with the largest magnitude; every entry takes the sign of the sum of
    what was kept there; the merge is the mean of the kept values with that sign (0 where none)."""
    trimmed = []
    for delta in deltas:
        count = max(1, round(density * delta.numel()))
        threshold = delta.abs().flatten().kthvalue(delta.numel() - count + 1).values
        trimmed.append(torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta)))
    stacked = torch.stack(trimmed)
    sign = torch.sign(stacked.sum(0))
    agreeing = (torch.sign(stacked) == sign) & (stacked != 0)
    count = agreeing.sum(0)
    total = torch.where(agreeing, stacked, torch.zeros_like(stacked)).sum(0)
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))


def relative_scores(inputs: torch.Tensor, main: torch.Tensor, mask: torch.Tensor, delta: torch.Tensor):
    """Per row: the mean over its tokens of ||delta a_t|| (how much the memory changes the MLP's
    output) over the mean of ||W a_t|| (its unedited output), ``mask`` (rows, tokens) marking tokens."""
    change = torch.nn.functional.linear(inputs.to(MASTER_DTYPE), delta.to(inputs.device))
    weights = mask.to(change.device, MASTER_DTYPE)
    moved = (change.norm(dim=-1) * weights).sum(-1)
    size = (main.to(MASTER_DTYPE).norm(dim=-1) * weights).sum(-1)
    return moved / size.clamp_min(1e-12)


@dataclass(frozen=True)
class SideMemory:
    """The shard being written (its change to the matrix and the in-scope score of each edit in it),
    the full shards' changes, and their merge with the scores of every edit it holds. Never changed
    in place: an edit makes a new one, so undoing it is putting the old one back."""

    working: torch.Tensor | None = None
    working_scores: tuple[float, ...] = ()
    finished: tuple[torch.Tensor, ...] = ()
    finished_scores: tuple[float, ...] = ()
    merged: torch.Tensor | None = field(default=None, compare=False)

    @property
    def edits(self) -> int:
        return len(self.working_scores) + len(self.finished_scores)

    def with_shard_finished(self, density: float) -> SideMemory:
        """The working shard moved to the full ones and every full shard merged again."""
        finished = (*self.finished, self.working)
        return SideMemory(
            None,
            (),
            finished,
            self.finished_scores + self.working_scores,
            ties_merge(list(finished), density),
        )

    def with_edit(self, working: torch.Tensor, score: float) -> SideMemory:
        return SideMemory(
            working, (*self.working_scores, score), self.finished, self.finished_scores, self.merged
        )

    def candidates(self, act_ratio: float) -> list[tuple[torch.Tensor, float]]:
        """(change, threshold) of each memory a query may go to: the merge, the working shard."""
        found = []
        if self.merged is not None:
            found.append((self.merged, act_ratio * min(self.finished_scores)))
        if self.working is not None:
            found.append((self.working, act_ratio * min(self.working_scores)))
        return found

    def route(self, inputs, outputs, mask, act_ratio: float) -> torch.Tensor:
        """``outputs`` (the main memory's) with every row whose relative score under some memory
        reaches that memory's threshold replaced by the output of the memory, among those, that moves
        it most; the very same tensor when no row does."""
        best = torch.zeros(len(outputs), dtype=MASTER_DTYPE, device=outputs.device)
        chosen: torch.Tensor | None = None
        for delta, threshold in self.candidates(act_ratio):
            scores = relative_scores(inputs, outputs, mask, delta).to(outputs.device)
            take = (scores >= threshold) & (scores > best)
            if bool(take.any()):
                side = outputs.to(MASTER_DTYPE) + torch.nn.functional.linear(
                    inputs.to(MASTER_DTYPE), delta.to(inputs.device)
                ).to(outputs.device)
                chosen = outputs.clone() if chosen is None else chosen
                chosen[take] = side[take].to(outputs.dtype)
                best = torch.where(take, scores, best)
        return outputs if chosen is None else chosen

    def state(self) -> dict:
        """Tensors on the CPU, lists and numbers: what ``torch.save`` with weights only can hold."""
        return {
            "working": [] if self.working is None else [self.working.cpu()],
            "working_scores": list(self.working_scores),
            "finished": [delta.cpu() for delta in self.finished],
            "finished_scores": list(self.finished_scores),
        }

    @classmethod
    def from_state(cls, state: dict, device: torch.device, density: float) -> SideMemory:
        finished = tuple(delta.to(device) for delta in state["finished"])
        return cls(
            state["working"][0].to(device) if state["working"] else None,
            tuple(state["working_scores"]),
            finished,
            tuple(state["finished_scores"]),
            ties_merge(list(finished), density) if finished else None,
        )
