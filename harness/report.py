"""Paper-style tables from results.json: one row per task, columns F1 (EM) per property/language."""

from __future__ import annotations

from typing import Any

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


def table(results: dict[str, Any], markdown: bool = False) -> str:
    """Render every task in ``results`` (post-edit, and the unedited model beneath it)."""
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
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    n = results.get("n-samples", {})
    model = results.get("model", {}).get("spec", "?")
    footer = f"F1 (EM) in percent; model {model}; records: " + ", ".join(f"{t}={c}" for t, c in n.items())
    editing = results.get("editing", {})
    if editing.get("mode", "single") != "single":
        footer += f"; mode {editing['mode']}, batch size {editing['batch_size']}"
        footer += f", {editing['edits_in_force_when_probed']} edits in force when probed"
    return "\n".join([*lines, footer])
