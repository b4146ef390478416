"""Paper-style tables from results.json: one row per task, columns F1 (EM) per property/language."""

from __future__ import annotations

from typing import Any

from harness.api import ABILITY

PROPERTY_ORDER = ("reliability", "generality", "locality", "portability")
SHORT = {"reliability": "rel", "generality": "gen", "locality": "loc", "portability": "port"}


def columns(scores: dict[str, float]) -> list[str]:
    """``property.lang`` columns in the paper's order (reliability, generality, locality, portability)."""
    found = {key.rsplit(".", 1)[0] for key in scores}

    def order(column: str) -> tuple[int, str]:
        prop, lang = column.split(".")
        rank = PROPERTY_ORDER.index(prop) if prop in PROPERTY_ORDER else len(PROPERTY_ORDER)
        return rank, lang

    return sorted(found, key=order)


def _cell(scores: dict[str, float], column: str) -> str:
    f1, em = scores.get(f"{column}.f1"), scores.get(f"{column}.em")
    if f1 is None:
        return "-"
    return f"{f1:.2f} ({em:.2f})" if em is not None else f"{f1:.2f}"


def _render(header: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return lines + ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    return lines + ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]


def ability_table(results: dict[str, Any], markdown: bool = False) -> str:
    """An ability task run on its own: every metric in percent."""
    rows = [
        [task, results.get("editor", "?"), key, f"{value:.2f}"]
        for task, scores in results["results"].items()
        for key, value in scores.items()
    ]
    model = results.get("model", {}).get("spec", "?")
    n = ", ".join(f"{t}={c}" for t, c in results.get("n-samples", {}).items())
    footer = f"percent; model {model}; examples: {n}"
    return "\n".join([*_render(["task", "editor", "metric", "score"], rows, markdown), footer])


def then_table(then: dict[str, Any], markdown: bool = False) -> str:
    """Ability tasks measured after the edits: unedited, edited and the change, per metric (each
    task's headline metric first)."""
    rows = [
        [
            task,
            key,
            f"{entry['unedited'][key]:.2f}",
            f"{entry['edited'][key]:.2f}",
            f"{entry['change'][key]:+.2f}",
        ]
        for task, entry in then.items()
        for key in sorted(entry["edited"], key=lambda k: k != entry["metric"])
    ]
    header = ["ability task", "metric", "unedited", "after edits", "change"]
    footer = "examples: " + ", ".join(f"{task}={entry['n']}" for task, entry in then.items())
    return "\n".join([*_render(header, rows, markdown), footer])


def table(results: dict[str, Any], markdown: bool = False) -> str:
    """Render every task in ``results`` (post-edit, and the unedited model beneath it), then any
    ability tasks measured after the edits."""
    if results.get("task", {}).get("kind") == ABILITY:
        return ability_table(results, markdown)
    rows: list[list[str]] = []
    header: list[str] = []
    editor = results.get("editor", "?")
    for task, scores in results["results"].items():
        cols = columns(scores)
        header = ["task", "editor", *(f"{SHORT.get(c.split('.')[0], c)} {c.split('.')[1]}" for c in cols)]
        rows.append([task, editor, *(_cell(scores, c) for c in cols)])
        for point in results.get("decay", [])[:-1]:  # the last point is the row above
            rows.append([task, f"after {point['edits']} edits", *(_cell(point["results"], c) for c in cols)])
        pre = results.get("pre_edit", {}).get(task)
        if pre:
            rows.append([task, "(unedited)", *(_cell(pre, c) for c in cols)])
    lines = _render(header, rows, markdown)
    n = results.get("n-samples", {})
    model = results.get("model", {}).get("spec", "?")
    footer = f"F1 (EM) in percent; model {model}; records: " + ", ".join(f"{t}={c}" for t, c in n.items())
    editing = results.get("editing", {})
    if editing.get("mode", "single") != "single":
        footer += f"; mode {editing['mode']}, batch size {editing['batch_size']}"
        footer += f", {editing['edits_in_force_when_probed']} edits in force when probed"
    if results.get("then"):
        footer += "\n\n" + then_table(results["then"], markdown)
    return "\n".join([*lines, footer])
