"""Training data for editors that learn or retrieve (IKE pools, SERAC, MEND) and, for editors that
train, checkpoints in the cache keyed by everything they depend on."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from harness import plugins
from harness.api import TrainingExample
from harness.models import cache_dir, file_sha256, save_atomic

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
    root = Path(data_dir) if data_dir else None
    training_set = plugins.lookup("training-set", name, plugins.training_sets(root))
    files = {str(p): file_sha256(p) for p in training_set.data_files(root)}
    examples = training_set.examples(root)
    if not examples:
        raise ValueError(f"training set {name}: no usable examples in {list(files)}")
    log.info("%s: %d examples from training set %s", who, len(examples), name)
    return TrainingData(name, training_set.language, examples, files)


def describe(data: TrainingData) -> dict[str, Any]:
    """What a run or checkpoint records about its training data."""
    return {"name": data.name, "language": data.language, "examples": len(data.examples), "files": data.files}


# --- editors that train (SERAC, MEND): settings, checkpoints, resumable sessions ----------------

RUNTIME_ONLY = {"runtime_only": True}  # field metadata: changing it never needs retraining
CHECKPOINT = "checkpoint.pt"
PROGRESS = "progress.pt"
METRICS = "metrics.jsonl"
SUMMARY = "training.json"


@dataclass(frozen=True)
class TrainingSettings:
    """Mixin for hparams of editors that must be trained before they edit."""

    train_data: str = ""  # a registered training set; empty: the task's (e.g. its edit language's)
    train_limit: int = 0  # training examples used (the paper's scale study: 100 ... 10000); 0: all
    validation_size: int = 100  # examples held out from the end of the training set

    def __post_init__(self) -> None:
        if self.train_limit < 0 or self.validation_size < 1:
            raise ValueError(
                f"train_limit must be >= 0 and validation_size >= 1, got {self.train_limit}, "
                f"{self.validation_size}"
            )


class TrainingProgressError(RuntimeError):
    """Saved training progress that cannot be trusted or read."""


class TrainingRequired(RuntimeError):
    """An editor that learns was asked to edit without a checkpoint for this model, data and hparams."""


def split(
    data: TrainingData, settings: TrainingSettings
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """(train, validation): the last ``validation_size`` examples are held out; train takes the first
    ``train_limit`` of the rest, so growing the limit only adds examples."""
    examples = data.examples
    if len(examples) <= settings.validation_size:
        raise ValueError(
            f"training set {data.name} has {len(examples)} examples, not more than "
            f"validation_size={settings.validation_size}"
        )
    held_out = examples[-settings.validation_size :]
    pool = examples[: -settings.validation_size]
    if settings.train_limit > len(pool):
        raise ValueError(
            f"train_limit={settings.train_limit}, but training set {data.name} has only {len(pool)} "
            f"examples besides the {settings.validation_size} held out"
        )
    return pool[: settings.train_limit or len(pool)], held_out


def training_hparams(hparams: Any) -> dict[str, Any]:
    """The hparams a checkpoint depends on: every field not marked ``RUNTIME_ONLY``."""
    return {
        f.name: getattr(hparams, f.name)
        for f in fields(hparams)
        if not f.metadata.get("runtime_only") and f.name != "train_data"
    }


def checkpoint_dir(
    editor: str, hparams: Any, model_id: str, data: TrainingData, extra: dict[str, str] | None = None
) -> Path:
    """Where the checkpoint of ``editor`` trained with these inputs lives; the key holds all of them
    (``extra``: anything else the editor's training reads, e.g. a template's hash)."""
    identity = {
        "editor": editor,
        "model": model_id,
        "data": [data.name, len(data.examples), sorted(data.files.values())],  # contents, not paths
        "hparams": training_hparams(hparams),
        "extra": extra or {},
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=list).encode()).hexdigest()[:20]
    return cache_dir() / "trained" / editor / key


def _cli_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def train_command(editor: str, model_name: str, data: TrainingData, hparams: Any) -> str:
    """The ``harness train`` command whose checkpoint ``hparams`` need: every training hparam that
    differs from its default goes in as ``--set``, or the checkpoint key would differ."""
    limit = f" --train-limit {hparams.train_limit}" if hparams.train_limit else ""
    defaults = training_hparams(type(hparams)())
    changed = {k: v for k, v in training_hparams(hparams).items() if k != "train_limit" and v != defaults[k]}
    sets = "".join(f" --set {k}={_cli_value(v)}" for k, v in sorted(changed.items()))
    return f"harness train --editor {editor} --model {model_name} --train-data {data.name}{limit}{sets}"


def trained_state(
    editor: str, hparams: Any, context: Any, extra: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, summary) of the finished checkpoint for this editor, model, data and hparams.

    Raises TrainingRequired, with the command that trains it, when there is none.
    """
    data = load_training_set(hparams.train_data or context.training_set, context.data_dir, editor)
    directory = checkpoint_dir(editor, hparams, context.model_id, data, extra)
    path = directory / CHECKPOINT
    if not path.is_file():
        raise TrainingRequired(
            f"{editor} has not been trained for model {context.model_name or context.model_id[:12]} on "
            f"training set {data.name} with these hparams (no {path}). Train it first:\n  "
            + train_command(editor, context.model_name or "MODEL", data, hparams)
        )
    summary = json.loads((directory / SUMMARY).read_text(encoding="utf-8"))
    return torch.load(path, map_location="cpu", weights_only=True), summary


def run_record(summary: dict[str, Any]) -> dict[str, Any]:
    """What a run reports about the checkpoint its editor loaded: which one (its cache key), the data
    it learned from, its validation metrics at the kept step and what training it cost."""
    return {
        "checkpoint": Path(summary["checkpoint"]).parent.name,
        "data": summary["data"],
        "train_examples": summary["train_examples"],
        "validation_examples": summary["validation_examples"],
        "selected": summary.get("selected", {}),
        "training_seconds": summary["training_seconds"],
    }


@dataclass
class TrainingSession:
    """One editor's training: held-out split, resumable progress, a metrics log, the final checkpoint.

    Editors call ``resume()`` once, ``save_progress`` now and then, ``log`` after each validation and
    ``finish`` at the end. A killed run started again continues from the last saved progress.
    """

    directory: Path
    train: list[TrainingExample]
    validation: list[TrainingExample]
    seed: int = 0
    progress: bool = True
    about: dict[str, Any] = field(default_factory=dict)  # provenance written into training.json
    elapsed: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return self.elapsed + time.perf_counter() - self.started

    @property
    def has_progress(self) -> bool:
        return (self.directory / PROGRESS).is_file()

    def resume(self) -> tuple[int, dict[str, Any]] | None:
        """(step, the editor's state) of the last saved progress, or None on a fresh start."""
        path = self.directory / PROGRESS
        if not path.is_file():
            return None
        try:  # tensors and plain containers only: the cache may be shared, a pickle could run code
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise TrainingProgressError(
                f"{path} holds more than tensors and plain values and is not loaded (it could run code); "
                f"delete it to train from the start. ({str(error).splitlines()[0]})"
            ) from None
        self.elapsed = saved["elapsed"]
        self.started = time.perf_counter()
        self._truncate_metrics(saved["step"])
        log.info("resuming training from step %d (%s)", saved["step"], path)
        return saved["step"], saved["state"]

    def save_progress(self, step: int, state: dict[str, Any]) -> None:
        save_atomic({"step": step, "elapsed": self.seconds, "state": state}, self.directory / PROGRESS)

    def log(self, step: int, **metrics: float) -> None:
        line = {"step": step, "seconds": round(self.seconds, 2), **metrics}
        with open(self.directory / METRICS, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
        log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    def metrics(self) -> list[dict[str, Any]]:
        path = self.directory / METRICS
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def _truncate_metrics(self, step: int) -> None:
        kept = [m for m in self.metrics() if m["step"] <= step]
        (self.directory / METRICS).write_text("".join(json.dumps(m) + "\n" for m in kept), encoding="utf-8")

    def finish(self, state: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
        """Write the checkpoint and its summary (time, size, final metrics); drop the progress file."""
        save_atomic(state, self.directory / CHECKPOINT)
        parameters = _count_parameters(state)
        summary = {
            **summary,
            **self.about,
            "train_examples": len(self.train),
            "validation_examples": len(self.validation),
            "training_seconds": round(self.seconds, 1),
            "checkpoint_bytes": (self.directory / CHECKPOINT).stat().st_size,
            "checkpoint_parameters": parameters,
            "checkpoint": str(self.directory / CHECKPOINT),
        }
        (self.directory / SUMMARY).write_text(json.dumps(summary, indent=2), encoding="utf-8")
        (self.directory / PROGRESS).unlink(missing_ok=True)
        return summary


def _count_parameters(state: Any) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel()
    if isinstance(state, dict):
        return sum(_count_parameters(v) for v in state.values())
    return 0


def batch_indices(count: int, size: int, seed: int, step: int) -> list[int]:
    """The examples of training step ``step``: a function of (seed, step) only, so a resumed run
    draws exactly the batches an uninterrupted one would."""
    generator = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + step)
    return torch.randperm(count, generator=generator, device="cpu")[:size].tolist()


def train_loop(
    session: TrainingSession,
    steps: int,
    every: int,
    step: Callable[[int], dict[str, float]],
    validate: Callable[[], dict[str, float]],
    state: Callable[[], dict[str, Any]],
    load: Callable[[dict[str, Any]], None],
    optimiser: torch.optim.Optimizer,
    description: str,
    baseline: dict[str, float] | None = None,
    select: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Run ``step(i)`` for the steps not yet done; validate, log and save progress (``state()`` and
    the optimiser's state) every ``every`` steps and at the end. A fresh start first logs step 0:
    validation before any training, with ``baseline`` (e.g. metrics of an earlier phase); a resumed
    one ``load``s the saved state. With ``select`` (a validation metric, lower is better) the state
    of the best validation, step 0 included, is kept and ``load``ed at the end, so a late divergence
    cannot spoil the checkpoint. Returns the first, the last and the selected metrics lines."""
    resumed = session.resume()
    first, best = 0, None
    if resumed is not None:
        first, saved = resumed
        load(saved["trained"])
        optimiser.load_state_dict(saved["optimiser"])
        best = saved["best"]
    else:
        line = validate()
        session.log(0, **(baseline or {}), **line)
        best = _better(best, select, 0, line, state)
    with tqdm(total=steps, initial=first, desc=description, unit="step", disable=not session.progress) as bar:
        for index in range(first, steps):
            losses = step(index)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()})
            if (index + 1) % every == 0 or index + 1 == steps:
                line = validate()
                session.log(index + 1, **losses, **line)
                best = _better(best, select, index + 1, line, state)
                # after the log: a resume redoes lost lines
                progress = {"trained": state(), "optimiser": optimiser.state_dict(), "best": best}
                session.save_progress(index + 1, progress)
    found = session.metrics()
    lines = {"before": found[0], "final": found[-1]}
    if best is not None:
        load(best["state"])
        lines["selected"] = next(m for m in found if m["step"] == best["step"])
    return lines


def _better(
    best: dict[str, Any] | None,
    select: str | None,
    step: int,
    line: dict[str, float],
    state: Callable[[], dict[str, Any]],
) -> dict[str, Any] | None:
    """The kept best state after a validation: a copy of ``state()`` if ``line[select]`` beats it."""
    if select is None:
        return None
    if select not in line:
        raise KeyError(f"select={select!r} is not a validation metric; have {sorted(line)}")
    if best is not None and not line[select] < best["value"]:
        return best
    return {"step": step, "value": line[select], "state": copy.deepcopy(state())}
