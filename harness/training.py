"""Training data for editors that learn or retrieve (IKE pools, SERAC, MEND) and, for editors that
train, checkpoints in the cache keyed by everything they depend on."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import plugins
from harness.api import TrainingExample
from harness.models import file_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingData:
    """Examples of one registered training set, with the hashes of the files they came from."""

    name: str
    language: str
    examples: list[TrainingExample]
    files: dict[str, str]


def load_training_set(name: str, data_dir: Path | str | None, who: str) -> TrainingData:
    """The registered training set ``name`` under ``data_dir``; ``who`` (an editor) is named in errors."""
    if not name:
        raise ValueError(
            f"{who} needs training data, but the task names no training set: set train_data "
            f"(--set train_data=NAME; see `harness ls training-sets`)"
        )
    training_set = plugins.lookup("training-set", name, plugins.training_sets())
    root = Path(data_dir) if data_dir else None
    files = {str(p): file_sha256(p) for p in training_set.data_files(root)}
    examples = training_set.examples(root)
    if not examples:
        raise ValueError(f"training set {name}: no usable examples in {list(files)}")
    log.info("%s: %d examples from training set %s", who, len(examples), name)
    return TrainingData(name, training_set.language, examples, files)


def describe(data: TrainingData) -> dict[str, Any]:
    """What a run or checkpoint records about its training data."""
    return {"name": data.name, "language": data.language, "examples": len(data.examples), "files": data.files}
