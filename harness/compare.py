"""Compare a results.json against a baseline one: every metric, within per-key tolerances.

Metrics are named by their full key: ``results.<task>.<property>.<lang>.<metric>`` and
``pre_edit.<task>.<property>.<lang>.<metric>`` for editing tasks, ``results.<task>.<metric>`` for an
ability task run alone, ``then.<task>.edited.<metric>`` for the ability tasks measured after edits.
Values are percentages; a tolerance is an absolute number of percentage points.

Tolerance patterns (``PATTERN=ABS``):

- a pattern holding ``*``, ``?`` or ``[`` is an fnmatch pattern matched against the full key
  (``results.*.locality.*``);
- any other pattern names whole dot-separated parts of a key and matches every key in which it
  appears as a run of consecutive parts: ``f1`` matches every key ending in ``.f1``, ``locality.zh``
  every key containing ``.locality.zh.``, ``pre_edit`` every unedited-model key, a full key itself.

When several patterns match a key, the longest pattern wins (the last given among equally long
ones); a key no pattern matches has tolerance 0. A value is within tolerance when
``|current - baseline| <= ABS`` after both are rounded to 6 decimals (float noise of a JSON
round-trip is not a change).

The two runs must measure the same thing, else the comparison is refused (exit code 2) with each
differing field named: the model's SHA-256, the data (the set of file names and hashes; paths
differ between machines), the template hashes, the task, the number of samples (and of ability
examples after edits), the answer mode, the scoring tokenizer and profile, the editing mode and
batch size.
``allow`` downgrades named refusals to notes (a deliberate cross-model comparison). What may
legitimately differ (editor, hparams, other settings, versions, git commit, run time) is listed as
notes.

Each metric's difference also gets a 95% confidence interval, to tell a real change from the noise of
a few records (docs/statistics.md): a paired bootstrap over the records both runs scored when both
runs' per-record scores (samples.jsonl) are at hand and reproduce their results.json, else an
unpaired interval from the two stored standard errors. A difference whose interval excludes 0 is
"beyond noise". With ``stderr_factor`` k, a key's tolerance is k times the baseline's stored
standard error of it, never below the explicit tolerance (a baseline without one keeps the explicit
tolerance).

When the comparison fails, ``causes`` says why, most fundamental first, each with what to do: the
model differs, the data differs, the setup differs (templates, task, samples, scoring, editing
mode), the library versions differ (``versions`` of results.json; the project's own version is not
a library), or, with all of those equal, only the numbers moved (a code change). ``render`` ends
with them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from harness import exit_codes
from harness.results import RESULTS, SAMPLES, data_files
from harness.uncertainty import (
    CONFIDENCE,
    PAIRED,
    Interval,
    RecordScores,
    is_stderr,
    paired_interval,
    record_scores,
    stderr_key,
    unpaired_interval,
)

DECIMALS = 6
GLOB_CHARACTERS = "*?["
ABSENT = "(absent)"
# config keys that are machine-specific (paths) or compared as refusal fields elsewhere
_CONFIG_NOT_NOTED = {"output_dir", "data_dir", "answer_mode", "scoring_tokenizer", "mode", "batch_size"}

OK, MOVED, MISSING, NEW = "OK", "MOVED", "MISSING", "NEW"
PATTERN_HELP = (
    "allowed absolute change in percentage points (repeatable; default 0 after rounding to 6 decimals). "
    "Keys: results.<task>.<property>.<lang>.<metric>, pre_edit.<same>, then.<task>.edited.<metric>. "
    "A PATTERN with * ? [ is an fnmatch pattern on the full key; any other matches the keys holding it "
    "as consecutive whole dot-separated parts: f1 matches keys ending in .f1, locality.zh keys containing "
    ".locality.zh., pre_edit every pre_edit key. The longest matching PATTERN wins (the last given "
    "among equally long ones)."
)


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Allowed absolute change, in percentage points, of the metrics whose key ``pattern`` matches."""

    pattern: str
    points: float

    @classmethod
    def parse(cls, text: str) -> Tolerance:
        """``PATTERN=ABS`` as given on the command line; a ValueError names ``text`` when malformed."""
        pattern, equals, points = text.rpartition("=")
        if not equals or not pattern.strip():
            raise ValueError(f"--tolerance {text!r}: expected PATTERN=ABS, e.g. f1=1.0")
        try:
            value = float(points)
        except ValueError:
            raise ValueError(f"--tolerance {text!r}: ABS {points!r} is not a number") from None
        if not value >= 0 or value == float("inf"):  # also refuses nan
            raise ValueError(f"--tolerance {text!r}: ABS must be a finite number >= 0")
        return cls(pattern.strip(), value)

    def matches(self, key: str) -> bool:
        """fnmatch on the full key with a wildcard, else the pattern as consecutive whole key parts."""
        if any(c in self.pattern for c in GLOB_CHARACTERS):
            return fnmatch.fnmatchcase(key, self.pattern)
        return f".{self.pattern}." in f".{key}."


def tolerance_for(key: str, tolerances: list[Tolerance]) -> float:
    """The points of the longest matching pattern (the last of equally long ones), else 0."""
    best: Tolerance | None = None
    for tolerance in tolerances:
        if tolerance.matches(key) and (best is None or len(tolerance.pattern) >= len(best.pattern)):
            best = tolerance
    return best.points if best else 0.0


@dataclasses.dataclass(frozen=True)
class Row:
    """One metric of the baseline and of the current run (None where the run lacks it)."""

    key: str
    baseline: Any
    current: Any
    tolerance: float
    interval: Interval | None = None  # of current - baseline, where per-record scores or stderrs allow

    @property
    def delta(self) -> float | None:
        if _is_number(self.baseline) and _is_number(self.current):
            return round(round(self.current, DECIMALS) - round(self.baseline, DECIMALS), DECIMALS)
        return None

    @property
    def status(self) -> str:
        if self.current is None:
            return MISSING
        if self.baseline is None:
            return NEW
        if self.delta is None:
            return OK if self.current == self.baseline else MOVED
        return OK if abs(self.delta) <= self.tolerance else MOVED


@dataclasses.dataclass(frozen=True)
class Difference:
    """A field whose value differs between the runs, shown as ``field: baseline -> current``."""

    field: str
    baseline: str
    current: str
    allowed: bool = False

    def __str__(self) -> str:
        suffix = " (allowed by --allow-config-mismatch)" if self.allowed else ""
        return f"{self.field}: {self.baseline} -> {self.current}{suffix}"


MODEL, DATA, SETUP, VERSIONS, NUMBERS = "model", "data", "setup", "versions", "numbers"
PROJECT = "kedit-harness"  # its version in results.json is the code's, not a library's
ADVICE = {
    MODEL: (
        "the checkpoint is not the one the baseline ran on. A tiny random model changes only when its "
        "builder (plugins/models/tiny, with its VERSION) changes; a real model when its file changes. If "
        "that is intended, regenerate the baseline (`harness leaderboard SPEC --data-dir DATA`) and commit "
        "it with the reason; otherwise find what changed the checkpoint"
    ),
    DATA: (
        "the data files are not the ones the baseline was measured on: point --data-dir (or "
        "HARNESS_DATA_DIR) at the same data (file names and sha256 above); if the data changed on "
        "purpose, regenerate the baseline and commit it with the reason"
    ),
    SETUP: (
        "the run measures something else (templates, task, samples, scoring or editing mode): if that "
        "change is intended, regenerate the baseline and commit it with the reason"
    ),
    VERSIONS: (
        "the installed libraries differ from the ones the baseline was produced with: install the tested "
        "set (`pip install -c constraints.txt -e '.[test]'`, after `pip install torch==2.13.0`) and run "
        "again. To move to the new versions on purpose, run `.ci/run-latest`, then update constraints.txt "
        "and regenerate the baselines in one commit that says why"
    ),
    NUMBERS: (
        "same model, data, setup and library versions, yet the numbers moved: a code change (harness, "
        "editor, template) changed the results. If intended, regenerate the baseline and commit it with "
        "the reason; otherwise it is a regression to find (e.g. git bisect running this check)"
    ),
}
HEADLINES = {
    MODEL: "the model differs",
    DATA: "the data differs",
    SETUP: "the setup differs",
    VERSIONS: "library versions differ",
    NUMBERS: "only the numbers moved",
}
KINDS = (MODEL, DATA, SETUP, VERSIONS, NUMBERS)  # most fundamental first


@dataclasses.dataclass(frozen=True)
class Cause:
    """Why a comparison failed (``kind``: MODEL, DATA, SETUP, VERSIONS or NUMBERS) and what to do."""

    kind: str
    detail: str

    @property
    def advice(self) -> str:
        return ADVICE[self.kind]

    def __str__(self) -> str:
        return f"{HEADLINES[self.kind]}: {self.detail}"


@dataclasses.dataclass
class Comparison:
    """Every metric's row, the differences that make the runs incomparable, the ones only noted, and,
    when it fails, its causes."""

    rows: list[Row]
    refusals: list[Difference]
    notes: list[Difference]
    causes: list[Cause] = dataclasses.field(default_factory=list)
    noise: str = ""  # how the rows' intervals were computed ('' when no row has one)

    @property
    def exit_code(self) -> int:
        """``harness.exit_codes``: not comparable, a metric moved (or is missing or new), or OK."""
        if self.refusals:
            return exit_codes.NOT_COMPARABLE
        return exit_codes.CHECK_FAILED if any(row.status != OK for row in self.rows) else exit_codes.OK


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _show(value: Any) -> str:
    if value is None:
        return ABSENT
    if _is_number(value):
        return f"{round(value, DECIMALS):.{DECIMALS}f}".rstrip("0").rstrip(".")
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _scores(results: dict[str, Any]) -> dict[str, Any]:
    """Every score of a results dictionary by full key, standard errors (``_stderr``) included."""
    flat: dict[str, Any] = {}
    for section in ("results", "pre_edit"):
        for task, scores in (results.get(section) or {}).items():
            flat.update({f"{section}.{task}.{key}": value for key, value in scores.items()})
    for task, entry in (results.get("then") or {}).items():
        flat.update({f"then.{task}.edited.{key}": value for key, value in entry.get("edited", {}).items()})
    return flat


def metrics(results: dict[str, Any]) -> dict[str, Any]:
    """Every compared metric of a results dictionary, by full key (not their standard errors)."""
    return {key: value for key, value in _scores(results).items() if not is_stderr(key)}


def stderrs(results: dict[str, Any]) -> dict[str, float]:
    """The stored standard error of each metric that has one, by the metric's full key."""
    flat = _scores(results)
    return {key: flat[stderr_key(key)] for key in flat if _is_number(flat.get(stderr_key(key)))}


def _get(results: dict[str, Any], path: str) -> Any:
    value: Any = results
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _data(results: dict[str, Any]) -> Any:
    """The data files as a set of (file name, sha256): their directories differ between machines."""
    if results.get("data") is None:
        return None
    return {(Path(path).name, sha) for path, sha in data_files(results).items()}


def _then_n(results: dict[str, Any]) -> Any:
    """Examples per ability task measured after the edits (only tasks both runs measured are compared)."""
    then = results.get("then")
    return {task: entry.get("n") for task, entry in then.items()} if then else None


def _field(path: str) -> Callable[[dict[str, Any]], Any]:
    return lambda results: _get(results, path)


# what the numbers depend on besides the editor: a difference makes the comparison meaningless
REFUSAL_FIELDS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "model.sha256": _field("model.sha256"),
    "model.dtype": _field("model.dtype"),
    "data": _data,
    "templates": _field("templates"),
    "task.name": _field("task.name"),
    "n-samples": _field("n-samples"),
    "then.n": _then_n,
    "scoring.answer_mode": _field("scoring.answer_mode"),
    "scoring.tokenizer": _field("scoring.tokenizer"),
    "protocol.name": _field("protocol.name"),
    "editing.mode": _field("editing.mode"),
    "editing.batch_size": _field("editing.batch_size"),
}


def _show_data(files: Any, other: Any) -> str:
    """The files only this side has (name@hash prefix), so a long list shows what differs."""
    if files is None:
        return ABSENT
    only = sorted(files - (other or set()))
    return "{" + ", ".join(f"{name}@{sha[:12]}" for name, sha in only) + "}"


def _shared(tasks: Any, other: Any) -> dict[str, Any]:
    return {task: n for task, n in (tasks or {}).items() if task in (other or {})}


def _refusals(current: dict[str, Any], baseline: dict[str, Any], allow: Collection[str]) -> list[Difference]:
    found = []
    for field, read in REFUSAL_FIELDS.items():
        old, new = read(baseline), read(current)
        if field == "then.n":  # a task only one run measured shows as missing or new metrics instead
            old, new = _shared(old, new), _shared(new, old)
        if old == new:
            continue
        if field == "data":
            found.append(Difference(field, _show_data(old, new), _show_data(new, old), field in allow))
        else:
            found.append(Difference(field, _show(old), _show(new), field in allow))
    return found


def _dict_notes(prefix: str, old: Any, new: Any, skip: Collection[str] = ()) -> list[Difference]:
    old, new = old or {}, new or {}
    keys = [k for k in old if k not in skip] + [k for k in new if k not in old and k not in skip]
    return [
        Difference(f"{prefix}.{key}", _show(old.get(key)), _show(new.get(key)))
        for key in keys
        if old.get(key) != new.get(key)
    ]


def _notes(current: dict[str, Any], baseline: dict[str, Any]) -> list[Difference]:
    notes = []
    for field in ("editor", "git_commit", "timings.total_seconds"):
        old, new = _get(baseline, field), _get(current, field)
        if old != new:
            notes.append(Difference(field, _show(old), _show(new)))
    for section in ("hparams", "versions"):
        notes += _dict_notes(section, baseline.get(section), current.get(section))
    notes += _dict_notes("config", baseline.get("config"), current.get("config"), _CONFIG_NOT_NOTED)
    return notes


def library_versions(current: dict[str, Any], baseline: dict[str, Any]) -> list[Difference]:
    """The ``versions`` entries (libraries and Python, not the project itself) that differ."""
    return [
        d
        for d in _dict_notes("versions", baseline.get("versions"), current.get("versions"))
        if d.field != f"versions.{PROJECT}"
    ]


def _kind(field: str) -> str:
    """The cause a refusal field belongs to: model.* (its hash and any other model field), data, setup."""
    return MODEL if field.startswith("model.") else DATA if field == "data" else SETUP


def diagnose(
    current: dict[str, Any], baseline: dict[str, Any], refusals: list[Difference], rows: list[Row]
) -> list[Cause]:
    """Why the comparison fails, most fundamental first (empty when it does not)."""
    moved = [row for row in rows if row.status != OK]
    if not refusals and not moved:
        return []
    causes = []
    for kind in (MODEL, DATA, SETUP):
        found = [d for d in refusals if _kind(d.field) == kind]
        if found:
            causes.append(Cause(kind, "; ".join(str(d) for d in found)))
    versions = library_versions(current, baseline)
    if versions:
        shown = [f"{d.field.removeprefix('versions.')} {d.baseline} -> {d.current}" for d in versions]
        causes.append(Cause(VERSIONS, ", ".join(shown)))
    if not causes:
        causes.append(Cause(NUMBERS, f"{len(moved)} of {len(rows)} metrics not OK"))
    return causes


def explain(comparison: Comparison) -> str:
    """The causes of a failed comparison, each with what to do ('' when it passed)."""
    lines = []
    for cause in comparison.causes:
        lines += [f"why: {cause}", f"  what to do: {cause.advice}"]
    return "\n".join(lines)


def read_samples(path: Path) -> list[dict[str, Any]]:
    """A samples.jsonl, read only (a run's file is never repaired from here); a ValueError names the
    file and line that is not one JSON record."""
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            samples.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not one JSON record ({error.msg})") from None
    return samples


FoundSamples = tuple[list | None, str]  # a run's samples.jsonl records, or None and why not
NOT_GIVEN: FoundSamples = (None, "per-record scores not given")


def find_samples(results: dict[str, Any], path: str | Path | None = None) -> FoundSamples:
    """The run's per-record scores: samples.jsonl beside its results.json (``path``, a file or its
    folder), else in its ``output_dir``; ``(None, why)`` when there is none or it cannot be read."""
    places = []
    if path is not None:
        places.append(Path(path) if Path(path).is_dir() else Path(path).parent)
    if results.get("output_dir"):
        places.append(Path(results["output_dir"]))
    for place in places:
        if (place / SAMPLES).is_file():
            try:
                return read_samples(place / SAMPLES), ""
            except (OSError, UnicodeDecodeError, ValueError) as error:
                return None, str(error)
    where = " or ".join(str(place) for place in places) or "(no path and no output_dir)"
    return None, f"no {SAMPLES} in {where}"


def per_record(results: dict[str, Any], found: FoundSamples) -> tuple[dict[str, RecordScores], str]:
    """Each metric's per-record scores by full key, from the ``found`` samples when they are this
    run's: the same records, reproducing every stored score; else ``({}, why)``."""
    samples, why = found
    if samples is None:
        return {}, why
    ids = sorted(str(sample.get("record_id")) for sample in samples)
    if ids != sorted(str(i) for i in results.get("record_ids", [])):
        return {}, f"its {SAMPLES} holds other records than its results.json"
    by_key: dict[str, RecordScores] = {}
    for section, phase in (("results", "post"), ("pre_edit", "pre")):
        for task, stored in (results.get(section) or {}).items():
            for key, scores in record_scores(samples, phase).items():
                full = f"{section}.{task}.{key}"
                if not _is_number(stored.get(key)) or round(scores.mean, DECIMALS) != round(
                    stored[key], DECIMALS
                ):
                    return {}, f"its {SAMPLES} does not reproduce {full}"
                by_key[full] = scores
    return by_key, ""


def _interval(
    row: Row, pairs: tuple[RecordScores | None, RecordScores | None], errors: tuple[Any, Any]
) -> Interval | None:
    """Paired bootstrap interval when both runs have the key's per-record scores, else unpaired from
    both stored standard errors, else None."""
    new, old = pairs
    paired = paired_interval(new, old) if new and old else None
    if paired or row.delta is None or None in errors:
        return paired
    return unpaired_interval(row.delta, *errors)


def _noise(rows: list[Row], reasons: dict[str, str]) -> str:
    """How the rows' intervals were computed, for the summary ('' when no row has one)."""
    methods = {row.interval.method for row in rows if row.interval}
    if not methods:
        return ""
    level = f"{100 * CONFIDENCE:g}% CI"
    if methods == {PAIRED}:
        return f"paired bootstrap {level} over records"
    why = "; ".join(f"{side}: {reason}" for side, reason in reasons.items() if reason)
    mixed = "paired where both runs have per-record scores, else " if PAIRED in methods else ""
    return f"{level}, {mixed}unpaired from the stored stderrs" + (f"; {why}" if why else "")


def compare(
    current: dict[str, Any],
    baseline: dict[str, Any],
    tolerances: list[Tolerance],
    allow: Collection[str] = (),
    stderr_factor: float = 0.0,
    samples: tuple[FoundSamples, FoundSamples] = (NOT_GIVEN, NOT_GIVEN),
) -> Comparison:
    """Every metric of ``current`` against ``baseline``; ``allow`` names refusal fields to note instead.

    ``stderr_factor`` k lets a key move k times the baseline's stderr of it (at least its explicit
    tolerance); ``samples`` are the (current, baseline) runs' ``find_samples``, for paired intervals."""
    unknown = sorted(set(allow) - set(REFUSAL_FIELDS))
    if unknown:
        fields = ", ".join(REFUSAL_FIELDS)
        raise ValueError(f"--allow-config-mismatch {', '.join(unknown)}: unknown field; fields are {fields}")
    if not 0 <= stderr_factor < float("inf"):
        raise ValueError(f"tolerance from stderr {stderr_factor!r}: must be a finite number >= 0")
    old, new = metrics(baseline), metrics(current)
    old_errors, new_errors = stderrs(baseline), stderrs(current)
    new_scores, new_why = per_record(current, samples[0])
    old_scores, old_why = per_record(baseline, samples[1])
    rows = []
    for key in list(old) + [key for key in new if key not in old]:
        tolerance = tolerance_for(key, tolerances)
        if stderr_factor and key in old_errors:
            tolerance = max(tolerance, stderr_factor * old_errors[key])
        row = Row(key, old.get(key), new.get(key), tolerance)
        pairs = (new_scores.get(key), old_scores.get(key))
        interval = _interval(row, pairs, (new_errors.get(key), old_errors.get(key)))
        rows.append(dataclasses.replace(row, interval=interval))
    differences = _refusals(current, baseline, allow)
    refusals = [d for d in differences if not d.allowed]
    notes = [d for d in differences if d.allowed] + _notes(current, baseline)
    noise = _noise(rows, {"current": new_why, "baseline": old_why})
    return Comparison(rows, refusals, notes, diagnose(current, baseline, refusals, rows), noise)


def load_results(path: str | Path) -> dict[str, Any]:
    """A results.json (or a run directory holding one); a ValueError names the path when it is not one."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read ({error})") from None
    try:
        results = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    sections = results.get("results") if isinstance(results, dict) else None
    if not isinstance(sections, dict) or not all(isinstance(v, dict) for v in sections.values()):
        raise ValueError(f"{path}: not a results.json (no 'results' mapping of task to metrics)")
    return results


def _show_interval(interval: Interval | None) -> list[str]:
    """The interval's cells: ``[low, high]`` with signs, and whether it excludes 0."""
    if interval is None:
        return ["", ""]
    low, high = (f"{'+' if v > 0 else ''}{v:.2f}" for v in (interval.low, interval.high))
    return [f"[{low}, {high}]", "beyond" if interval.beyond_noise else "within"]


def _table(rows: list[Row], markdown: bool) -> list[str]:
    header = ["key", "baseline", "current", "delta", "tolerance", "status"]
    intervals = any(row.interval for row in rows)
    if intervals:
        header += [f"{100 * CONFIDENCE:g}% CI", "noise"]
    cells = [
        [
            row.key,
            _show(row.baseline),
            _show(row.current),
            "" if row.delta is None else f"{'+' if row.delta > 0 else ''}{_show(row.delta)}",
            _show(row.tolerance),
            row.status,
            *(_show_interval(row.interval) if intervals else []),
        ]
        for row in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
        return lines + ["| " + " | ".join(line) + " |" for line in cells]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in [header, *cells]
    ]


def summary(comparison: Comparison) -> str:
    """``N metrics compared, M beyond tolerance`` (and how many are missing or new, if any), then how
    many differences are beyond noise and how that was judged, when any row has an interval."""
    statuses = [row.status for row in comparison.rows]
    counts = {status: statuses.count(status) for status in (MOVED, MISSING, NEW)}
    extra = "".join(f", {counts[s]} {s.lower()}" for s in (MISSING, NEW) if counts[s])
    line = f"{len(comparison.rows)} metrics compared, {counts[MOVED]} beyond tolerance{extra}"
    if comparison.noise:
        beyond = sum(1 for row in comparison.rows if row.interval and row.interval.beyond_noise)
        line += f"; {beyond} beyond noise ({comparison.noise})"
    return line


def render(
    comparison: Comparison, show_all: bool = False, markdown: bool = False, causes: bool = True
) -> str:
    """Refusals when the runs are not comparable; else notes, the rows that are not OK or beyond noise
    (every row with ``show_all``) and a one-line summary. A failed comparison ends with its causes (unless
    ``causes`` is false)."""
    why = explain(comparison) if causes else ""
    if comparison.refusals:
        lines = ["refused: the runs are not comparable (baseline -> current):"]
        lines += [f"  {difference}" for difference in comparison.refusals]
        fields = " ".join(f"--allow-config-mismatch {d.field}" for d in comparison.refusals)
        blocks = ("\n".join([*lines, f"(to compare anyway: {fields})"]), why)
        return "\n\n".join(block for block in blocks if block)
    bullet = "- " if markdown else ""
    notes = "\n".join(f"{bullet}note: {note}" for note in comparison.notes)
    shown = [
        row
        for row in comparison.rows
        if show_all or row.status != OK or (row.interval and row.interval.beyond_noise)
    ]
    table = "\n".join(_table(shown, markdown)) if shown else ""
    blocks = (notes, table, summary(comparison), why)
    return "\n\n".join(block for block in blocks if block)
