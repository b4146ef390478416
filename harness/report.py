"""Paper-style tables from results.json files: a row per run and task, F1 ± its standard error (EM) per
property/language, the unedited model beneath; printed for the terminal, Markdown, CSV or LaTeX
(booktabs). The CSV holds every standard error in its own ``<key>_stderr`` column."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.api import ABILITY
from harness.uncertainty import STDERR_SUFFIX, is_stderr, metric_keys, stderr_key

PROPERTY_ORDER = ("reliability", "generality", "locality", "portability")
SHORT = {"reliability": "rel", "generality": "gen", "locality": "loc", "portability": "port"}
FORMATS = ("terminal", "markdown", "csv", "latex")
RESULTS = "results.json"
METRIC_ORDER = ("f1", "em")


@dataclass(frozen=True)
class Run:
    """One results.json: its contents and where it was read from (samples.jsonl lies beside it)."""

    results: dict[str, Any]
    path: Path | None = None

    @property
    def editor(self) -> str:
        return self.results.get("editor", "?")

    @property
    def task(self) -> str:
        return self.results.get("task", {}).get("name") or next(iter(self.results.get("results", {})), "?")

    @property
    def mode(self) -> str:
        return self.results.get("editing", {}).get("mode", "single")

    @property
    def model(self) -> str:
        return self.results.get("model", {}).get("spec", "?")

    @property
    def is_ability(self) -> bool:
        return self.results.get("task", {}).get("kind") == ABILITY


def load_runs(paths: list[str | Path]) -> list[Run]:
    """Runs from results.json files and folders searched recursively; files in a folder that are not a
    run's results (an ability task measured after the edits, in ``then/``) are passed over."""
    runs = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(path.rglob(RESULTS))
        elif path.is_file():
            found = [path]
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
        for file in found:
            results = json.loads(file.read_text(encoding="utf-8"))
            if isinstance(results, dict) and isinstance(results.get("results"), dict):
                runs.append(Run(results, file))
            elif not path.is_dir():
                raise ValueError(f"{file}: not the results.json of a run (no 'results')")
    if not runs:
        raise ValueError(f"no run's {RESULTS} under {', '.join(map(str, paths))}")
    return runs


def run_labels(runs: list[Run]) -> list[str]:
    """A distinct name per run: the editor, then its mode, model and a number where runs of the same
    task would otherwise share one."""
    labels = [run.editor for run in runs]
    for extra in (lambda run: "" if run.mode == "single" else run.mode, lambda run: run.model):
        clash = _clashes(runs, labels)
        labels = [
            f"{label} {extra(run)}".strip() if c else label for run, label, c in zip(runs, labels, clash)
        ]
    clash = _clashes(runs, labels)
    counts: dict[tuple[str, str], int] = {}
    for i, run in enumerate(runs):
        if clash[i]:
            key = (run.task, labels[i])
            counts[key] = counts.get(key, 0) + 1
            labels[i] = f"{labels[i]} #{counts[key]}"
    return labels


def _clashes(runs: list[Run], labels: list[str]) -> list[bool]:
    keys = [(run.task, label) for run, label in zip(runs, labels)]
    return [keys.count(key) > 1 for key in keys]


def columns(scores: dict[str, float]) -> list[str]:
    """``property.lang`` columns in the paper's order (reliability, generality, locality, portability)."""
    found = {key.rsplit(".", 1)[0] for key in scores}

    def order(column: str) -> tuple[int, str]:
        prop, lang = column.split(".")
        rank = PROPERTY_ORDER.index(prop) if prop in PROPERTY_ORDER else len(PROPERTY_ORDER)
        return rank, lang

    return sorted(found, key=order)


def score_keys(keys: set[str]) -> list[str]:
    """``property.lang.metric`` keys by column (paper order), F1 then EM then the rest, each followed
    by its ``_stderr`` key; plain metric names (ability tasks) after them, alphabetically."""
    dotted = {key for key in keys if key.count(".") == 2}
    rank = {column: i for i, column in enumerate(columns(dict.fromkeys(dotted, 0.0)))}

    def order(key: str) -> tuple[int, int, str, bool]:
        column, metric = key.rsplit(".", 1)
        metric = metric.removesuffix(STDERR_SUFFIX)
        return (
            rank[column],
            METRIC_ORDER.index(metric) if metric in METRIC_ORDER else 9,
            metric,
            is_stderr(key),
        )

    def plain(key: str) -> tuple[str, bool]:
        return key.removesuffix(STDERR_SUFFIX), is_stderr(key)

    return sorted(dotted, key=order) + sorted(keys - dotted, key=plain)


@dataclass
class Table:
    """Rendered cells of one table; ``columns`` (``property.lang``) marks an editing table, whose
    LaTeX header groups the languages under their property."""

    header: list[str]
    body: list[list[str]]
    footer: str
    columns: list[str] = field(default_factory=list)
    title: str = ""


@dataclass
class Row:
    """One line of scores of a run: after its edits (``edits`` of them in force when probed), after its
    first ``edits`` edits (scored on those records), or unedited."""

    task: str
    label: str
    kind: str
    edits: int
    scores: dict[str, float]


def run_rows(run: Run, label: str) -> list[Row]:
    """The rows of one editing run: edited, each decay point before the last, unedited."""
    rows = []
    for task, scores in run.results["results"].items():
        rows.append(Row(task, label, "edited", _in_force(run), scores))
        for point in run.results.get("decay", [])[:-1]:  # the last point is the row above
            rows.append(Row(task, label, "after edits", point["edits"], point["results"]))
        pre = run.results.get("pre_edit", {}).get(task)
        if pre:
            rows.append(Row(task, label, "unedited", 0, pre))
    return rows


def _in_force(run: Run) -> int:
    return run.results.get("editing", {}).get("edits_in_force_when_probed", 0)


def _cell(scores: dict[str, float], column: str) -> str:
    """``F1 ± stderr (EM)``, leaving out what the scores lack; ``-`` without an F1."""
    f1, em = scores.get(f"{column}.f1"), scores.get(f"{column}.em")
    if f1 is None:
        return "-"
    cell = _with_stderr(scores, f"{column}.f1")
    return f"{cell} ({em:.2f})" if em is not None else cell


def _with_stderr(scores: dict[str, float], key: str) -> str:
    """A score with two decimals and, when it has one, ``± stderr``."""
    error = scores.get(stderr_key(key))
    return f"{scores[key]:.2f}" + (f" ± {error:.2f}" if error is not None else "")


def _scale(runs: list[Run]) -> str:
    """What the cells hold, and how the standard errors were computed when the runs have them."""
    how = next((run.results["stderr"] for run in runs if run.results.get("stderr")), None)
    if how is None:
        return "F1 (EM) in percent"
    return (
        f"F1 ± standard error (EM) in percent (standard error: {how['method']}, {how['resamples']} "
        f"resamples, seed {how['seed']})"
    )


def _short(column: str) -> str:
    prop, lang = column.split(".")
    return f"{SHORT.get(prop, prop)} {lang}"


def editing_table(runs: list[Run], labels: list[str]) -> Table:
    """Every editing run's rows, grouped by task; a task's unedited rows follow its runs, one per
    distinct set of scores (runs on the same records and model share one)."""
    body: list[list[str]] = []
    all_rows = [row for run, label in zip(runs, labels) for row in run_rows(run, label)]
    cols = columns({key: 0.0 for row in all_rows for key in row.scores})
    for task in dict.fromkeys(row.task for row in all_rows):
        unedited: dict[tuple[str, ...], list[str]] = {}
        for row in all_rows:
            if row.task != task:
                continue
            cells = tuple(_cell(row.scores, c) for c in cols)
            if row.kind == "unedited":
                unedited.setdefault(cells, []).append(row.label)
            elif row.kind == "edited":
                body.append([task, row.label, *cells])
            else:
                body.append([task, f"after {row.edits} edit{'s' if row.edits != 1 else ''}", *cells])
        for cells, owners in unedited.items():
            name = "(unedited)" if len(unedited) == 1 else f"(unedited: {', '.join(owners)})"
            body.append([task, name, *cells])
    header = ["task", "editor", *(_short(c) for c in cols)]
    return Table(header, body, _footer(runs, labels), cols)


def _footer(runs: list[Run], labels: list[str]) -> str:
    models = list(dict.fromkeys(run.model for run in runs))
    several = len(runs) > 1
    counts = [
        f"{label + ' ' if several else ''}{task}={n}"
        for run, label in zip(runs, labels)
        for task, n in run.results.get("n-samples", {}).items()
    ]
    footer = f"{_scale(runs)}; model{'s' if len(models) > 1 else ''} {', '.join(models)}; records: "
    footer += ", ".join(counts)
    for run, label in zip(runs, labels):
        editing = run.results.get("editing", {})
        if run.mode != "single":
            footer += f"; {label + ': ' if several else ''}mode {editing['mode']}, batch size "
            footer += (
                f"{editing['batch_size']}, {editing['edits_in_force_when_probed']} edits in force when probed"
            )
    return footer


def ability_table(runs: list[Run]) -> Table:
    """Ability tasks run on their own: every metric in percent."""
    body = [
        [task, run.editor, key, _with_stderr(scores, key)]
        for run in runs
        for task, scores in run.results["results"].items()
        for key in metric_keys(scores)
    ]
    models = ", ".join(dict.fromkeys(run.model for run in runs))
    n = ", ".join(f"{t}={c}" for run in runs for t, c in run.results.get("n-samples", {}).items())
    return Table(["task", "editor", "metric", "score"], body, f"percent; model {models}; examples: {n}")


def _interval_text(interval: list[float] | None) -> str:
    """``[low, high]`` of a change, marked ``*`` when it excludes 0 (beyond example sampling noise)."""
    if interval is None:
        return "-"
    low, high = interval
    return f"[{low:+.2f}, {high:+.2f}]" + ("*" if low > 0 or high < 0 else "")


def then_table(then: dict[str, Any], title: str = "") -> Table:
    """Ability tasks measured after the edits: unedited, edited and the change, per metric (each
    task's headline metric first)."""
    body = [
        [
            task,
            key,
            _with_stderr(entry["unedited"], key),
            _with_stderr(entry["edited"], key),
            f"{entry['change'][key]:+.2f}",
            _interval_text(entry.get("change_ci95", {}).get(key)),
        ]
        for task, entry in then.items()
        for key in sorted(metric_keys(entry["edited"]), key=lambda k: k != entry["metric"])
    ]
    header = ["ability task", "metric", "unedited", "after edits", "change", "paired 95% CI"]
    footer = "examples: " + ", ".join(f"{task}={entry['n']}" for task, entry in then.items())
    footer += "; * the change is beyond example sampling noise"
    return Table(header, body, footer, title=title)


def tables(runs: list[Run]) -> list[Table]:
    """The editing runs' table, then the ability tasks each accumulating run measured after its edits,
    then the ability tasks run on their own."""
    labels = run_labels(runs)
    editing = [(run, label) for run, label in zip(runs, labels) if not run.is_ability]
    found = []
    if editing:
        found.append(editing_table([run for run, _ in editing], [label for _, label in editing]))
    for run, label in editing:
        if run.results.get("then"):
            title = f"after the edits of {label} on {run.task}" if len(runs) > 1 else ""
            found.append(then_table(run.results["then"], title))
    abilities = [run for run in runs if run.is_ability]
    if abilities:
        found.append(ability_table(abilities))
    return found


def _plain(table: Table, markdown: bool) -> str:
    header, rows = table.header, table.body
    if markdown:
        header, rows = _md(header), [_md(row) for row in rows]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        title = [f"**{table.title}**", ""] if table.title else []
    else:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        title = [table.title] if table.title else []
    # Markdown: a blank line ends the table, or the footer would render as one more row
    footer = ["", table.footer] if markdown else [table.footer]
    return "\n".join([*title, *lines, *footer])


def _md(cells: list[str]) -> list[str]:
    return [cell.replace("|", r"\|") for cell in cells]


LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
}


def latex_escape(text: str) -> str:
    """``text`` as LaTeX source that typesets those characters."""
    return text.translate(str.maketrans(LATEX_SPECIAL))


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _latex(table: Table) -> str:
    if table.columns:  # F1 (EM) cells centred under their language
        lead = len(table.header) - len(table.columns)
        spec = "l" * lead + "c" * len(table.columns)
    else:  # numbers right-aligned
        lead = len(table.header)
        spec = "".join("r" if all(_numeric(row[i]) for row in table.body) else "l" for i in range(lead))
    lines = [f"% {line}" for line in [table.title, table.footer, r"needs \usepackage{booktabs}"] if line]
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    header = [latex_escape(cell.capitalize()) for cell in table.header]
    if table.columns:
        groups: list[tuple[str, int]] = []
        for column in table.columns:
            prop = column.split(".")[0]
            if groups and groups[-1][0] == prop:
                groups[-1] = (prop, groups[-1][1] + 1)
            else:
                groups.append((prop, 1))
        cells, rules, start = [""] * lead, [], lead + 1
        for prop, span in groups:
            cells.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(prop.capitalize())}}}")
            rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
            start += span
        lines += [" & ".join(cells) + r" \\", " ".join(rules)]
        header = header[:lead] + [latex_escape(c.split(".")[1]) for c in table.columns]
    lines += [" & ".join(header) + r" \\", r"\midrule"]
    for row in table.body:
        lines.append(" & ".join("--" if cell == "-" else latex_escape(cell) for cell in row) + r" \\")
    return "\n".join([*lines, r"\bottomrule", r"\end{tabular}"])


def csv_text(runs: list[Run]) -> str:
    """One CSV row per run and kind of row (edited, after edits, unedited; ability tasks measured after
    the edits under their own task name), a column per score key; ``edits``: edits in force when
    probed, ``records``: records scored."""
    records: list[dict[str, Any]] = []

    def add(ident: dict[str, str], task: str, kind: str, edits: int, count: Any, scores: dict) -> None:
        records.append({**ident, "task": task, "row": kind, "edits": edits, "records": count, **scores})

    for run, label in zip(runs, run_labels(runs)):
        ident = {"run": label, "editor": run.editor, "model": run.model, "mode": run.mode}
        ident["path"] = str(run.path or "")
        n = run.results.get("n-samples", {})
        if run.is_ability:
            for task, scores in run.results["results"].items():
                add(ident, task, "unedited", 0, n.get(task), scores)
            continue
        for row in run_rows(run, label):
            count = row.edits if row.kind == "after edits" else n.get(row.task)
            add(ident, row.task, row.kind, row.edits, count, row.scores)
        for task, entry in run.results.get("then", {}).items():
            add(ident, task, "edited", _in_force(run), entry["n"], entry["edited"])
            add(ident, task, "unedited", 0, entry["n"], entry["unedited"])
    fixed = ["run", "task", "editor", "model", "mode", "row", "edits", "records", "path"]
    keys = score_keys({key for record in records for key in record} - set(fixed))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*fixed, *keys], lineterminator="\n")
    writer.writeheader()
    scored = set(keys)
    for record in records:
        writer.writerow({k: round(v, 4) if k in scored and v is not None else v for k, v in record.items()})
    return out.getvalue()


def render(runs: list[Run], fmt: str = "terminal") -> str:
    """Every table of ``runs`` in ``fmt`` (one of FORMATS)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return csv_text(runs).rstrip("\n")
    if fmt == "latex":
        return "\n\n".join(_latex(t) for t in tables(runs))
    return "\n\n".join(_plain(t, fmt == "markdown") for t in tables(runs))


def table(results: dict[str, Any], markdown: bool = False) -> str:
    """Render one results.json: every task (post-edit, the unedited model beneath it), then any ability
    tasks measured after the edits; an ability task run on its own gets its metrics."""
    return render([Run(results)], "markdown" if markdown else "terminal")
