"""Leaderboards: committed results of every editor x task of a TOML spec on a fixed record subset.

``harness leaderboard SPEC`` runs what is missing (resumable runs under ``runs``), trains editors
that learn first, stores one JSON file per run in ``output`` (the run's results.json plus the
command, record ids and seed that reproduce it) and writes ``output/README.md``. An entry already
stored under the spec's command is kept, so a board too long for one sitting fills up over several
(the run folders need not survive); one stored under another command (an earlier spec) is redone.
Runs go editor by editor, so an editor's training and cached values serve all its entries in turn.
A spec may score every run under several scoring profiles (``protocols``; the first one's files
keep the plain ``output/<task>/<editor>.json`` paths) and split each run over ``processes`` shards.
``--check`` runs everything again in a scratch folder and compares it with the stored files within
the spec's tolerances (``tolerance_from_stderr`` k: a metric may move k times the stored file's
standard error of it, never less than its explicit tolerance): the regression guard CI runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from harness import plugins, report, shards
from harness.compare import HEADLINES, KINDS, Comparison, Tolerance, compare, find_samples, render
from harness.config import ConfigError
from harness.results import data_files, write_json

log = logging.getLogger(__name__)

README = "README.md"
ENTRY_KEY = "leaderboard"  # what a stored file adds to the run's results.json
REUSED_NOTE = (
    ' "From cache": the run read what its editor computes from the unedited weights (value vectors, '
    "KN's neurons) from the cache, computed by an earlier run that needed the same (the other profile, "
    "or an editor of the same family), so its seconds leave that work out."
)


@dataclasses.dataclass(frozen=True)
class LeaderboardSpec:
    """One leaderboard: which model, tasks and editors, on which records, stored where."""

    path: Path  # the spec file; relative paths in it are relative to its folder
    title: str
    model: str
    tasks: tuple[str, ...]
    editors: tuple[str, ...]
    limit: int  # the first ``limit`` records of each task
    output: Path  # committed: one JSON file per run and README.md
    runs: Path  # full run folders (samples.jsonl), resumable, not committed
    seed: int = 0
    settings: tuple[tuple[str, str], ...] = ()  # --set key=value for every run
    tolerances: tuple[str, ...] = ()  # PATTERN=ABS for --check (compare's rule)
    tolerance_from_stderr: float = 0.0  # --check: k x the stored stderr, at least the tolerances
    notes: str = ""  # Markdown shown under the title
    charts: bool = True  # an overlay radar and a cross-lingual gap chart per task in output/charts
    protocols: tuple[str, ...] = ("",)  # scoring profiles ("": each task's default), each a table
    model_description: str = ""  # what the model is, for readers (its name is often a short alias)
    processes: int = 1  # shards each run is split over, run side by side (harness.shards)

    @classmethod
    def load(cls, path: str | Path) -> LeaderboardSpec:
        """Read and check a spec; unknown or missing keys are errors that name them."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"leaderboard spec {path}: {error}") from error
        known = {f.name for f in dataclasses.fields(cls)} - {"path"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"leaderboard spec {path}: unknown key(s) {unknown}; known: {sorted(known)}")
        missing = sorted(k for k in ("model", "tasks", "editors", "limit", "output", "runs") if k not in raw)
        if missing:
            raise ConfigError(f"leaderboard spec {path}: missing key(s) {missing}")
        _check_values(raw, path)
        factor = raw.get("tolerance_from_stderr", 0.0)

        def under_spec(relative: str) -> Path:
            return Path(os.path.normpath(path.parent / relative))

        return cls(
            path=path,
            title=raw.get("title", f"{raw['model']} leaderboard"),
            model=raw["model"],
            tasks=tuple(raw["tasks"]),
            editors=tuple(raw["editors"]),
            limit=raw["limit"],
            output=under_spec(raw["output"]),
            runs=under_spec(raw["runs"]),
            seed=raw.get("seed", 0),
            settings=tuple(sorted((str(k), str(v)) for k, v in raw.get("settings", {}).items())),
            tolerances=tuple(raw.get("tolerances", [])),
            tolerance_from_stderr=float(factor),
            notes=raw.get("notes", ""),
            charts=bool(raw.get("charts", True)),
            protocols=tuple(raw.get("protocols", [""])),
            model_description=raw.get("model_description", ""),
            processes=raw.get("processes", 1),
        )

    def folder(self, root: Path, protocol: str) -> Path:
        """Where a profile's files go under ``root``: the first profile's directly in it."""
        return root if protocol == self.protocols[0] else root / protocol

    def entry_path(self, task: str, editor: str, protocol: str = "") -> Path:
        return self.folder(self.output, protocol or self.protocols[0]) / task / f"{editor}.json"

    def overrides(self, protocol: str) -> dict[str, str]:
        """The ``--set`` settings of a run scored under ``protocol``."""
        return {**dict(self.settings), **({"protocol": protocol} if protocol else {})}

    def command(self, task: str, editor: str, protocol: str = "") -> str:
        """The ``harness run`` command that reproduces one entry (DATA: the data directory)."""
        sets = "".join(f" --set {k}={v}" for k, v in self.overrides(protocol).items())
        return (
            f"harness run --editor {editor} --task {task} --model {self.model} --data-dir DATA "
            f"--limit {self.limit} --seed {self.seed}{sets}"
        )


def _check_values(raw: dict[str, Any], path: Path) -> None:
    """Refuse spec values of the wrong type or range, naming the key."""
    where = f"leaderboard spec {path}"
    if not isinstance(raw["limit"], int) or raw["limit"] < 1:
        raise ConfigError(f"{where}: limit must be an integer >= 1, not {raw['limit']!r}")
    for tolerance in raw.get("tolerances", []):
        Tolerance.parse(tolerance)
    factor = raw.get("tolerance_from_stderr", 0.0)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 <= factor < float("inf"):
        raise ConfigError(f"{where}: tolerance_from_stderr must be a finite number >= 0, not {factor!r}")
    processes = raw.get("processes", 1)
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ConfigError(f"{where}: processes must be an integer >= 1, not {processes!r}")
    profiles = raw.get("protocols", [""])
    if not profiles or not all(isinstance(p, str) for p in profiles) or len(set(profiles)) < len(profiles):
        raise ConfigError(f"{where}: protocols must be a list of distinct profile names, not {profiles!r}")


def _trains(editor: str) -> bool:
    return plugins.lookup("editor", editor, plugins.editors()).capabilities.trains


def run_entry(
    spec: LeaderboardSpec,
    task: str,
    editor: str,
    data_dir: str | None,
    runs: Path,
    progress: bool,
    protocol: str = "",
) -> dict[str, Any]:
    """One editor on one task as the spec says (training it first if it learns); its results."""
    from harness.runner import run, train

    overrides = spec.overrides(protocol)
    output = spec.folder(runs, protocol or spec.protocols[0]) / task / editor
    if _trains(editor):
        task_obj = plugins.lookup("task", task, plugins.tasks(Path(data_dir) if data_dir else None))
        train(
            editor,
            train_data=getattr(task_obj, "training_set", "") or None,
            model=spec.model,
            data_dir=data_dir,
            seed=spec.seed,
            overrides={k: v for k, v in overrides.items() if k != "protocol"},
            progress=progress,
        )
    if spec.processes > 1:
        return _sharded(spec, task, editor, data_dir, output, overrides)
    return run(
        editor=editor,
        task=task,
        model=spec.model,
        data_dir=data_dir,
        output_dir=str(output),
        limit=spec.limit,
        seed=spec.seed,
        overrides=overrides,
        progress=progress,
    )


def _sharded(
    spec: LeaderboardSpec, task: str, editor: str, data_dir: str | None, output: Path, overrides: dict
) -> dict[str, Any]:
    """One run split over ``spec.processes`` shard processes side by side (the machine's cores shared
    between them unless the spec sets ``threads``), then merged into ``output``."""
    count = spec.processes
    threads = {"threads": str(max(1, (os.cpu_count() or 1) // count))}
    sets = [arg for k, v in {**threads, **overrides}.items() for arg in ("--set", f"{k}={v}")]
    command = [sys.executable, "-m", "harness.cli", "run", "--editor", editor, "--task", task]
    command += ["--model", spec.model, "--limit", str(spec.limit), "--seed", str(spec.seed)]
    command += ["--output-dir", str(output), *(["--data-dir", data_dir] if data_dir else []), *sets]
    log.info("%s on %s: %d shard processes", editor, task, count)
    workers = [
        subprocess.Popen([*command, "--shard", f"{i}/{count}"], stdout=subprocess.DEVNULL)
        for i in range(count)
    ]
    failed = [i for i, worker in enumerate(workers) if worker.wait() != 0]
    if failed:
        raise RuntimeError(f"{editor} on {task}: shard(s) {failed} of {count} failed; their logs are above")
    return shards.merge(output)


def _entry(
    spec: LeaderboardSpec, task: str, editor: str, results: dict[str, Any], protocol: str
) -> dict[str, Any]:
    """The stored file: the run's results and how to reproduce them."""
    return {
        ENTRY_KEY: {
            "spec": spec.path.as_posix(),
            "command": spec.command(task, editor, protocol),
            "record_ids": results["record_ids"],
            "seed": spec.seed,
            "limit": spec.limit,
        },
        **results,
    }


def stored(spec: LeaderboardSpec, task: str, editor: str, protocol: str) -> dict[str, Any] | None:
    """The entry stored for this spec's command, or None (none stored, or one of another command)."""
    path = spec.entry_path(task, editor, protocol)
    if not path.is_file():
        return None
    entry = json.loads(path.read_text(encoding="utf-8"))
    return entry if entry.get(ENTRY_KEY, {}).get("command") == spec.command(task, editor, protocol) else None


def build(spec: LeaderboardSpec, data_dir: str | None, progress: bool = True) -> list[Path]:
    """Run (or resume) every entry not stored yet, store its file, write the README; the written
    paths."""
    written = []
    for editor in spec.editors:
        for task in spec.tasks:
            for protocol in spec.protocols:
                if stored(spec, task, editor, protocol):
                    log.info(
                        "leaderboard: %s on %s %s is stored; delete its file to redo it",
                        editor,
                        task,
                        protocol,
                    )
                    continue
                log.info("leaderboard %s: %s on %s %s", spec.path, editor, task, protocol)
                results = run_entry(spec, task, editor, data_dir, spec.runs, progress, protocol)
                path = spec.entry_path(task, editor, protocol)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json(path, _entry(spec, task, editor, results, protocol))
                written.append(path)
    written.append(write_readme(spec))
    return written


def check(spec: LeaderboardSpec, data_dir: str | None, scratch: Path, progress: bool = True):
    """Run every entry again under ``scratch`` and compare it with its stored file (spec tolerances;
    paired intervals where the stored entry's run folder is at hand, else from its stderrs).

    Returns ``{(task, editor): Comparison}``; a missing stored file is an error naming it.
    """
    tolerances = [Tolerance.parse(t) for t in spec.tolerances]
    comparisons: dict[tuple[str, str], Comparison] = {}
    for task in spec.tasks:
        for editor in spec.editors:
            stored_path = spec.entry_path(task, editor)
            if not stored_path.is_file():
                raise FileNotFoundError(f"{stored_path}: not stored; run `harness leaderboard {spec.path}`")
            stored = json.loads(stored_path.read_text(encoding="utf-8"))
            fresh = run_entry(spec, task, editor, data_dir, scratch, progress, spec.protocols[0])
            comparisons[task, editor] = compare(
                fresh,
                stored,
                tolerances,
                stderr_factor=spec.tolerance_from_stderr,
                samples=(find_samples(fresh), find_samples(stored)),
            )
    return comparisons


def check_report(spec: LeaderboardSpec, comparisons: dict[tuple[str, str], Comparison]) -> str:
    """What ``check`` found, for a person: '' when every entry holds; else how many failed, grouped by
    cause (model, data, setup, versions, only numbers) with what to do once per cause, then each
    failed entry's comparison."""
    failed = {key: c for key, c in comparisons.items() if c.exit_code != 0}
    if not failed:
        return ""
    by_kind: dict[str, list[str]] = {}
    advice: dict[str, str] = {}
    for (task, editor), comparison in failed.items():
        for cause in comparison.causes:
            by_kind.setdefault(cause.kind, []).append(f"{editor} on {task}")
            advice[cause.kind] = cause.advice
    lines = [f"{len(failed)} of {len(comparisons)} entries of {spec.path.as_posix()} do not hold:"]
    for kind in (k for k in KINDS if k in by_kind):
        lines += [f"- {HEADLINES[kind]} in {len(by_kind[kind])}: {', '.join(by_kind[kind])}"]
        lines += [f"  what to do: {advice[kind].replace('SPEC', spec.path.as_posix())}"]
    for (task, editor), comparison in failed.items():
        lines += ["", f"== {editor} on {task}", render(comparison, causes=False)]
        lines += [f"   causes: {'; '.join(str(cause) for cause in comparison.causes)}"]
    return "\n".join(lines)


def _profile(entry: dict[str, Any]) -> str:
    """The scoring profile an entry was scored under (files from before profiles: the default)."""
    return (entry.get("protocol") or {}).get("name", "harness")


def _task_section(
    heading: str, entries: dict[str, dict[str, Any]], charts: list[Path], output: Path
) -> list[str]:
    """One task under one profile: the paper-style table of every editor, median seconds per edit,
    each run's total time, its charts."""
    runs = [report.Run(entry) for entry in entries.values()]
    first = runs[0].results
    seconds = ", ".join(
        f"{editor} {entry['timings']['edit_seconds_median']:.2f}"
        + (" (from cache)" if entry["timings"].get("edits_from_cache") else "")
        for editor, entry in entries.items()
        if "edit_seconds_median" in entry.get("timings", {})
    )
    minutes = ", ".join(
        f"{editor} {entry['timings']['total_seconds'] / 60:.1f}"
        + (f" + {entry['training']['training_seconds'] / 60:.1f} training" if "training" in entry else "")
        for editor, entry in entries.items()
    )
    images = [f"![{path.stem}]({path.relative_to(output).as_posix()})" for path in charts]
    return [
        f"## {heading}",
        "",
        f"{first['task'].get('description', '').rstrip('.')}. Edits are in "
        f"`{first['task'].get('edit_language', '?')}`; scored under the `{_profile(first)}` profile "
        "(docs/protocol.md).",
        "",
        report.render(runs, "markdown"),
        "",
        f"Median seconds per edit: {seconds}."
        + (REUSED_NOTE if any("edits_from_cache" in e["timings"] for e in entries.values()) else ""),
        "",
        "Minutes per run (every invocation that wrote its records, model loading included; editors "
        f"that learn add the training of the checkpoint they loaded): {minutes}.",
        "",
        *(line for image in images for line in (image, "")),
    ]


def _charts(task: str, entries: dict[str, dict[str, Any]], folder: Path) -> list[Path]:
    """The overlay radar and the cross-lingual gap chart of one task's editors."""
    from harness.charts import gap_chart, overlay_radar, save_chart

    runs = [(report.Run(entry), editor) for editor, entry in entries.items()]
    return [
        save_chart(chart, folder) for chart in (overlay_radar(task, runs), gap_chart(task, runs)) if chart
    ]


def _data_line(entry: dict[str, Any]) -> str:
    return ", ".join(f"`{Path(p).name}` (sha256 `{h[:12]}`)" for p, h in sorted(data_files(entry).items()))


def _error_bars(how: dict[str, Any], limit: int) -> str:
    """How the ± was computed (a results.json's ``stderr`` entry) and how to read it."""
    return (
        f"± is the standard error of F1 over the {limit} records: the spread of the score over "
        f"{how['resamples']} resamples of the records with replacement (seed {how['seed']}; "
        f"docs/statistics.md). One record moves a score by up to {100 / limit:.0f} points; editors whose "
        "scores differ by less than about two standard errors are not told apart by these records."
    )


def write_readme(spec: LeaderboardSpec) -> Path:
    """``output/README.md`` from the stored files alone (so it is the same wherever it is made)."""
    found: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for protocol in spec.protocols:
        for task in spec.tasks:
            for editor in spec.editors:
                entry = stored(spec, task, editor, protocol)
                if entry:
                    found.setdefault((protocol, task), {})[editor] = entry
    if not found:
        raise FileNotFoundError(f"{spec.output}: nothing stored yet; run `harness leaderboard {spec.path}`")
    any_entry = next(iter(next(iter(found.values())).values()))
    spec_name = spec.path.as_posix()
    lines = [
        f"# {spec.title}",
        "",
        "<!-- generated by `harness leaderboard`; do not edit by hand -->",
        "",
    ]
    if spec.model_description:
        lines += [f"Model: {spec.model_description} (`{spec.model}`).", ""]
    if spec.notes:
        lines += [spec.notes.strip(), ""]
    errors = next(
        (e["stderr"] for entries in found.values() for e in entries.values() if e.get("stderr")), None
    )
    lines += [
        f"F1{' ± standard error' if errors else ''} (EM) in percent after each edit (one edit at a time, "
        f"restored after probing), on the first {spec.limit} records, seed {spec.seed}. Columns: "
        + ", ".join(f"{report.SHORT[p]} = {p}" for p in report.PROPERTY_ORDER)
        + "; `(unedited)` is the model before any edit (locality compares with it, so it has no score "
        "there).",
        "",
    ]
    for (protocol, task), entries in found.items():
        heading = task if len(spec.protocols) == 1 else f"{task}, `{_profile(next(iter(entries.values())))}`"
        folder = spec.folder(spec.output, protocol) / "charts"
        charts = _charts(task, entries, folder) if spec.charts else []
        lines += _task_section(heading, entries, charts, spec.output)
    missing = [
        f"{e} on {t}" + (f" ({p})" if p else "")
        for p in spec.protocols
        for t in spec.tasks
        for e in spec.editors
        if e not in found.get((p, t), {})
    ]
    if missing:
        lines += [f"Not run yet: {', '.join(missing)}.", ""]
    if errors:
        lines += [_error_bars(errors, spec.limit), ""]
    model = any_entry["model"]
    lines += [
        "## Reproduce",
        "",
        f"Model `{spec.model}` (sha256 `{model.get('sha256', '')[:12]}`); data {_data_line(any_entry)}. "
        "Regenerate every file here (stored entries are kept, unfinished runs resume):",
        "",
        "```bash",
        f"harness leaderboard {spec_name} --data-dir DATA",
        "```",
        "",
        "One entry, e.g. the first: " + f"`{spec.command(spec.tasks[0], spec.editors[0])}`; editors that "
        "learn are trained first with `harness train` on the task's training set (default settings). "
        "Each JSON file holds the run's full results.json plus its command and record ids.",
        "",
    ]
    path = spec.output / README
    spec.output.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
