"""Exact match after stripping surrounding whitespace, as docs/protocol.md defines it (evaluate module)."""

import datasets
import evaluate

from harness.metrics import exact_match

_DESCRIPTION = "Share of answers equal to the reference after stripping whitespace, in [0, 1]."
_KWARGS = """
Args:
    predictions: list of answer strings.
    references: list of expected strings.
Returns:
    exact_match: mean of 1/0 matches.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class AnswerExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        scores = [exact_match(p, r) for p, r in zip(predictions, references)]
        return {"exact_match": sum(scores) / len(scores) if scores else 0.0}
