"""IKE demonstrations: three per pool record (copy, update, retain) and which k of them an edit gets."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.api import TrainingExample

KINDS = ("copy", "update", "retain")
# The original IKE paper's mix for k = 32; other k are scaled proportionally.
PAPER_MIX = {"copy": 4, "update": 12, "retain": 16}


@dataclass(frozen=True)
class Demonstration:
    kind: str  # one of KINDS
    source: int  # index of the pool record it came from
    text: str

    @property
    def label(self) -> str:
        """A short id for logs: ``update:123``."""
        return f"{self.kind}:{self.source}"


def build(pool: list[TrainingExample], render: Callable[..., str]) -> list[Demonstration]:
    """copy: the fact's own prompt; update: its rephrase, same new answer; retain: an unrelated
    question with its own answer. ``render(fact_prompt, fact_answer, query, answer)`` writes one."""
    demonstrations = []
    for index, example in enumerate(pool):
        queries = {
            "copy": (example.prompt, example.target),
            "update": (example.rephrase, example.target),
            "retain": (example.locality_prompt, example.locality_answer),
        }
        for kind in KINDS:
            query, answer = queries[kind]
            text = render(fact_prompt=example.prompt, fact_answer=example.target, query=query, answer=answer)
            demonstrations.append(Demonstration(kind, index, text))
    return demonstrations


def quotas(k: int) -> dict[str, int]:
    """The paper's mix scaled to k by largest remainders (exactly 4/12/16 for k = 32)."""
    exact = {kind: k * share / sum(PAPER_MIX.values()) for kind, share in PAPER_MIX.items()}
    counts = {kind: math.floor(value) for kind, value in exact.items()}
    by_remainder = sorted(KINDS, key=lambda kind: exact[kind] - counts[kind], reverse=True)
    for kind in by_remainder[: k - sum(counts.values())]:
        counts[kind] += 1
    return counts


def nearest(similarity: torch.Tensor, kinds: list[str], k: int, mix: str) -> list[int]:
    """Indices of the chosen demonstrations, least similar first (the most similar ends up next to
    the query). ``retrieved``: the k most similar of any kind; ``fixed``: the paper's quota per kind.
    Ties go to the earlier demonstration, so the choice is deterministic."""
    ranked = torch.sort(similarity, descending=True, stable=True).indices.tolist()
    if mix == "retrieved":
        return ranked[:k][::-1]
    left, chosen = quotas(k), []
    for index in ranked:
        if left[kinds[index]] > 0:
            left[kinds[index]] -= 1
            chosen.append(index)
    return chosen[::-1]
