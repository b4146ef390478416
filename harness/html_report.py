"""One self-contained HTML page for a set of runs: the tables, the charts (inline SVG) and a browser of
every probe of every edit (samples.jsonl), filtered and paged by a small inline script. Nothing is
fetched from anywhere: the page works offline, from a file or an e-mail attachment."""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.charts import charts, svg_markup
from harness.report import Run, Table, run_labels, tables

SAMPLES = "samples.jsonl"
PROBE_FIELDS = (
    "property",
    "language",
    "prompt",
    "expected",
    "reference",
    "pre",
    "post",
    "pre_scores",
    "post_scores",
)
HEAT = re.compile(r"^(\d+(?:\.\d+)?)")
# the page's style sheet and script, inlined into every page (package data, kept as real CSS/JS)
ASSETS = Path(__file__).parent / "report_page"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def script_json(value: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` appears raw, so no
    text in the data can close the element or open a comment."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def read_samples(run: Run) -> list[dict[str, Any]]:
    """The run's samples.jsonl (beside its results.json): request and probes of every edit; [] if none."""
    path = run.path.parent / SAMPLES if run.path else None
    if path is None or not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        sample = json.loads(line)
        if "probes" not in sample:
            continue
        records.append(
            {
                "record_id": sample.get("record_id", ""),
                "request": sample.get("request", {}),
                "probes": [{k: p[k] for k in PROBE_FIELDS if k in p} for p in sample["probes"]],
            }
        )
    return records


def _heat(cell: str) -> str:
    """A blue background as deep as the cell's leading score (percent)."""
    found = HEAT.match(cell)
    if not found:
        return ""
    return f' style="background: rgba(31, 119, 180, {min(float(found.group(1)), 100) / 100 * 0.35:.3f})"'


def table_html(table: Table) -> str:
    """A report table as HTML; an editing table groups its languages under each property and shades
    every score by its value."""
    lead = len(table.header) - len(table.columns) if table.columns else len(table.header)
    rows = []
    if table.columns:
        groups: dict[str, int] = {}
        for column in table.columns:
            prop = column.split(".")[0]
            groups[prop] = groups.get(prop, 0) + 1
        top = [f'<th rowspan="2">{_e(h)}</th>' for h in table.header[:lead]]
        top += [f'<th colspan="{span}">{_e(prop)}</th>' for prop, span in groups.items()]
        rows.append("<tr>" + "".join(top) + "</tr>")
        rows.append("<tr>" + "".join(f"<th>{_e(c.split('.')[1])}</th>" for c in table.columns) + "</tr>")
    else:
        rows.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in table.header) + "</tr>")
    body = []
    for row in table.body:
        cells = [f'<td class="text">{_e(c)}</td>' for c in row[:lead]]
        cells += [f"<td{_heat(c) if table.columns else ''}>{_e(c)}</td>" for c in row[lead:]]
        body.append("<tr>" + "".join(cells) + "</tr>")
    title = f"<h3>{_e(table.title)}</h3>" if table.title else ""
    return (
        f'{title}<div class="scroll"><table class="grid"><thead>{"".join(rows)}</thead>'
        f'<tbody>{"".join(body)}</tbody></table></div><p class="note">{_e(table.footer)}</p>'
    )


def _runs_html(runs: list[Run], labels: list[str]) -> str:
    header = "".join(f"<th>{h}</th>" for h in ("run", "task", "model", "mode", "records", "results file"))
    rows = []
    for run, label in zip(runs, labels):
        records = ", ".join(str(n) for n in run.results.get("n-samples", {}).values())
        cells = [
            label,
            run.task,
            run.model,
            "ability task" if run.is_ability else run.mode,
            records,
            run.path,
        ]
        rows.append("<tr>" + "".join(f'<td class="text">{_e(c or "")}</td>' for c in cells) + "</tr>")
    return (
        f'<div class="scroll"><table class="grid"><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _scores_html(runs: list[Run]) -> str:
    """A table per editing task (each with its own columns), then the ability tasks run on their own."""
    by_task: dict[str, list[Run]] = {}
    for run in runs:
        by_task.setdefault("" if run.is_ability else run.task, []).append(run)
    parts = []
    for task, subset in by_task.items():
        parts.append(f"<h3>{_e(task or 'ability tasks')}</h3>")
        parts += [table_html(t) for t in tables(subset)]
    return "".join(parts)


def _charts_html(runs: list[Run]) -> str:
    """Each task's charts under its name, the charts comparing runs first, at their natural size."""
    by_task: dict[str, list[str]] = {}
    for chart in charts(runs):
        figure = f'<figure id="chart-{_e(chart.name)}">{svg_markup(chart)}</figure>'
        by_task.setdefault(chart.task, []).append(figure)
    if not by_task:
        return '<p class="note">No editing runs: nothing to chart.</p>'
    return "".join(
        f'<h3>{_e(task)}</h3><div class="charts">{"".join(figures)}</div>'
        for task, figures in by_task.items()
    )


def page(runs: list[Run]) -> str:
    """The whole report page for ``runs``."""
    labels = run_labels(runs)
    browsable = []
    for run, label in zip(runs, labels):
        records = [] if run.is_ability else read_samples(run)
        if records:
            browsable.append({"label": label, "task": run.task, "records": records})
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    tasks = ", ".join(dict.fromkeys(run.task for run in runs))
    samples = (
        """<div class="controls">
  <label>run <select id="f-run"></select></label>
  <label>property <select id="f-property"></select></label>
  <label>language <select id="f-language"></select></label>
  <label><input type="search" id="f-q" placeholder="search prompts, answers, subjects"></label>
  <label><input type="checkbox" id="f-changed"> changed answers only</label>
  <label>per page <select id="f-size">
    <option>10</option><option selected>25</option><option>100</option></select></label>
  <span id="status"></span>
</div>
<div class="pager"><button id="prev" type="button">&larr; previous</button><span id="page"></span>
<button id="next" type="button">next &rarr;</button></div>
<div id="records"></div>"""
        if browsable
        else '<p class="note">No samples.jsonl beside these results.</p>'
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Knowledge editing report: {_e(tasks)}</title>
<style>{(ASSETS / "report.css").read_text(encoding="utf-8")}</style>
</head>
<body>
<header class="top">
<h1>Knowledge editing report</h1>
<p>{len(runs)} run{"s" if len(runs) != 1 else ""} on {_e(tasks)}; generated {stamp}.
Scores are F1 (exact match) in percent, F1 &plusmn; its standard error over records where the
results have one (see each table's note); answers show line breaks as &#8629;.</p>
</header>
<nav><a href="#runs">Runs</a><a href="#scores">Scores</a><a href="#charts">Charts</a>
<a href="#samples">Samples</a></nav>
<main>
<h2 id="runs">Runs</h2>
{_runs_html(runs, labels)}
<h2 id="scores">Scores</h2>
{_scores_html(runs)}
<h2 id="charts">Charts</h2>
{_charts_html(runs)}
<h2 id="samples">Samples</h2>
<p class="note">Every probe of every edit: the unedited and the edited model's answers and their scores
(an edited answer that differs from the unedited one is highlighted; green/red: F1 up/down).</p>
{samples}
</main>
<script type="application/json" id="sample-data">{script_json({"runs": browsable})}</script>
<script>{(ASSETS / "report.js").read_text(encoding="utf-8")}</script>
</body>
</html>
"""


def write_html(runs: list[Run], out: str | Path) -> Path:
    """Write the report page of ``runs`` to ``out``; returns its path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page(runs), encoding="utf-8")
    return path
