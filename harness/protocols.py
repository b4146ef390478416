"""Scoring profiles: the named ways a task can build its probes and score answers.

A task may offer several profiles (``protocols``, its default first) and returns itself set up for
one with ``with_protocol(name)``. The harness records the profile in results.json and refuses to
compare runs scored under different ones. A task without ``protocols`` has the one profile
``DEFAULT``. What a profile changes is the task's business; the harness reads three optional
attributes of the set-up task:

- ``protocol``: the profile's name;
- ``metric_overrides``: ``{result key: metric function}`` replacing registered metrics of that key;
- ``reference_scoring_tokenizer``: the tokenizer the profile's reference scores were computed
  with; a run that scores with the model's own tokenizer instead is noted as deviating;
- ``protocol_notes(data_dir)``: other ways the run cannot follow the profile (e.g. a reference
  file missing from the data), recorded with it.
"""

from __future__ import annotations

from typing import Any

from harness.config import ConfigError

DEFAULT = "default"


def offered(task: Any) -> tuple[str, ...]:
    """The task's profile names, its default first."""
    return tuple(getattr(task, "protocols", ()) or (DEFAULT,))


def select(task: Any, requested: str, option: str = "protocol") -> Any:
    """``task`` set up for profile ``requested`` ("" = its default); an unknown name is a ConfigError
    naming ``option`` and the task's profiles."""
    names = offered(task)
    name = requested or names[0]
    if name not in names:
        raise ConfigError(
            f"{option}: {requested!r} is not a scoring profile of task {task.name}; it offers {list(names)}"
        )
    return task.with_protocol(name) if hasattr(task, "with_protocol") else task


def name_of(task: Any) -> str:
    """The profile a set-up task follows."""
    return getattr(task, "protocol", "") or offered(task)[0]


def notes(task: Any, scoring_tokenizer: str, data_dir: Any) -> list[str]:
    """Where this run departs from the profile's reference scoring (recorded in results.json)."""
    found = list(task.protocol_notes(data_dir)) if hasattr(task, "protocol_notes") else []
    reference = getattr(task, "reference_scoring_tokenizer", "")
    if reference and not scoring_tokenizer:
        found.append(
            f"profile {name_of(task)} scores every model with the {reference} tokenizer; this run used "
            f"the edited model's own (set scoring_tokenizer to a copy of {reference} to match)"
        )
    return found


def record(task: Any, scoring_tokenizer: str, data_dir: Any) -> dict[str, Any]:
    """The ``protocol`` entry of results.json."""
    return {"name": name_of(task), "notes": notes(task, scoring_tokenizer, data_dir)}
