"""One frozen run configuration: packaged harness.toml < user harness.toml < --set key=value.

Editor hyper-parameters are dataclasses: their defaults, then the plugins' per-model defaults (the
``editor_defaults`` hook), then ``[models."<model>".<editor>]`` from the TOML files, then ``--set``.
Unknown or ill-typed keys are errors that name the key and list the valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.answers import ANSWER_MODES
from harness.runtime import Placement, PlacementError
from harness.shards import Shard, ShardError
from harness.subjects import FALLBACKS

EDIT_MODES = ("single", "batch", "sequential", "batch-sequential")
# modes that keep every edit in force until the end instead of restoring after each
ACCUMULATING_MODES = ("sequential", "batch-sequential")

PACKAGED_DEFAULTS = Path(__file__).parent / "harness.toml"


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class RunConfig:
    """Settings of one run that are not an editor's hyper-parameters. Each has one name, used alike by
    the CLI option that sets it, ``harness.run``'s keywords, ``[run]`` in harness.toml and ``--set``."""

    model: str = "gemma3-270m"
    data_dir: str = ""
    output_dir: str = ""
    limit: int = 0  # 0: every record
    seed: int = 0
    answer_mode: str = "teacher_forced"  # or "generate"
    # single: edit, probe, restore per record; batch: batch_size records per edit call;
    # sequential / batch-sequential: the same without restoring, probed after the last edit
    mode: str = "single"
    batch_size: int = 1  # records per edit call in batch and batch-sequential mode
    probe_every: int = 0  # accumulating modes: also probe every n edits (a decay curve); 0: only at the end
    probe_batch_size: int = 16  # probes per forward pass
    scoring_tokenizer: str = ""  # empty: the edited model's own tokenizer
    protocol: str = ""  # the task's scoring profile (harness.protocols); empty: the task's default
    ability_protocol: str = ""  # the scoring profile of the --then ability tasks; empty: their default
    template: str = ""  # empty: the task's own probe template
    threads: int = 0  # 0: torch's default
    # ability tasks (comma-separated) measured on the model holding every edit of an accumulating run
    then: str = ""
    # editors that locate the subject: where a subject cannot be aligned with the prompt
    # ("prompt_end": edit at the prompt's last word; "skip": leave the record out), see harness.subjects
    subject_fallback: str = "prompt_end"
    subject_fuzzy_threshold: float = 0.7  # least similarity of a fuzzy subject match (0-1)
    ability_limit: int = -1  # examples per ability task: -1 its documented CPU subset, 0 all, else first N
    # "i/n": edit only shard i (0-based) of n of the records (single and batch modes), see harness.shards;
    # empty: every record, or the shard RANK/WORLD_SIZE of a distributed launcher name
    shard: str = ""
    device: str = "auto"  # auto (a GPU when there is one), cpu, cuda, cuda:N, mps
    dtype: str = "auto"  # auto (the checkpoint's own), float32, bfloat16, float16
    device_map: str = ""  # spread the model over several GPUs: auto, balanced, balanced_low_0, sequential

    def __post_init__(self) -> None:
        try:
            self.placement()
        except PlacementError as error:
            raise ConfigError(str(error)) from None
        if self.answer_mode not in ANSWER_MODES:
            raise ConfigError(f"answer_mode: {self.answer_mode!r} is not one of {list(ANSWER_MODES)}")
        if self.mode not in EDIT_MODES:
            raise ConfigError(f"mode: {self.mode!r} is not one of {list(EDIT_MODES)}")
        for name in ("limit", "batch_size", "probe_batch_size", "threads", "probe_every"):
            if getattr(self, name) < (1 if "batch_size" in name else 0):
                raise ConfigError(f"{name}: {getattr(self, name)} is out of range")
        if self.mode in ("single", "sequential") and self.batch_size != 1:
            raise ConfigError(
                f"batch_size: {self.batch_size} edits per call needs mode=batch or batch-sequential "
                f"(mode is {self.mode})"
            )
        if self.subject_fallback not in FALLBACKS:
            raise ConfigError(f"subject_fallback: {self.subject_fallback!r} is not one of {list(FALLBACKS)}")
        if not 0.0 < self.subject_fuzzy_threshold <= 1.0:
            raise ConfigError(f"subject_fuzzy_threshold: {self.subject_fuzzy_threshold} is not in (0, 1]")
        if self.ability_limit < -1:
            raise ConfigError(f"ability_limit: {self.ability_limit} is out of range (-1, 0 or N)")
        if self.then and self.mode not in ACCUMULATING_MODES:
            raise ConfigError(
                f"then: {self.then!r} measures the model holding every edit, which needs an accumulating "
                f"mode {list(ACCUMULATING_MODES)} (mode is {self.mode}; single and batch modes restore "
                "the weights after every edit)"
            )
        if self.shard:
            try:
                Shard.parse(self.shard)
            except ShardError as error:
                raise ConfigError(str(error).replace("--shard", "shard", 1)) from error
        if self.shard and self.mode in ACCUMULATING_MODES:
            raise ConfigError(
                f"shard: {self.shard!r} splits independent edits over processes; in mode {self.mode} every "
                "edit stays in force for the next, so the run cannot be split"
            )
        if self.probe_every and self.mode not in ACCUMULATING_MODES:
            raise ConfigError(
                f"probe_every: {self.probe_every} needs an accumulating mode {list(ACCUMULATING_MODES)} "
                f"(mode is {self.mode}; single and batch modes probe after every edit anyway)"
            )

    def placement(self) -> Placement:
        """Where the model is loaded and in which dtype (``harness.runtime``)."""
        return Placement(device=self.device, dtype=self.dtype, device_map=self.device_map)


def read_toml_files(user_file: str | Path | None = None) -> dict[str, Any]:
    """Packaged defaults deep-merged with the user's file (``--config`` or ./harness.toml)."""
    merged = _read(PACKAGED_DEFAULTS)
    candidate = Path(user_file) if user_file else Path("harness.toml")
    if user_file and not candidate.is_file():
        raise ConfigError(f"--config {user_file}: no such file")
    if candidate.is_file() and candidate.resolve() != PACKAGED_DEFAULTS.resolve():
        user = _read(candidate)
        _check_shape(user, candidate)
        _deep_merge(merged, user)
    return merged


SECTIONS = ("run", "models")


def _check_shape(toml: dict[str, Any], path: Path) -> None:
    """Sections the harness reads, each a table: ``[run]`` and ``[models."<model>".<editor>]``."""
    unknown = sorted(set(toml) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; valid: {list(SECTIONS)}")
    if not isinstance(toml.get("run", {}), dict):
        raise ConfigError(f"{path}: run = {toml['run']!r} must be a table ([run] with key = value lines)")
    models = toml.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f'{path}: models must be tables [models."<model>".<editor>]')
    for model, editors in models.items():
        if not isinstance(editors, dict) or not all(isinstance(v, dict) for v in editors.values()):
            raise ConfigError(f'{path}: [models."{model}"] must hold tables [models."{model}".<editor>]')


def check_names(toml: dict[str, Any], editors: Collection[str], models: Collection[str]) -> None:
    """Every ``[models."<model>".<editor>]`` names a registered editor, and a registered model or one
    given as a path or hub id (with a ``/``): a typo would silently leave the defaults in force."""
    for model, sections in toml.get("models", {}).items():
        if (
            model not in models
            and "/" not in model
            and not model.endswith(".gguf")
            and not Path(model).exists()
        ):
            raise ConfigError(
                f'[models."{model}"]: no model of that name{_close(model, models)}; registered: '
                f"{sorted(models)} (a local directory, a .gguf file or an org/name hub id works too)"
            )
        for editor in sections:
            if editor not in editors:
                raise ConfigError(
                    f'[models."{model}".{editor}]: no editor of that name{_close(editor, editors)}; '
                    f"editors: {sorted(editors)}"
                )


def _close(name: str, valid: Collection[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=2, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from error


def _deep_merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a TOML value or a ``--set`` string to the field's type, or raise naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if origin in (tuple, list):
        if isinstance(value, str) and value.strip().startswith("[") and value.strip().endswith("]"):
            value = value.strip()[1:-1]  # the list syntax messages print: [1, 2]
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else str
        converted = [
            coerce(item.strip() if isinstance(item, str) else item, inner, key)
            for item in items
            if not (isinstance(item, str) and not item.strip())
        ]
        return tuple(converted) if origin is tuple else converted
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")
        try:
            converted = annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}") from None
        if annotation is int and isinstance(value, float) and value != converted:
            raise ConfigError(f"{key}: expected int, got {value!r}")
        return converted
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {annotation!r}")


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``values``, rejecting unknown keys and bad types."""
    valid = field_names(cls)
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {valid}")
    types_ = _field_types(cls)
    try:
        return cls(**{k: coerce(v, types_[k], f"{where}: {k}") for k, v in values.items()})
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{where}: {error}") from error


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """``["key=value", ...]`` from repeated ``--set`` options."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value")
        parsed[key.strip()] = value.strip()
    return parsed


def data_dir_setting(explicit: str | None = None, config_file: str | None = None) -> Path | None:
    """The data directory as a run would resolve it: --data-dir, HARNESS_DATA_DIR, harness.toml."""
    raw = (
        explicit
        or os.environ.get("HARNESS_DATA_DIR")
        or read_toml_files(config_file).get("run", {}).get("data_dir")
    )
    return Path(raw) if raw else None


@dataclass(frozen=True)
class ResolvedConfig:
    run: RunConfig
    hparams: Any
    sources: dict[str, str] = field(default_factory=dict)


def resolve(
    hparams_class: type,
    editor_name: str,
    cli: dict[str, Any],
    overrides: dict[str, str],
    config_file: str | None = None,
    plugin_defaults: Callable[[str], dict[str, Any]] | None = None,
    registered: tuple[Collection[str], Collection[str]] | None = None,
) -> ResolvedConfig:
    """Combine every layer into a RunConfig and the editor's hparams dataclass.

    ``cli`` holds explicit options (``model``, ``data_dir``, ...; None means unset). A ``--set`` key
    may be ``run.<key>``, ``editor.<key>`` or a bare key that belongs to exactly one of the two.
    ``plugin_defaults(model)`` gives plugins' per-model hparams (the ``editor_defaults`` hook), a layer
    between the dataclass defaults and the TOML files. ``registered`` (editor names, model names)
    checks the names of every ``[models."<model>".<editor>]`` section.
    """
    toml = read_toml_files(config_file)
    if registered:
        check_names(toml, *registered)
    run_values: dict[str, Any] = dict(toml.get("run", {}))
    if os.environ.get("HARNESS_DATA_DIR"):
        run_values["data_dir"] = os.environ["HARNESS_DATA_DIR"]
    run_values.update({k: v for k, v in cli.items() if v is not None})
    editor_values: dict[str, Any] = {}
    run_keys, editor_keys = set(field_names(RunConfig)), set(field_names(hparams_class))
    for key, value in overrides.items():
        scope, _, name = key.rpartition(".")
        if scope == "run" or (not scope and name in run_keys and name not in editor_keys):
            if name not in run_keys:
                raise ConfigError(f"--set {key}: unknown run key; valid: {sorted(run_keys)}")
            run_values[name] = value
        elif scope == "editor" or (not scope and name in editor_keys and name not in run_keys):
            if name not in editor_keys:
                raise ConfigError(f"--set {key}: unknown {editor_name} key; valid: {sorted(editor_keys)}")
            editor_values[name] = value
        elif not scope and name in run_keys and name in editor_keys:
            raise ConfigError(f"--set {key}: ambiguous; write run.{name} or editor.{name}")
        else:
            raise ConfigError(
                f"--set {key}: unknown key. Run keys: {sorted(run_keys)}; "
                f"{editor_name} keys: {sorted(editor_keys)}"
            )
    run = build(RunConfig, run_values, "run config")
    model_section = toml.get("models", {}).get(run.model, {})
    per_model = dict(model_section.get(editor_name, {}))
    from_plugins = plugin_defaults(run.model) if plugin_defaults else {}
    hparams = build(hparams_class, {**from_plugins, **per_model, **editor_values}, f"{editor_name} hparams")
    sources = {
        "plugin_defaults": sorted(from_plugins) or "none",
        "per_model_defaults": f'[models."{run.model}".{editor_name}]' if per_model else "none",
    }
    return ResolvedConfig(run=run, hparams=hparams, sources=sources)
