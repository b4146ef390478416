"""Token-level F1 over token-id multisets, as docs/protocol.md defines it (evaluate module)."""

import datasets
import evaluate

from harness.metrics import token_f1

_DESCRIPTION = "Mean token F1 between predicted and reference token-id sequences, in [0, 1]."
_KWARGS = """
Args:
    predictions: list of token-id lists (answers, encoded without special tokens).
    references: list of token-id lists (expected answers, encoded the same way).
Returns:
    token_f1: mean F1; both empty scores 1, exactly one empty or no overlap scores 0.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class TokenF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references):
        scores = [token_f1(list(p), list(r)) for p, r in zip(predictions, references)]
        return {"token_f1": sum(scores) / len(scores) if scores else 0.0}
