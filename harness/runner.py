"""One run from Python or the CLI: resolve config, load plugins/model/data, evaluate, write results."""

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
from pathlib import Path
from typing import Any

import torch

from harness import abilities, plugins, protocols, provenance, shards, subjects, training, uncertainty
from harness import config as config_module
from harness.api import ABILITY, Edit, EditorContext, EditRequest, is_ability
from harness.evaluator import RunContext, Scorer, evaluate
from harness.models import cache_dir, file_sha256, load_model
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
from harness.sequential import decay_curve, evaluate_accumulating
from harness.templates import Templates

log = logging.getLogger(__name__)

THEN = "then"  # subdirectory of an editing run holding the ability tasks measured after its edits
VERSIONED_PACKAGES = ("kedit-harness", "torch", "transformers", "datasets", "evaluate", "pluggy", "jinja2")


class DataError(ValueError):
    """The task's records fail validation; the message lists them by index and field."""


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


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in text)


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


def _names(listing: str) -> list[str]:
    return [name.strip() for name in listing.split(",") if name.strip()]


def _ability_task(name: str, registered: dict[str, Any], protocol: str) -> Any:
    task = plugins.lookup("task", name, registered)
    if not is_ability(task):
        able = sorted(n for n, t in registered.items() if is_ability(t))
        raise config_module.ConfigError(f"--then {name}: not an ability task; ability tasks: {able}")
    return protocols.select(task, protocol, "ability_protocol")


def _output_dir(cfg: config_module.RunConfig, editor: str, task: str, manifest: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:10]
    return Path(cfg.output_dir or Path("results") / _slug(cfg.model) / editor / f"{task}-{digest}")


def _then_entry(setup: abilities.AbilitySetup, out: Path, unedited: dict[str, Any]) -> dict[str, Any]:
    """An ability task measured after the edits, beside the unedited model's cached result."""
    path = out / THEN / setup.task.name / RESULTS
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: the run finished without measuring {setup.task.name}")
    edited = json.loads(path.read_text(encoding="utf-8"))
    return {
        "metric": setup.task.metric,
        "protocol": protocols.name_of(setup.task),
        "n": setup.limit,
        "edited": edited["metrics"],
        "unedited": unedited["metrics"],
        "change": abilities.change(edited["metrics"], unedited["metrics"]),
        "seconds": edited["seconds"],
    }


def _run_ability(
    editor: str,
    editor_class: type,
    task,
    cfg: config_module.RunConfig,
    limit: int,
    started: float,
    progress: bool,
) -> dict[str, Any]:
    """An ability task on the unedited model (its result is the cached baseline ``--then`` compares to)."""
    if editor_class.capabilities.changes_model:
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
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data_path = Path(cfg.data_dir) if cfg.data_dir else None
    setup = abilities.AbilitySetup.of(task, data_path, limit)
    load_started = time.perf_counter()
    loaded = load_model(cfg.model, plugins.models(), cfg.placement())
    load_seconds = time.perf_counter() - load_started
    identity = setup.identity(loaded.fingerprint)
    out = _output_dir(cfg, editor, task.name, {"editor": editor, **identity})
    lock_output(out)
    check_manifest(out, {"editor": editor, **identity})
    result = abilities.baseline(setup, loaded.model, loaded.tokenizer, loaded.fingerprint, progress)
    shutil.copyfile(
        abilities.baseline_dir(setup, loaded.fingerprint) / abilities.PREDICTIONS,
        out / abilities.PREDICTIONS,
    )
    results = {
        "results": {task.name: result["metrics"]},
        "n-samples": {task.name: setup.limit},
        "editor": editor,
        "task": {
            "name": task.name,
            "description": task.description,
            "kind": ABILITY,
            "metric": task.metric,
            "template": task.template,
        },
        "protocol": protocols.record(task, "", data_path),
        "config": dataclasses.asdict(cfg),
        "model": loaded.identity,
        "data": setup.data,
        "templates": setup.templates,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "timings": {
            "total_seconds": time.perf_counter() - started,
            "model_load_seconds": load_seconds,
            "ask_seconds": result["seconds"],
        },
        "output_dir": str(out),
    }
    write_json(out / RESULTS, results)
    unlock_output(out)
    plugins.call("after_run", results=results, run=None)
    return results


def run(
    editor: str,
    task: str,
    model: str | None = None,
    data_dir: str | None = None,
    output_dir: str | None = None,
    limit: int | None = None,
    seed: int | None = None,
    mode: str | None = None,
    batch_size: int | None = None,
    overrides: dict[str, Any] | None = None,
    config_file: str | None = None,
    progress: bool = True,
    probe_every: int | None = None,
    then: str | None = None,
    then_limit: int | None = None,
    shard: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    device_map: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``editor`` on ``task`` and return the results dictionary (also in results.json).

    ``shard`` ("i/n") edits only that part of the records, in ``<output dir>/shard-i-of-n``; under a
    distributed launcher (RANK/WORLD_SIZE set) each rank takes its shard and rank 0 merges them.

    ``then`` names ability tasks (comma-separated) measured on the model holding every edit of an
    accumulating run, beside the unedited model; ``then_limit`` caps their examples. An ability task
    as ``task`` runs alone on the unedited model (``--editor none``), ``limit`` capping its examples.

    ``device``, ``dtype`` and ``device_map`` place the model (``harness.runtime``).

    Running again with the same output directory resumes: finished edits are read back, not redone;
    results.json lists every invocation that wrote records (``harness.provenance``).
    """
    started, started_at = time.perf_counter(), time.time()
    editor_class = plugins.lookup("editor", editor, plugins.editors())
    cli = {
        "model": model,
        "data_dir": data_dir,
        "output_dir": output_dir,
        "limit": limit,
        "seed": seed,
        "mode": mode,
        "batch_size": batch_size,
        "probe_every": probe_every,
        "then": then,
        "ability_limit": then_limit,
        "shard": shard,
        "device": device,
        "dtype": dtype,
        "device_map": device_map,
    }
    resolved = config_module.resolve(
        editor_class.hparams_class,
        editor,
        cli,
        {k: str(v) for k, v in (overrides or {}).items()},
        config_file,
        lambda model_name: plugins.editor_defaults(editor, model_name),
        (plugins.editors(), plugins.models()),
    )
    cfg = resolved.run
    data_path = Path(cfg.data_dir) if cfg.data_dir else None
    registered = plugins.tasks(data_path)
    task_obj = protocols.select(plugins.lookup("task", task, registered), cfg.protocol)
    if is_ability(task_obj):
        ability_limit = cfg.ability_limit if limit is None else cfg.limit
        return _run_ability(editor, editor_class, task_obj, cfg, ability_limit, started, progress)
    then = [_ability_task(name, registered, cfg.ability_protocol) for name in _names(cfg.then)]
    if cfg.mode not in editor_class.capabilities.modes:
        able = sorted(n for n, c in plugins.editors().items() if cfg.mode in c.capabilities.modes)
        raise config_module.ConfigError(
            f"--mode {cfg.mode}: editor {editor!r} supports {list(editor_class.capabilities.modes)}; "
            f"editors that support {cfg.mode}: {able}"
        )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    templates = Templates()
    template = cfg.template or task_obj.template
    records = load_task_records(task_obj, data_path, template, templates, cfg.limit)
    data_files = {str(p): file_sha256(p) for p in task_obj.data_files(data_path)}
    then_setups = [abilities.AbilitySetup.of(t, data_path, cfg.ability_limit) for t in then]
    aligned = None
    if editor_class.capabilities.locates_subject:
        aligned = subjects.align_records(records, cfg.subject_fallback, cfg.subject_fuzzy_threshold)
        if records and not aligned.records:
            raise DataError(
                f"task {task}: subject_fallback=skip left out all {len(records)} records (no subject could "
                f"be aligned with its prompt, e.g. record {records[0].id!r}); nothing would be evaluated. "
                "Use subject_fallback=prompt_end, or an editor that does not locate the subject"
            )
        records = aligned.records
    part = _shard(cfg)
    if part:
        mine = set(shards.assigned([r.id for r in records], cfg.batch_size, part))
        part_info = shards.describe(part, [r.id for r in records], cfg.batch_size)
        records = [r for r in records if r.id in mine]

    load_started = time.perf_counter()
    loaded = load_model(cfg.model, plugins.models(), cfg.placement())
    load_seconds = time.perf_counter() - load_started
    scoring = loaded.tokenizer
    if cfg.scoring_tokenizer:
        from transformers import AutoTokenizer

        scoring = AutoTokenizer.from_pretrained(cfg.scoring_tokenizer)
    hparams = dataclasses.asdict(resolved.hparams)
    editor_obj = editor_class(resolved.hparams)
    for name in editor_obj.template_names():
        templates.hash(name)
    run_config = {
        k: v
        for k, v in dataclasses.asdict(cfg).items()
        # placement is recorded as resolved (``runtime`` below): --device auto and cpu are one run
        # as are the scoring profiles: the task's default named or not is one run
        if k
        not in ("limit", "output_dir", "threads", shards.SHARD_KEY, "device", "dtype", "device_map")
        + ("protocol", "ability_protocol")
    }
    manifest = {
        "editor": editor,
        "task": task,
        "hparams": hparams,
        "config": run_config,
        "model_sha256": loaded.identity["sha256"],
        "runtime": loaded.runtime.value_identity(),
        "protocol": protocols.name_of(task_obj),
        "data": data_files,
        "templates": dict(templates.used),
    }
    if cfg.mode in config_module.ACCUMULATING_MODES:
        # every edit stays in force for the records probed after it: the record set is the run
        manifest["records"] = [r.id for r in records]
    if then_setups:
        manifest["then"] = {s.task.name: s.identity(loaded.fingerprint) for s in then_setups}
    # prepared before the output directory is touched: a bad setting (a layer the model lacks)
    # fails without leaving a half-made run behind
    context = EditorContext(
        cache_dir=cache_dir(),
        seed=cfg.seed,
        data_dir=data_path,
        model_id=loaded.fingerprint,
        model_name=cfg.model,
        languages=tuple(task_obj.languages),
        training_set=getattr(task_obj, "training_set", ""),
        templates=templates,
        protocol=protocols.name_of(task_obj),
    )
    prepare_started = time.perf_counter()
    editor_obj.prepare(loaded.model, loaded.tokenizer, context)
    prepare_seconds = time.perf_counter() - prepare_started

    out = _output_dir(cfg, editor, task, manifest)
    if part:
        out = out / part.dirname
        manifest[shards.SHARD_KEY] = {"index": part.index, "count": part.count}
    lock_output(out)
    check_manifest(out, manifest)
    invocation = provenance.Invocation.begin(out, _git_commit(), _versions(), started_at)
    unedited = {
        s.task.name: abilities.baseline(s, loaded.model, loaded.tokenizer, loaded.fingerprint, progress)
        for s in then_setups
    }

    run_context = RunContext(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        editor=editor_obj,
        records=records,
        scorer=Scorer(scoring, {**plugins.metric_functions(), **getattr(task_obj, "metric_overrides", {})}),
        answer_mode=cfg.answer_mode,
        probe_batch_size=cfg.probe_batch_size,
        edit_batch_size=cfg.batch_size,
        accumulate=cfg.mode in config_module.ACCUMULATING_MODES,
        probe_every=cfg.probe_every,
        output_dir=out,
        cache_dir=cache_dir(),
        model_fingerprint=loaded.fingerprint,
        alignments=aligned.per_record if aligned else {},
    )

    def measure_then() -> None:
        for setup in then_setups:
            setup.evaluate(loaded.model, loaded.tokenizer, out / THEN / setup.task.name, progress)

    if then_setups:
        run_context.after_edits = measure_then
    evaluation = evaluate_accumulating if run_context.accumulate else evaluate
    samples = evaluation(run_context, SampleLog(out, stamp=invocation.stamp), progress=progress)
    invocation.finish(out, time.time())
    invocations = provenance.history(out, samples, invocation)
    results = {
        "results": {task: aggregate(samples, "post")},
        "pre_edit": {task: aggregate(samples, "pre")},
        "stderr": uncertainty.settings(),
        "n-samples": {task: len(samples)},
        "record_ids": [s["record_id"] for s in samples],
        "editor": editor,
        "task": {
            "name": task,
            "description": task_obj.description,
            "edit_language": task_obj.edit_language,
            "template": template,
        },
        "config": dataclasses.asdict(cfg),
        "editing": {
            "mode": cfg.mode,
            "batch_size": cfg.batch_size,
            "edits_applied": len(samples),
            "edits_in_force_when_probed": len(samples) if run_context.accumulate else cfg.batch_size,
            "probe_every": cfg.probe_every,
        },
        "hparams": hparams,
        "hparams_sources": resolved.sources,
        "model": loaded.identity,
        "data": data_files if data_path else {"bundled_sample": data_files},
        "templates": dict(templates.used),
        "scoring": {
            "tokenizer": cfg.scoring_tokenizer or f"model:{cfg.model}",
            "answer_mode": cfg.answer_mode,
        },
        "protocol": protocols.record(task_obj, cfg.scoring_tokenizer, data_path),
        "versions": _versions(),
        "git_commit": _git_commit(),
        "invocations": invocations,
        "timings": {
            "total_seconds": provenance.total_seconds(invocations),
            "invocation_seconds": time.perf_counter() - started,
            "model_load_seconds": load_seconds,
            "prepare_seconds": prepare_seconds,
            **edit_timings(samples),
        },
        "output_dir": str(out),
    }
    if run_context.accumulate:
        results["decay"] = decay_curve(out)
    if aligned:
        results["subject_alignment"] = aligned.summary(cfg.subject_fallback, cfg.subject_fuzzy_threshold)
    if then_setups:
        results["then"] = {s.task.name: _then_entry(s, out, unedited[s.task.name]) for s in then_setups}
    if part:
        results[shards.SHARD_KEY] = part_info
    write_json(out / RESULTS, results)
    unlock_output(out)
    plugins.call("after_run", results=results, run=run_context)
    if part and not cfg.shard and part.index == 0:  # rank 0 of a launcher merges the shards
        return shards.wait_and_merge(out.parent, part.count)
    return results


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


def train(
    editor: str,
    train_data: str | None = None,
    train_limit: int | None = None,
    model: str | None = None,
    data_dir: str | None = None,
    seed: int | None = None,
    overrides: dict[str, Any] | None = None,
    config_file: str | None = None,
    progress: bool = True,
    device: str | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Train an editor that learns (``editor.train``) and store its checkpoint in the cache.

    The checkpoint is keyed by model, training data and training hparams, so ``harness run`` with the
    same settings finds it; a finished checkpoint is not trained again, an interrupted one resumes.
    """
    editor_class = plugins.lookup("editor", editor, plugins.editors())
    if not editor_class.capabilities.trains:
        trainable = sorted(n for n, c in plugins.editors().items() if c.capabilities.trains)
        raise config_module.ConfigError(
            f"editor {editor!r} needs no training; editors that train: {trainable}"
        )
    settings = {k: str(v) for k, v in (overrides or {}).items()}
    settings.update(
        {
            f"editor.{k}": str(v)
            for k, v in (("train_data", train_data), ("train_limit", train_limit))
            if v is not None
        }
    )
    cli = {"model": model, "data_dir": data_dir, "seed": seed, "device": device, "dtype": dtype}
    resolved = config_module.resolve(
        editor_class.hparams_class,
        editor,
        cli,
        settings,
        config_file,
        lambda model_name: plugins.editor_defaults(editor, model_name),
        (plugins.editors(), plugins.models()),
    )
    cfg, hparams = resolved.run, resolved.hparams
    if not hparams.train_data:
        names = sorted(plugins.training_sets(Path(cfg.data_dir) if cfg.data_dir else None))
        raise config_module.ConfigError(f"harness train needs --train-data NAME (one of {names})")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data = training.load_training_set(hparams.train_data, cfg.data_dir or None, editor)
    train_examples, validation = training.split(data, hparams)
    loaded = load_model(cfg.model, plugins.models(), cfg.placement())
    editor_obj = editor_class(hparams)
    extra = editor_obj.checkpoint_extra()
    directory = training.checkpoint_dir(editor, hparams, loaded.fingerprint, data, extra)
    if (directory / training.CHECKPOINT).is_file():
        log.info("already trained: %s", directory)
        return json.loads((directory / training.SUMMARY).read_text(encoding="utf-8"))
    directory.mkdir(parents=True, exist_ok=True)
    context = EditorContext(
        cache_dir=cache_dir(),
        seed=cfg.seed,
        data_dir=Path(cfg.data_dir) if cfg.data_dir else None,
        model_id=loaded.fingerprint,
        model_name=cfg.model,
        training_set=data.name,
    )
    about = {
        "editor": editor,
        "model": loaded.identity,
        "data": training.describe(data),
        "hparams": dataclasses.asdict(hparams),
    }
    session = training.TrainingSession(directory, train_examples, validation, cfg.seed, progress, about)
    return editor_obj.train(loaded.model, loaded.tokenizer, session, context)


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
