"""Charts of editing runs (matplotlib, drawn off-screen): a radar per run and per task, the cross-lingual
generality gap per task, and the decay of accumulating runs as edits pile up. F1 in percent throughout;
where results.json has standard errors, a run's radar shades ± one of them around its polygon and the
gap chart draws them as error bars (the overlay radar and the decay plot do not: bands of several
lines overlap into an unreadable smear)."""

from __future__ import annotations

import io
import math
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from matplotlib import colormaps, rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from harness.report import PROPERTY_ORDER, SHORT, Run, columns, run_labels
from harness.uncertainty import stderr_key

CHART_FORMATS = ("png", "svg")
PROPERTY_COLOURS = {
    "reliability": "#1f77b4",
    "generality": "#2ca02c",
    "locality": "#d62728",
    "portability": "#9467bd",
}
RUN_COLOURS = colormaps["tab10"].colors  # ten distinct colours: runs of a task, languages of a gap chart
# Line styles tell runs (radar) or languages (decay) apart, so that equal scores stay visible.
LINE_STYLES = (
    "-",
    "--",
    "-.",
    ":",
    (0, (5, 1)),
    (0, (3, 1, 1, 1)),
    (0, (1, 1)),
    (0, (8, 2, 1, 2)),
    (0, (4, 4)),
)
# Markers tell properties apart on the decay plot, larger first, so that equal points show both.
PROPERTY_MARKERS = {
    "reliability": ("o", 8),
    "generality": ("s", 6),
    "locality": ("^", 6),
    "portability": ("D", 4),
}
STYLE = {
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "none",  # text stays text: small files, selectable in the HTML report
    "legend.title_fontsize": 8,
    "figure.constrained_layout.w_pad": 0.15,
}


@dataclass
class Chart:
    """A drawn figure, the file name (no suffix) it is saved under and the task it shows."""

    name: str
    figure: Figure
    task: str


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "-", text, flags=re.ASCII).strip("-")


def _f1(scores: dict[str, float], column: str) -> float:
    return scores.get(f"{column}.f1", math.nan)


def _f1_stderr(scores: dict[str, float], column: str) -> float:
    return scores.get(stderr_key(f"{column}.f1"), math.nan)


def _colour(index: int) -> str:
    return RUN_COLOURS[index % len(RUN_COLOURS)]


def _radar_axes(figure: Figure, cols: list[str]):
    """A polar axes with a spoke per ``property.lang`` column, clockwise from the top, 0-100 %."""
    ax = figure.add_subplot(projection="polar")
    ax.set_theta_offset(math.pi / 2)
    ax.set_theta_direction(-1)
    angles = [2 * math.pi * i / len(cols) for i in range(len(cols))]
    ax.set_xticks(angles)
    ax.set_xticklabels([])
    for angle, column in zip(angles, cols):
        prop = column.split(".")[0]
        side = math.sin(angle)  # clockwise from the top: positive is the right-hand side
        ax.text(
            angle,
            110,
            _short(column),
            ha="left" if side > 0.1 else "right" if side < -0.1 else "center",
            va="bottom" if math.cos(angle) > 0.1 else "top" if math.cos(angle) < -0.1 else "center",
            color=PROPERTY_COLOURS.get(prop, "black"),
            fontweight="bold",
            fontsize=9 if len(cols) <= 12 else 7.5,
        )
    ax.set_ylim(0, 100)
    ax.set_yticks([20, 40, 60, 80, 100])
    ax.set_yticklabels(["20", "40", "60", "80", "100 %"], fontsize=7, color="#555555")
    for tick in ax.get_yticklabels():
        tick.set_bbox({"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 0.5})
    ax.set_rlabel_position(360 / len(cols) / 2)
    ax.grid(color="#cccccc", linewidth=0.7)
    ax.spines["polar"].set_color("#aaaaaa")
    return ax, angles


def _short(column: str) -> str:
    prop, lang = column.split(".")
    return f"{SHORT.get(prop, prop)} {lang}"


def _closed(values: list[float]) -> list[float]:
    return [*values, values[0]]


def _key(cols: list[str]) -> str:
    """What the short property names on the spokes stand for."""
    props = [p for p in PROPERTY_ORDER if any(c.startswith(p + ".") for c in cols)]
    return ", ".join(f"{SHORT[p]} = {p}" for p in props)


def radar(run: Run, label: str, task: str) -> Chart:
    """The run's F1 on every ``property.lang`` column as a filled polygon, the unedited model's F1 (where
    the property has one) as a dashed outline, after Figure 2 of Wang et al. (2023)."""
    scores = run.results["results"][task]
    pre = run.results.get("pre_edit", {}).get(task, {})
    cols = columns(scores)
    with rc_context(STYLE):
        figure = Figure(figsize=(6.4, 6.8), layout="constrained")
        ax, angles = _radar_axes(figure, cols)
        edited = [_f1(scores, c) for c in cols]
        ax.plot(
            _closed(angles), _closed(edited), color=_colour(0), linewidth=2, label=f"{label} (after edit)"
        )
        ax.fill(angles, edited, color=_colour(0), alpha=0.25)
        _stderr_band(ax, angles, edited, [_f1_stderr(scores, c) for c in cols])
        if pre:
            _unedited_outline(ax, angles, pre, cols, linewidth=1.4, marker="o", markersize=3)
        figure.legend(loc="outside lower center", ncols=2, frameon=False, title=_key(cols))
        figure.suptitle(
            f"{label} on {task}\nF1 (%), {run.model}, {_records(run, task)} records", fontweight="bold"
        )
    return Chart(f"radar_{_slug(label)}_{_slug(task)}", figure, task)


def _stderr_band(ax, angles: list[float], values: list[float], errors: list[float]) -> None:
    """A darker ring from F1 - stderr to F1 + stderr (within 0-100 %) around the run's polygon; none
    without standard errors."""
    if all(math.isnan(error) for error in errors):
        return
    low = [max(0.0, v - e) for v, e in zip(values, errors)]
    high = [min(100.0, v + e) for v, e in zip(values, errors)]
    ax.fill_between(
        _closed(angles),
        _closed(low),
        _closed(high),
        color=_colour(0),
        alpha=0.3,
        linewidth=0,
        label="± stderr",
    )


def _unedited_outline(ax, angles: list[float], pre: dict[str, float], cols: list[str], **style) -> None:
    """The unedited model's F1 as a dashed dark outline, with gaps where it has no score (locality)."""
    values = _closed([_f1(pre, c) for c in cols])
    ax.plot(_closed(angles), values, color="#333333", linestyle="--", label="unedited model", **style)


def _records(run: Run, task: str) -> str:
    return str(run.results.get("n-samples", {}).get(task, "?"))


def overlay_radar(task: str, entries: list[tuple[Run, str]]) -> Chart:
    """Several runs of one task on one radar: a polygon per run, the unedited model dashed."""
    cols = columns({key: 0.0 for run, _ in entries for key in run.results["results"][task]})
    with rc_context(STYLE):
        figure = Figure(figsize=(6.8, 7.2), layout="constrained")
        ax, angles = _radar_axes(figure, cols)
        for i, (run, label) in enumerate(entries):
            values = [_f1(run.results["results"][task], c) for c in cols]
            style = LINE_STYLES[i % len(LINE_STYLES)]
            ax.plot(
                _closed(angles), _closed(values), color=_colour(i), linewidth=2, linestyle=style, label=label
            )
            ax.fill(angles, values, color=_colour(i), alpha=0.07)
        pre = next((run.results["pre_edit"][task] for run, _ in entries if run.results.get("pre_edit")), None)
        if pre:
            _unedited_outline(ax, angles, pre, cols, linewidth=1.2)
        figure.legend(loc="outside lower center", ncols=3, frameon=False, fontsize=9, title=_key(cols))
        figure.suptitle(f"Editors on {task}\nF1 (%) after the edit", fontweight="bold")
    return Chart(f"radar_{_slug(task)}", figure, task)


def gap_chart(task: str, entries: list[tuple[Run, str]]) -> Chart | None:
    """Generality F1 in the edit language beside every other language, a group of bars per run; None
    when the task has no generality probes."""
    langs = [
        c.split(".")[1]
        for c in columns({key: 0.0 for run, _ in entries for key in run.results["results"][task]})
        if c.startswith("generality.")
    ]
    if not langs:
        return None
    edit_language = entries[0][0].results.get("task", {}).get("edit_language", langs[0])
    langs.sort(key=lambda lang: lang != edit_language)
    width = 0.8 / len(langs)
    with rc_context(STYLE):
        figure = Figure(
            figsize=(max(6.0, 1.5 + len(entries) * (0.35 * len(langs) + 0.6)), 4.8), layout="constrained"
        )
        ax = figure.add_subplot()
        label_bars = len(entries) * len(langs) <= 24
        with_errors = False
        for j, lang in enumerate(langs):
            xs = [i + (j - (len(langs) - 1) / 2) * width for i in range(len(entries))]
            scores = [run.results["results"][task] for run, _ in entries]
            values = [_f1(s, f"generality.{lang}") for s in scores]
            errors = [_f1_stderr(s, f"generality.{lang}") for s in scores]
            with_errors = with_errors or not all(math.isnan(e) for e in errors)
            name = f"{lang} (edit language)" if lang == edit_language else lang
            bars = ax.bar(
                xs,
                values,
                width * 0.92,
                label=name,
                color=_colour(j),
                edgecolor="white",
                yerr=errors,
                error_kw={"ecolor": "#333333", "capsize": 3, "elinewidth": 1},
            )
            if label_bars:
                ax.bar_label(bars, fmt="%.0f", fontsize=8, padding=2)
        ax.set_xticks(range(len(entries)), [textwrap.fill(label, 12) for _, label in entries])
        margin = 1.0 if len(entries) == 1 else 0.6  # a lone group of bars stays bar-sized
        ax.set_xlim(-margin, len(entries) - 1 + margin)
        ax.set_ylim(0, 108)
        ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
        ax.set_ylabel("generality F1" + (" (bars: ± stderr)" if with_errors else ""))
        ax.set_title(
            f"Cross-lingual gap on {task}\ngenerality F1: edit in {edit_language}, probe in every language"
        )
        ax.grid(axis="y", color="#dddddd")
        ax.set_axisbelow(True)
        ax.legend(title="probe language", loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return Chart(f"gap_{_slug(task)}", figure, task)


def decay_chart(run: Run, label: str, task: str) -> Chart:
    """F1 of every ``property.lang`` column on the records edited so far, against the edits applied."""
    points = run.results["decay"]
    edits = [point["edits"] for point in points]
    cols = columns(run.results["results"][task])
    langs = list(dict.fromkeys(c.split(".")[1] for c in cols))
    with rc_context(STYLE):
        figure = Figure(figsize=(8.4, 4.8), layout="constrained")
        ax = figure.add_subplot()
        for column in cols:
            prop, lang = column.split(".")
            marker, size = PROPERTY_MARKERS.get(prop, ("x", 6))
            ax.plot(
                edits,
                [_f1(point["results"], column) for point in points],
                color=PROPERTY_COLOURS.get(prop, "black"),
                linestyle=LINE_STYLES[langs.index(lang) % len(LINE_STYLES)],
                marker=marker,
                markersize=size,
                linewidth=1.8,
                label=f"{prop} {lang}",
            )
        ax.set_ylim(-2, 102)  # room for the markers at 0 and 100 %
        ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
        if len(edits) <= 12:
            ax.set_xticks(edits)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("edits applied (F1 over the records edited so far)")
        ax.set_ylabel("F1")
        mode = "" if run.mode in label else f" ({run.mode})"
        ax.set_title(f"{label} on {task}: F1 as edits accumulate{mode}")
        ax.grid(color="#e5e5e5")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    return Chart(f"decay_{_slug(label)}_{_slug(task)}", figure, task)


def charts(runs: list[Run]) -> Iterator[Chart]:
    """Every chart for ``runs`` (ability tasks have none): per task the gap chart and, where several runs
    share the task, an overlay radar; then per run a radar and, for accumulating runs, a decay plot."""
    entries = [(run, label) for run, label in zip(runs, run_labels(runs)) if not run.is_ability]
    by_task: dict[str, list[tuple[Run, str]]] = {}
    for run, label in entries:
        for task in run.results["results"]:
            by_task.setdefault(task, []).append((run, label))
    for task, sharing in by_task.items():
        if len(sharing) > 1:
            yield overlay_radar(task, sharing)
        gap = gap_chart(task, sharing)
        if gap:
            yield gap
    for run, label in entries:
        for task in run.results["results"]:
            yield radar(run, label, task)
            if run.results.get("decay"):
                yield decay_chart(run, label, task)


def write_charts(runs: list[Run], directory: str | Path, fmt: str = "png") -> list[Path]:
    """Save every chart of ``runs`` into ``directory`` as ``fmt`` files; returns their paths."""
    if fmt not in CHART_FORMATS:
        raise ValueError(f"chart format {fmt!r}: choose one of {', '.join(CHART_FORMATS)}")
    return [save_chart(chart, directory, fmt) for chart in charts(runs)]


def save_chart(chart: Chart, directory: str | Path, fmt: str = "png") -> Path:
    """Save one chart as ``directory/<name>.<fmt>`` (the same input gives the same bytes)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{chart.name}.{fmt}"
    with rc_context(STYLE):
        chart.figure.savefig(path, format=fmt, dpi=150, metadata=_metadata(fmt))
    return path


def _metadata(fmt: str) -> dict[str, str | None]:
    """No creation date (same input, same file) and, in SVG, no links to outside vocabularies."""
    if fmt == "svg":
        return {"Date": None, "Creator": None, "Format": None, "Type": None}
    return {"Software": None}


def svg_markup(chart: Chart) -> str:
    """The chart as an ``<svg>`` element to place inline in an HTML page (no XML prolog or doctype);
    clip-path ids are salted with the chart's name so that charts on one page never share one."""
    buffer = io.StringIO()
    with rc_context({**STYLE, "svg.hashsalt": chart.name}):
        chart.figure.savefig(buffer, format="svg", metadata=_metadata("svg"))
    text = buffer.getvalue()
    return text[text.index("<svg") :]
