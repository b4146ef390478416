"""The plugin contract. Every hook is optional; a plugin implements the ones it needs."""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("harness")
hookimpl = pluggy.HookimplMarker("harness")


@hookspec
def register_editors(register):
    """Call ``register(name, editor_class)`` for each editor; the class names its hparams dataclass."""


@hookspec
def register_tasks(register, data_dir):
    """Call ``register(task)`` for each task variant (an object following ``harness.api.Task``, or
    ``harness.api.AbilityTask``). ``data_dir`` (a Path, or None when none is configured) lets a
    family register one variant per data file it finds there; implementations may omit it."""


@hookspec
def register_training_sets(register, data_dir):
    """Call ``register(training_set)`` for each ``harness.api.TrainingSet`` (demonstration pools,
    training data for editors that learn); ``data_dir`` as for ``register_tasks``."""


@hookspec
def register_models(register):
    """Call ``register(source)`` for each named model (a ``harness.models.ModelSource``)."""


@hookspec
def register_architectures(register):
    """Call ``register(model_type, architecture)`` with a ``harness.models.Architecture`` for each
    transformers ``config.model_type`` whose module names the built-in map lacks."""


@hookspec
def register_metrics(register):
    """Call ``register(name, fn)`` with ``fn(answer_ids, expected_ids, answer, expected) -> float``."""


@hookspec
def editor_defaults(editor: str, model: str) -> dict | None:
    """Return hyper-parameter defaults for ``editor`` on ``model`` (the run's model setting), or None.
    They sit above the hparams dataclass and below ``[models."<model>".<editor>]`` and ``--set``."""


@hookspec
def template_dirs() -> list[str]:
    """Return directories holding Jinja templates; later plugins cannot shadow earlier names."""


@hookspec
def before_edit(request: Any, run: Any) -> None:
    """Called before each edit is applied (``request`` is an EditRequest, ``run`` the RunContext)."""


@hookspec
def after_edit(request: Any, sample: dict, run: Any) -> None:
    """Called after each edit was probed, scored and restored; ``sample`` is its samples.jsonl line."""


@hookspec
def after_run(results: dict, run: Any) -> None:
    """Called once with the final results dictionary, after results.json is written (``run`` is None
    for an ability task run on its own)."""
