"""One run from Python or the CLI, in four steps: ``resolve`` (settings, editor, task) -> ``plan``
(records, model, prepared editor, output directory) -> ``execute`` (the edit loop) -> ``report``
(results.json). ``train`` and ``apply_edit`` are the other two entry points."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness import (
    abilities,
    fallbacks,
    plugins,
    protocols,
    provenance,
    shards,
    subjects,
    training,
    uncertainty,
)
from harness import config as config_module
from harness.api import ABILITY, Edit, Editor, EditorContext, EditRequest, Record, is_ability
from harness.evaluator import Restoring, RunContext, Scorer, evaluate
from harness.models import LoadedModel, cache_dir, cache_lock, file_sha256, load_model
from harness.results import (
    RESULTS,
    SampleLog,
    aggregate,
    check_manifest,
    edit_timings,
    lock_output,
    unlock_output,
    write_json,
)
from harness.sequential import Accumulating, decay_curve
from harness.templates import Templates

log = logging.getLogger(__name__)

THEN = "then"  # subdirectory of an editing run holding the ability tasks measured after its edits
VERSIONED_PACKAGES = ("kedit-harness", "torch", "transformers", "datasets", "evaluate", "pluggy", "jinja2")
# run settings that name a run's place, device or scoring profile rather than what it computes: the
# same run on another device (or with the task's default profile named) resumes the same directory
NOT_IN_MANIFEST = (
    *("limit", "output_dir", "threads", shards.SHARD_KEY, "device", "dtype", "device_map"),
    *("protocol", "ability_protocol"),
)


class DataError(ValueError):
    """The task's records fail validation; the message lists them by index and field."""


# ---------------------------------------------------------------- resolve


@dataclass(frozen=True)
class Resolved:
    """What a run was asked for, every setting resolved: the editor, its hparams, the task."""

    editor: str
    editor_class: type[Editor]
    cfg: config_module.RunConfig
    hparams: Any
    hparams_sources: dict[str, Any]
    task: Any  # the task with its scoring profile selected
    data_path: Path | None
    then: list[Any]  # ability tasks measured after the edits (--then)
    started: float  # time.perf_counter() when the run began
    started_at: float  # time.time() when the run began


def resolve(
    editor: str,
    task: str,
    settings: dict[str, Any],
    overrides: dict[str, Any] | None,
    config_file: str | None,
) -> Resolved:
    """Look up the editor and task and layer every setting (``harness.config.resolve``); a name,
    setting or mode the run cannot use fails here, before anything is loaded."""
    started, started_at = time.perf_counter(), time.time()
    editor_class = plugins.lookup("editor", editor, plugins.editors())
    resolved = _resolve_config(editor, editor_class, settings, overrides or {}, config_file)
    cfg = resolved.run
    data_path = Path(cfg.data_dir) if cfg.data_dir else None
    registered = plugins.tasks(data_path)
    task_obj = protocols.select(plugins.lookup("task", task, registered), cfg.protocol)
    then = (
        []
        if is_ability(task_obj)
        else [_ability_task(n, registered, cfg.ability_protocol) for n in _names(cfg.then)]
    )
    if not is_ability(task_obj) and cfg.mode not in editor_class.capabilities.modes:
        able = sorted(n for n, c in plugins.editors().items() if cfg.mode in c.capabilities.modes)
        raise config_module.ConfigError(
            f"--mode {cfg.mode}: editor {editor!r} supports {list(editor_class.capabilities.modes)}; "
            f"editors that support {cfg.mode}: {able}"
        )
    return Resolved(
        editor,
        editor_class,
        cfg,
        resolved.hparams,
        resolved.sources,
        task_obj,
        data_path,
        then,
        started,
        started_at,
    )


def _resolve_config(
    editor: str, editor_class: type[Editor], settings: dict[str, Any], overrides: dict[str, Any], config_file
) -> config_module.ResolvedConfig:
    return config_module.resolve(
        editor_class.hparams_class,
        editor,
        settings,
        {k: str(v) for k, v in overrides.items()},
        config_file,
        lambda model_name: plugins.editor_defaults(editor, model_name),
        (plugins.editors(), plugins.models()),
    )


def _names(listing: str) -> list[str]:
    return [name.strip() for name in listing.split(",") if name.strip()]


def _ability_task(name: str, registered: dict[str, Any], protocol: str) -> Any:
    task = plugins.lookup("task", name, registered)
    if not is_ability(task):
        able = sorted(n for n, t in registered.items() if is_ability(t))
        raise config_module.ConfigError(f"--then {name}: not an ability task; ability tasks: {able}")
    return protocols.select(task, protocol, "ability_protocol")


# ---------------------------------------------------------------- plan


@dataclass
class Selection:
    """The records this process edits, and what they were read with."""

    records: list[Record]
    template: str
    templates: Templates
    data_files: dict[str, str]
    aligned: subjects.AlignedRecords | None
    part: shards.Shard | None
    part_info: dict[str, Any] | None


@dataclass
class Plan:
    """Everything ``execute`` needs: the records, the loaded model, the prepared editor, the output
    directory (locked, its manifest checked) and what the run is (``manifest``)."""

    resolved: Resolved
    selection: Selection
    loaded: LoadedModel
    scorer: Scorer
    editor: Editor
    then: list[abilities.AbilitySetup]
    manifest: dict[str, Any]
    out: Path
    timings: dict[str, float]


def load_task_records(task, data_dir: Path | None, template: str, templates: Templates, limit: int):
    """Raw data -> validated records (first ``limit``); errors name every bad record and field."""
    raw = task.load_raw(data_dir)
    if limit:
        raw = raw[:limit]
    issues = task.validate(raw)
    if issues:
        shown = "\n  ".join(str(i) for i in issues[:10])
        more = f"\n  ... and {len(issues) - 10} more" if len(issues) > 10 else ""
        raise DataError(
            f"task {task.name}: {len(issues)} bad record(s):\n  {shown}{more}\n"
            f"Run `harness validate --task {task.name}` for the full list."
        )
    return task.records(raw, lambda question: templates.render(template, question=question))


def select_records(resolved: Resolved) -> Selection:
    """The task's records (first ``limit``), aligned with their subjects for editors that locate them,
    and of those this process's shard."""
    cfg, task = resolved.cfg, resolved.task
    templates = Templates()
    template = cfg.template or task.template
    records = load_task_records(task, resolved.data_path, template, templates, cfg.limit)
    data_files = {str(p): file_sha256(p) for p in task.data_files(resolved.data_path)}
    aligned = None
    if resolved.editor_class.capabilities.locates_subject:
        aligned = subjects.align_records(records, cfg.subject_fallback, cfg.subject_fuzzy_threshold)
        if records and not aligned.records:
            raise DataError(
                f"task {task.name}: subject_fallback=skip left out all {len(records)} records (no subject "
                f"could be aligned with its prompt, e.g. record {records[0].id!r}); nothing would be "
                "evaluated. Use subject_fallback=prompt_end, or an editor that does not locate the subject"
            )
        records = aligned.records
    part, part_info = _shard(cfg), None
    if part:
        ids = [r.id for r in records]
        part_info = shards.describe(part, ids, cfg.batch_size)
        mine = set(shards.assigned(ids, cfg.batch_size, part))
        records = [r for r in records if r.id in mine]
    return Selection(records, template, templates, data_files, aligned, part, part_info)


def _shard(cfg: config_module.RunConfig) -> shards.Shard | None:
    """``--shard`` if given, else the launcher's rank (refused in accumulating modes)."""
    if cfg.shard:
        return shards.Shard.parse(cfg.shard)
    part = shards.Shard.from_environment()
    if part and cfg.mode in config_module.ACCUMULATING_MODES:
        raise config_module.ConfigError(
            f"WORLD_SIZE={part.count}: mode {cfg.mode} keeps every edit for the next and cannot be split "
            "over processes; launch it as one process"
        )
    return part


def plan(resolved: Resolved) -> Plan:
    """Select the records, load the model, prepare the editor (before the output directory is
    touched: a bad setting, such as a layer the model lacks, leaves no half-made run behind), then
    lock the output directory and check it holds this run or nothing."""
    cfg = resolved.cfg
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    fallbacks.reset()
    selection = select_records(resolved)
    then = [abilities.AbilitySetup.of(t, resolved.data_path, cfg.ability_limit) for t in resolved.then]
    load_started = time.perf_counter()
    loaded = load_model(cfg.model, plugins.models(), cfg.placement())
    timings = {"model_load_seconds": time.perf_counter() - load_started}
    editor = resolved.editor_class(resolved.hparams)
    for name in editor.template_names():
        selection.templates.hash(name)
    manifest = _manifest(resolved, selection, loaded, then)
    prepare_started = time.perf_counter()
    editor.prepare(loaded.model, loaded.tokenizer, _editor_context(resolved, selection, loaded))
    timings["prepare_seconds"] = time.perf_counter() - prepare_started
    out = _output_dir(cfg, resolved.editor, resolved.task.name, manifest)
    if selection.part:
        out = out / selection.part.dirname
        manifest[shards.SHARD_KEY] = {"index": selection.part.index, "count": selection.part.count}
    lock_output(out)
    check_manifest(out, manifest)
    fallbacks.persist(out)
    return Plan(resolved, selection, loaded, _scorer(resolved, loaded), editor, then, manifest, out, timings)


def _manifest(
    resolved: Resolved, selection: Selection, loaded: LoadedModel, then: list[abilities.AbilitySetup]
) -> dict[str, Any]:
    """What the run computes: a directory holding a different run is never resumed into."""
    cfg = resolved.cfg
    manifest = {
        "editor": resolved.editor,
        "task": resolved.task.name,
        "hparams": dataclasses.asdict(resolved.hparams),
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_MANIFEST},
        "model_sha256": loaded.identity["sha256"],
        "runtime": loaded.runtime.value_identity(),
        "protocol": protocols.name_of(resolved.task),
        "data": selection.data_files,
        "templates": dict(selection.templates.used),
    }
    if cfg.mode in config_module.ACCUMULATING_MODES:
        # every edit stays in force for the records probed after it: the record set is the run
        manifest["records"] = [r.id for r in selection.records]
    if then:
        manifest["then"] = {s.task.name: s.identity(loaded.fingerprint) for s in then}
    return manifest


def _editor_context(resolved: Resolved, selection: Selection, loaded: LoadedModel) -> EditorContext:
    return EditorContext(
        cache_dir=cache_dir(),
        seed=resolved.cfg.seed,
        data_dir=resolved.data_path,
        model_id=loaded.fingerprint,
        model_name=resolved.cfg.model,
        languages=tuple(resolved.task.languages),
        training_set=getattr(resolved.task, "training_set", ""),
        templates=selection.templates,
        protocol=protocols.name_of(resolved.task),
    )


def _scorer(resolved: Resolved, loaded: LoadedModel) -> Scorer:
    """Scores with the registered metrics (and the task's own), on the model's tokens or on those of
    the fixed ``scoring_tokenizer`` a published protocol used."""
    tokenizer = loaded.tokenizer
    if resolved.cfg.scoring_tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(resolved.cfg.scoring_tokenizer)
    return Scorer(tokenizer, {**plugins.metric_functions(), **getattr(resolved.task, "metric_overrides", {})})


def _output_dir(cfg: config_module.RunConfig, editor: str, task: str, manifest: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:10]
    return Path(cfg.output_dir or Path("results") / _slug(cfg.model) / editor / f"{task}-{digest}")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in text)


# ---------------------------------------------------------------- execute


@dataclass
class Execution:
    """What the edit loop produced: every selected record's sample, the invocations that wrote them,
    the unedited model's result of each ``--then`` task."""

    run: RunContext
    samples: list[dict[str, Any]]
    invocation: provenance.Invocation  # this process: its commit and library versions
    invocations: list[dict[str, Any]]
    unedited: dict[str, dict[str, Any]]


def execute(the_plan: Plan, progress: bool) -> Execution:
    """Measure the unedited model on the ``--then`` tasks, run the edit loop under the mode's policy
    (resuming what an earlier invocation logged), and list the invocations that wrote records."""
    cfg, loaded, out = the_plan.resolved.cfg, the_plan.loaded, the_plan.out
    invocation = provenance.Invocation.begin(out, _git_commit(), _versions(), the_plan.resolved.started_at)
    unedited = {
        s.task.name: abilities.baseline(s, loaded.model, loaded.tokenizer, loaded.fingerprint, progress)
        for s in the_plan.then
    }
    run_context = RunContext(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        editor=the_plan.editor,
        records=the_plan.selection.records,
        scorer=the_plan.scorer,
        answer_mode=cfg.answer_mode,
        probe_batch_size=cfg.probe_batch_size,
        edit_batch_size=cfg.batch_size,
        accumulate=cfg.mode in config_module.ACCUMULATING_MODES,
        probe_every=cfg.probe_every,
        output_dir=out,
        cache_dir=cache_dir(),
        model_fingerprint=loaded.fingerprint,
        alignments=the_plan.selection.aligned.per_record if the_plan.selection.aligned else {},
    )
    if the_plan.then:
        run_context.after_edits = lambda: _measure_then(the_plan, progress)
    policy = Accumulating(run_context) if run_context.accumulate else Restoring(run_context)
    samples = evaluate(run_context, SampleLog(out, stamp=invocation.stamp), policy, progress=progress)
    invocation.finish(out, time.time())
    invocations = provenance.history(out, samples, invocation)
    return Execution(run_context, samples, invocation, invocations, unedited)


def _measure_then(the_plan: Plan, progress: bool) -> None:
    """Each ``--then`` task on the model holding every edit, into ``<output dir>/then/<task>``."""
    loaded = the_plan.loaded
    for setup in the_plan.then:
        setup.evaluate(loaded.model, loaded.tokenizer, the_plan.out / THEN / setup.task.name, progress)


# ---------------------------------------------------------------- report


def report(the_plan: Plan, execution: Execution) -> dict[str, Any]:
    """results.json: the scores, what produced them and how long it took; then ``after_run`` and, for
    rank 0 of a launcher, the merge of every shard."""
    resolved, selection, cfg = the_plan.resolved, the_plan.selection, the_plan.resolved.cfg
    task, samples, accumulate = resolved.task, execution.samples, execution.run.accumulate
    results = {
        "results": {task.name: aggregate(samples, "post")},
        "pre_edit": {task.name: aggregate(samples, "pre")},
        "stderr": uncertainty.settings(),
        "n-samples": {task.name: len(samples)},
        "record_ids": [s["record_id"] for s in samples],
        **_described(resolved, the_plan.loaded, the_plan.out, execution.invocation),
        "task": {
            "name": task.name,
            "description": task.description,
            "edit_language": task.edit_language,
            "template": selection.template,
        },
        "editing": {
            "mode": cfg.mode,
            "batch_size": cfg.batch_size,
            "edits_applied": len(samples),
            "edits_in_force_when_probed": len(samples) if accumulate else cfg.batch_size,
            "probe_every": cfg.probe_every,
        },
        "hparams": dataclasses.asdict(resolved.hparams),
        "hparams_sources": resolved.hparams_sources,
        "data": selection.data_files if resolved.data_path else {"bundled_sample": selection.data_files},
        "templates": dict(selection.templates.used),
        "scoring": {
            "tokenizer": cfg.scoring_tokenizer or f"model:{cfg.model}",
            "answer_mode": cfg.answer_mode,
        },
        "protocol": protocols.record(task, cfg.scoring_tokenizer, resolved.data_path),
        "fallbacks": fallbacks.in_run(the_plan.out),
        "invocations": execution.invocations,
        "timings": {
            "total_seconds": provenance.total_seconds(execution.invocations),
            "invocation_seconds": time.perf_counter() - resolved.started,
            **the_plan.timings,
            **edit_timings(samples),
        },
    }
    results.update(_optional_sections(the_plan, execution))
    return _finish(results, the_plan.out, execution.run, selection.part if not cfg.shard else None)


def _optional_sections(the_plan: Plan, execution: Execution) -> dict[str, Any]:
    """The decay curve, subject alignment, ``--then`` tasks and shard of the runs that have them."""
    sections: dict[str, Any] = {}
    cfg, selection = the_plan.resolved.cfg, the_plan.selection
    if the_plan.editor.trained_with is not None:
        sections["training"] = training.run_record(the_plan.editor.trained_with)
    if execution.run.accumulate:
        sections["decay"] = decay_curve(the_plan.out)
    if selection.aligned:
        sections["subject_alignment"] = selection.aligned.summary(
            cfg.subject_fallback, cfg.subject_fuzzy_threshold
        )
    if the_plan.then:
        model, unedited = the_plan.loaded.fingerprint, execution.unedited
        sections["then"] = {
            s.task.name: _then_entry(s, the_plan.out, unedited[s.task.name], model) for s in the_plan.then
        }
    if selection.part:
        sections[shards.SHARD_KEY] = selection.part_info
    return sections


def _described(
    resolved: Resolved, loaded: LoadedModel, out: Path, invocation: provenance.Invocation | None
) -> dict[str, Any]:
    """The parts of results.json every run has: editor, settings, model, versions, where it is
    (versions and commit as ``invocation`` recorded them, or looked up now)."""
    return {
        "editor": resolved.editor,
        "config": dataclasses.asdict(resolved.cfg),
        "model": loaded.identity,
        "versions": invocation.versions if invocation else _versions(),
        "git_commit": invocation.commit if invocation else _git_commit(),
        "output_dir": str(out),
    }


def _finish(
    results: dict[str, Any], out: Path, run: RunContext | None, launched: shards.Shard | None
) -> dict:
    """Write results.json, release the directory, call ``after_run``; rank 0 of a launcher (``launched``)
    then waits for the other shards and returns the merged result."""
    write_json(out / RESULTS, results)
    unlock_output(out)
    plugins.call("after_run", results=results, run=run)
    if launched and launched.index == 0:
        return shards.wait_and_merge(out.parent, launched.count)
    return results


def _then_entry(setup: abilities.AbilitySetup, out: Path, unedited: dict[str, Any], model: str) -> dict:
    """An ability task measured after the edits, beside the unedited model's cached result, with a
    paired interval of the change (``model``: the unedited model's fingerprint)."""
    path = out / THEN / setup.task.name / RESULTS
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: the run finished without measuring {setup.task.name}")
    edited = json.loads(path.read_text(encoding="utf-8"))
    predictions = [setup.predictions(path.parent), setup.predictions(abilities.baseline_dir(setup, model))]
    return {
        "metric": setup.task.metric,
        "protocol": protocols.name_of(setup.task),
        "n": setup.limit,
        "edited": edited["metrics"],
        "unedited": unedited["metrics"],
        "change": abilities.change(edited["metrics"], unedited["metrics"]),
        "change_ci95": setup.change_intervals(*predictions),
        "seconds": edited["seconds"],
    }


def _versions() -> dict[str, str]:
    """Python, the named dependencies and every package that provides a loaded plugin."""
    found = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    found.update(plugins.plugin_packages())
    return found


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


# ---------------------------------------------------------------- entry points


def run(
    editor: str,
    task: str,
    *,
    overrides: dict[str, Any] | None = None,
    config_file: str | None = None,
    progress: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """Evaluate ``editor`` on ``task`` and return the results dictionary (also in results.json).

    ``settings`` are run settings by their ``harness.config.RunConfig`` names, the names the CLI's
    options and harness.toml's ``[run]`` use (None: unset), e.g. ``model``, ``limit``, ``mode``,
    ``then``, ``ability_limit``, ``shard``, ``device``; ``overrides`` are ``--set`` pairs (run or
    editor keys). ``shard`` ("i/n") edits only that part of the records, in
    ``<output dir>/shard-i-of-n``; under a distributed launcher each rank takes its shard and rank 0
    merges them. ``then`` names ability tasks measured on the model holding every edit of an
    accumulating run, beside the unedited model. An ability task as ``task`` runs alone on the
    unedited model (``--editor none``), ``limit`` capping its examples.

    Running again with the same output directory resumes: finished edits are read back, not redone;
    results.json lists every invocation that wrote records (``harness.provenance``).
    """
    resolved = resolve(editor, task, settings, overrides, config_file)
    if is_ability(resolved.task):
        return run_ability(resolved, settings.get("limit"), progress)
    the_plan = plan(resolved)
    return report(the_plan, execute(the_plan, progress))


def run_ability(resolved: Resolved, limit: int | None, progress: bool) -> dict[str, Any]:
    """An ability task on the unedited model (its result is the cached baseline ``--then`` compares to);
    ``limit`` if given caps its examples, else ``ability_limit``."""
    cfg, task = resolved.cfg, resolved.task
    _check_ability_run(resolved)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    setup = abilities.AbilitySetup.of(
        task, resolved.data_path, cfg.ability_limit if limit is None else cfg.limit
    )
    load_started = time.perf_counter()
    loaded = load_model(cfg.model, plugins.models(), cfg.placement())
    load_seconds = time.perf_counter() - load_started
    identity = {"editor": resolved.editor, **setup.identity(loaded.fingerprint)}
    out = _output_dir(cfg, resolved.editor, task.name, identity)
    lock_output(out)
    check_manifest(out, identity)
    result = abilities.baseline(setup, loaded.model, loaded.tokenizer, loaded.fingerprint, progress)
    baseline = abilities.baseline_dir(setup, loaded.fingerprint) / abilities.PREDICTIONS
    shutil.copyfile(baseline, out / abilities.PREDICTIONS)
    results = {
        "results": {task.name: result["metrics"]},
        "n-samples": {task.name: setup.limit},
        **_described(resolved, loaded, out, None),
        "task": {
            "name": task.name,
            "description": task.description,
            "kind": ABILITY,
            "metric": task.metric,
            "template": task.template,
        },
        "protocol": protocols.record(task, "", resolved.data_path),
        "data": setup.data,
        "templates": setup.templates,
        "timings": {
            "total_seconds": time.perf_counter() - resolved.started,
            "model_load_seconds": load_seconds,
            "ask_seconds": result["seconds"],
        },
    }
    return _finish(results, out, None, None)


def _check_ability_run(resolved: Resolved) -> None:
    """An ability task measures the unedited model, in one process, in single mode."""
    cfg, task, editor = resolved.cfg, resolved.task, resolved.editor
    if resolved.editor_class.capabilities.changes_model:
        raise config_module.ConfigError(
            f"task {task.name} measures a model, not an edit: run it with an editor that changes nothing "
            f"(--editor none), or after edits: harness run --editor {editor} --task <editing task> "
            f"--mode sequential --then {task.name}"
        )
    if cfg.mode != "single" or cfg.then:
        raise config_module.ConfigError(f"task {task.name}: --mode and --then apply to editing tasks only")
    if cfg.shard or shards.Shard.from_environment():
        raise config_module.ConfigError(
            f"task {task.name}: an ability task runs in one process; sharding (--shard, or a launcher's "
            "WORLD_SIZE) splits editing tasks only"
        )


def train(
    editor: str,
    *,
    train_data: str | None = None,
    train_limit: int | None = None,
    overrides: dict[str, Any] | None = None,
    config_file: str | None = None,
    progress: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """Train an editor that learns (``capabilities.trains``) and store its checkpoint in the cache.

    ``train_data`` and ``train_limit`` are the editor's settings of those names; ``settings`` are run
    settings as for ``run`` (``model``, ``data_dir``, ``seed``, ``device``, ``dtype``). The
    checkpoint is keyed by model, training data and training hparams, so ``harness run`` with the
    same settings finds it; a finished checkpoint is not trained again, an interrupted one resumes.
    """
    editor_class = plugins.lookup("editor", editor, plugins.editors())
    if not editor_class.capabilities.trains:
        trainable = sorted(n for n, c in plugins.editors().items() if c.capabilities.trains)
        raise config_module.ConfigError(
            f"editor {editor!r} needs no training; editors that train: {trainable}"
        )
    chosen = {"editor.train_data": train_data, "editor.train_limit": train_limit}
    overrides = {**(overrides or {}), **{k: v for k, v in chosen.items() if v is not None}}
    resolved = _resolve_config(editor, editor_class, settings, overrides, config_file)
    cfg, hparams = resolved.run, resolved.hparams
    data_path = Path(cfg.data_dir) if cfg.data_dir else None
    if not hparams.train_data:
        names = sorted(plugins.training_sets(data_path))
        raise config_module.ConfigError(f"harness train needs --train-data NAME (one of {names})")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data = training.load_training_set(hparams.train_data, cfg.data_dir or None, editor)
    train_examples, validation = training.split(data, hparams)
    loaded = load_model(cfg.model, plugins.models(), cfg.placement())
    editor_obj = editor_class(hparams)
    directory = training.checkpoint_dir(
        editor, hparams, loaded.fingerprint, data, editor_obj.checkpoint_extra()
    )
    if (done := _trained(directory)) is not None:  # without the lock: the cache may be read-only
        return done
    with cache_lock(directory):  # a second `harness train` of the same checkpoint waits for the first
        if (done := _trained(directory)) is not None:
            return done
        directory.mkdir(parents=True, exist_ok=True)
        about = {
            "editor": editor,
            "model": loaded.identity,
            "data": training.describe(data),
            "hparams": dataclasses.asdict(hparams),
        }
        session = training.TrainingSession(directory, train_examples, validation, cfg.seed, progress, about)
        context = EditorContext(
            cache_dir(), cfg.seed, data_path, loaded.fingerprint, cfg.model, training_set=data.name
        )
        return editor_obj.train(loaded.model, loaded.tokenizer, session, context)


def _trained(directory: Path) -> dict[str, Any] | None:
    """The summary of the checkpoint trained in ``directory``, if it is there."""
    if not (directory / training.CHECKPOINT).is_file():
        return None
    log.info("already trained: %s", directory)
    return json.loads((directory / training.SUMMARY).read_text(encoding="utf-8"))


def apply_edit(
    model: torch.nn.Module,
    tokenizer: Any,
    editor: str,
    requests: EditRequest | list[EditRequest],
    hparams: dict[str, Any] | None = None,
    seed: int = 0,
) -> Edit:
    """Apply one editor to an already loaded model, in place, for a one-off edit in a notebook.

    The model IS changed when this returns; call ``edit.restore()`` (or use ``with``) to get the
    exact original weights back.
    """
    editor_class = plugins.lookup("editor", editor, plugins.editors())
    params = config_module.build(editor_class.hparams_class, hparams or {}, f"{editor} hparams")
    editor_obj = editor_class(params)
    editor_obj.prepare(
        model,
        tokenizer,
        EditorContext(cache_dir=cache_dir(), seed=seed, model_id=getattr(model, "harness_fingerprint", "")),
    )
    return editor_obj.apply(model, tokenizer, requests if isinstance(requests, list) else [requests])
