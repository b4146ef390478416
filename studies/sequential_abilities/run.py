"""The sequential-editing study of issue 17: 50 English edits in a row on the demo model with each
editor, every edit kept in force, then the general-ability tasks on the model that holds them all.

    HARNESS_DATA_DIR=../shared/data python studies/sequential_abilities/run.py [--editors rome,grace]

Each editor's run goes to ``results/studies/sequential_abilities/<editor>`` and resumes if cut; the
unedited model's ability answers are cached once for all editors. The table (README.md in this
folder) is printed from whatever runs have finished, and their headline numbers are written to
``summary.json`` here (rows of editors run before are kept).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from harness.results import write_json
from harness.runner import run

HERE = Path(__file__).parent
EDITORS = ("rome", "rect-rome", "r-rome", "alphaedit", "grace", "wise")
# the ability tasks the demo model can do on a CPU; GSM8K reasoning is left out (7 minutes of
# generation for a solve rate near 0 on this model)
ABILITIES = (
    "general_nli",
    "general_sentiment",
    "general_closed_qa",
    "general_dialogue",
    "general_open_qa",
    "general_ner",
    "general_summarization",
)
TASK = "bizsre_en_zh"
EDITS = 50
# after all edits: the edited facts (English), their paraphrases in both languages, unrelated facts
PROBES = {
    "rel en": "reliability.en.f1",
    "gen en": "generality.en.f1",
    "gen zh": "generality.zh.f1",
    "loc en": "locality.en.f1",
    "loc zh": "locality.zh.f1",
}


def run_editor(editor: str, data_dir: str, runs: Path) -> dict:
    return run(
        editor=editor,
        task=TASK,
        mode="sequential",
        limit=EDITS,
        then=",".join(ABILITIES),
        data_dir=data_dir,
        output_dir=str(runs / editor),
        progress=True,
    )


def summary_row(results: dict) -> dict:
    """Reliability, generality and locality after all edits, and each ability's change with its
    paired 95% interval."""
    scores = results["results"][TASK]
    row = {key: round(scores[key], 1) for key in PROBES.values()}
    for task, entry in results["then"].items():
        metric = entry["metric"]
        row[task] = {
            "unedited": round(entry["unedited"][metric], 1),
            "change": round(entry["change"][metric], 1),
            "ci95": [round(x, 1) for x in entry["change_ci95"][metric]],
        }
    return row


def table(rows: dict[str, dict]) -> str:
    """A Markdown table: one row per editor; an ability's change is starred when its interval excludes 0."""
    short = [task.removeprefix("general_") for task in ABILITIES]
    header = ["editor", *PROBES, *short]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for editor, row in rows.items():
        # "-": a row summary.json kept from before that column existed (--table-only fills it)
        cells = [f"`{editor}`"] + [f"{row[key]:.1f}" if key in row else "-" for key in PROBES.values()]
        for task in ABILITIES:
            low, high = row[task]["ci95"]
            star = "*" if low > 0 or high < 0 else ""
            cells.append(f"{row[task]['change']:+.1f}{star}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--editors", default=",".join(EDITORS))
    parser.add_argument("--data-dir", default=os.environ.get("HARNESS_DATA_DIR", ""))
    parser.add_argument("--runs", default="results/studies/sequential_abilities")
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="rebuild summary.json and the table from the finished runs' results.json, running nothing",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("filelock", "datasets", "transformers", "absl"):  # absl: a line per ROUGE score
        logging.getLogger(noisy).setLevel(logging.WARNING)
    runs, summary = Path(args.runs), HERE / "summary.json"
    if args.table_only:
        finished = [editor for editor in EDITORS if (runs / editor / "results.json").is_file()]
        rows = {e: summary_row(json.loads((runs / e / "results.json").read_text())) for e in finished}
        write_json(summary, rows)
        print(table(rows))
        return
    rows: dict = {}
    for editor in args.editors.split(","):
        row = summary_row(run_editor(editor, args.data_dir, runs))
        # read again just before writing: another process may have added its editors meanwhile
        rows = json.loads(summary.read_text(encoding="utf-8")) if summary.is_file() else {}
        rows[editor] = row
        rows = {name: rows[name] for name in [*EDITORS, *rows] if name in rows}  # the study's order
        write_json(summary, rows)
    print(table(rows))


if __name__ == "__main__":
    main()
