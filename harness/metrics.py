"""Answer scores: exact match on stripped strings, token F1 on token-id multisets."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from harness.hookspecs import hookimpl

METRIC_MODULES = Path(__file__).parent / "metric_modules"


def exact_match(answer: str, expected: str) -> float:
    """1.0 when the strings are equal after stripping surrounding whitespace, else 0.0."""
    return float(answer.strip() == expected.strip())


def token_f1(answer_ids: Sequence[int], expected_ids: Sequence[int]) -> float:
    """Harmonic mean of precision and recall over the multiset intersection of token ids.

    Both empty: 1.0; exactly one empty, or no overlap: 0.0 (never a division by zero).
    """
    if not answer_ids and not expected_ids:
        return 1.0
    if not answer_ids or not expected_ids:
        return 0.0
    overlap = sum((Counter(answer_ids) & Counter(expected_ids)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(answer_ids)
    recall = overlap / len(expected_ids)
    return 2 * precision * recall / (precision + recall)


def token_f1_product(answer_ids: Sequence[int], expected_ids: Sequence[int]) -> float:
    """Precision times recall, |overlap|^2 / (|answer| |expected|), over token-id multisets.

    The score the first Bi-ZsRE release called F1 (docs/protocol.md); it lies below the harmonic
    mean whenever an answer is partly right. Both empty: 1.0; exactly one empty: 0.0.
    """
    if not answer_ids and not expected_ids:
        return 1.0
    if not answer_ids or not expected_ids:
        return 0.0
    overlap = sum((Counter(answer_ids) & Counter(expected_ids)).values())
    return overlap * overlap / (len(answer_ids) * len(expected_ids))


def _f1(answer_ids, expected_ids, answer, expected) -> float:
    return token_f1(answer_ids, expected_ids)


def _em(answer_ids, expected_ids, answer, expected) -> float:
    return exact_match(answer, expected)


@hookimpl
def register_metrics(register):
    register("f1", _f1)
    register("em", _em)


def load_evaluate_metric(name: str):
    """The same metrics through ``evaluate``'s interface, loaded from modules shipped in the package.

    ``name`` is ``token_f1`` or ``answer_exact_match``; nothing is fetched from a hub.
    """
    import evaluate

    path = METRIC_MODULES / name / f"{name}.py"
    if not path.exists():
        known = sorted(p.name for p in METRIC_MODULES.iterdir() if p.is_dir())
        raise ValueError(f"no packaged evaluate metric {name!r}; available: {known}")
    return evaluate.load(str(path))
