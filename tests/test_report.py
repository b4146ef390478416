"""The paper-style tables: paper column order, F1 (EM) cells, the unedited row beneath; several runs in
one table; CSV and LaTeX."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from harness.report import (
    Run,
    ability_table,
    columns,
    editing_table,
    latex_escape,
    load_runs,
    render,
    run_labels,
    table,
    then_table,
)

SCORES = {
    "portability.zh.f1": 17.0,
    "portability.zh.em": 0.0,
    "reliability.en.f1": 77.654,
    "reliability.en.em": 67.98,
    "generality.zh.f1": 23.27,
    "generality.zh.em": 3.28,
    "generality.en.f1": 72.27,
    "generality.en.em": 55.06,
    "locality.en.f1": 93.67,
    "locality.en.em": 81.58,
    "locality.zh.f1": 95.55,
    "locality.zh.em": 84.96,
    "portability.en.f1": 7.48,
    "portability.en.em": 0.1,
}


def test_columns_follow_the_paper_order():
    assert columns(SCORES) == [
        "reliability.en",
        "generality.en",
        "generality.zh",
        "locality.en",
        "locality.zh",
        "portability.en",
        "portability.zh",
    ]


def test_table_cells_and_rows():
    results = {
        "editor": "rome",
        "results": {"bizsre_en_zh": SCORES},
        "pre_edit": {"bizsre_en_zh": {"reliability.en.f1": 1.0, "reliability.en.em": 0.0}},
        "n-samples": {"bizsre_en_zh": 743},
        "model": {"spec": "gemma3-270m"},
    }
    lines = table(results).splitlines()
    assert lines[0].split() == [
        "task",
        "editor",
        "rel",
        "en",
        "gen",
        "en",
        "gen",
        "zh",
        "loc",
        "en",
        "loc",
        "zh",
        "port",
        "en",
        "port",
        "zh",
    ]
    assert lines[2].split()[:4] == ["bizsre_en_zh", "rome", "77.65", "(67.98)"]
    assert lines[3].split()[:5] == ["bizsre_en_zh", "(unedited)", "1.00", "(0.00)", "-"]
    assert lines[-1] == "F1 (EM) in percent; model gemma3-270m; records: bizsre_en_zh=743"
    markdown = table(results, markdown=True).splitlines()
    assert markdown[0].startswith("| task | editor | rel en | gen en |") and markdown[1].startswith("|---|")


def test_sequential_runs_show_their_decay_points_and_mode():
    early = {**SCORES, "reliability.en.f1": 95.0, "reliability.en.em": 90.0}
    results = {
        "editor": "rome",
        "results": {"bizsre_en_zh": SCORES},
        "decay": [{"edits": 25, "results": early}, {"edits": 50, "results": SCORES}],
        "editing": {"mode": "sequential", "batch_size": 1, "edits_in_force_when_probed": 50},
        "n-samples": {"bizsre_en_zh": 50},
    }
    lines = table(results).splitlines()
    assert lines[2].split()[:4] == ["bizsre_en_zh", "rome", "77.65", "(67.98)"]
    assert lines[3].split()[:6] == ["bizsre_en_zh", "after", "25", "edits", "95.00", "(90.00)"]
    assert len(lines) == 5  # header, rule, final row, one decay row (the last point is the final row), footer
    assert lines[-1].endswith("; mode sequential, batch size 1, 50 edits in force when probed")


def _results(editor: str, scores: dict[str, float], **extra) -> dict:
    return {
        "editor": editor,
        "task": {"name": "bizsre_en_zh", "edit_language": "en"},
        "results": {"bizsre_en_zh": scores},
        "pre_edit": {"bizsre_en_zh": {"reliability.en.f1": 1.0, "reliability.en.em": 0.0}},
        "n-samples": {"bizsre_en_zh": 743},
        "model": {"spec": "gemma3-270m"},
        **extra,
    }


SEQUENTIAL = {"mode": "sequential", "batch_size": 1, "edits_applied": 50, "edits_in_force_when_probed": 50}


def test_several_runs_make_one_table_with_one_row_each_and_shared_unedited_rows():
    runs = [
        Run(_results("rome", SCORES)),
        Run(_results("ft-m", {**SCORES, "reliability.en.f1": 50.0})),
        Run(_results("rome", SCORES, editing=SEQUENTIAL, decay=[{"edits": 25, "results": SCORES}, {}])),
    ]
    assert run_labels(runs) == ["rome", "ft-m", "rome sequential"]
    lines = render(runs).splitlines()
    assert lines[0].split()[:4] == ["task", "editor", "rel", "en"]
    rows = [line for line in lines[2:] if line.startswith("bizsre_en_zh")]
    assert [row.split("  ")[1].strip() for row in rows] == [
        "rome",
        "ft-m",
        "rome sequential",
        "after 25 edits",
        "(unedited)",  # the three runs' unedited scores are the same: one row
    ]
    assert rows[1].split()[2] == "50.00"
    footer = lines[len(rows) + 2]
    assert "records: rome bizsre_en_zh=743, ft-m bizsre_en_zh=743, rome sequential bizsre_en_zh=743" in footer
    assert footer.endswith("; rome sequential: mode sequential, batch size 1, 50 edits in force when probed")


def test_unedited_rows_that_differ_name_their_runs():
    other = _results("ft-m", SCORES)
    other["pre_edit"]["bizsre_en_zh"]["reliability.en.f1"] = 2.0
    body = editing_table([Run(_results("rome", SCORES)), Run(other)], ["rome", "ft-m"]).body
    assert [row[1] for row in body] == ["rome", "ft-m", "(unedited: rome)", "(unedited: ft-m)"]


def test_csv_has_a_row_per_run_and_kind_and_a_column_per_score_key():
    runs = [
        Run(_results("rome", SCORES), Path("a/results.json")),
        Run(_results("ft-m", SCORES, editing=SEQUENTIAL, decay=[{"edits": 25, "results": SCORES}, {}])),
    ]
    rows = list(csv.DictReader(io.StringIO(render(runs, "csv"))))
    assert [(r["run"], r["row"], r["edits"]) for r in rows] == [
        ("rome", "edited", "0"),
        ("rome", "unedited", "0"),
        ("ft-m", "edited", "50"),
        ("ft-m", "after edits", "25"),
        ("ft-m", "unedited", "0"),
    ]
    keys = list(rows[0])[9:]
    assert keys[:4] == ["reliability.en.f1", "reliability.en.em", "generality.en.f1", "generality.en.em"]
    assert sorted(keys) == sorted(SCORES)
    assert float(rows[0]["reliability.en.f1"]) == round(SCORES["reliability.en.f1"], 4) == 77.654
    assert rows[0]["path"] == "a/results.json" and rows[1]["generality.en.f1"] == ""
    assert [r["records"] for r in rows] == ["743", "743", "743", "25", "743"]  # a decay point: records edited


def test_latex_is_a_booktabs_tabular_with_languages_grouped_under_properties():
    text = render([Run(_results("a&b_c%", SCORES))], "latex")
    assert r"\begin{tabular}{llccccccc}" in text and r"\toprule" in text and r"\bottomrule" in text
    assert r"\multicolumn{2}{c}{Generality} & \multicolumn{2}{c}{Locality}" in text
    assert r"\cmidrule(lr){3-3} \cmidrule(lr){4-5}" in text
    assert r"bizsre\_en\_zh & a\&b\_c\% & 77.65 (67.98) &" in text
    assert r"bizsre\_en\_zh & (unedited) & 1.00 (0.00) & -- &" in text
    assert latex_escape(r"50% {x}~^\ #$") == (
        r"50\% \{x\}\textasciitilde{}\textasciicircum{}\textbackslash{} \#\$"
    )


def test_markdown_escapes_pipes_and_unknown_formats_are_refused():
    assert r"| bizsre_en_zh | a\|b |" in render([Run(_results("a|b", SCORES))], "markdown")
    with pytest.raises(ValueError, match="choose one of terminal, markdown, csv, latex"):
        render([Run(_results("rome", SCORES))], "html")


def test_runs_are_found_in_folders_and_other_results_files_passed_over(tmp_path):
    for name, content in [
        ("x/run/results.json", _results("rome", SCORES)),
        ("x/run/then/nli/results.json", {}),
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(json.dumps(content))
    runs = load_runs([tmp_path / "x"])
    assert [run.path for run in runs] == [tmp_path / "x/run/results.json"]
    with pytest.raises(ValueError, match="not the results.json of a run"):
        load_runs([tmp_path / "x/run/then/nli/results.json"])
    with pytest.raises(FileNotFoundError):
        load_runs([tmp_path / "missing"])


ERRORS = {
    **SCORES,
    "reliability.en.f1_stderr": 4.321,
    "reliability.en.em_stderr": 5.0,
    "generality.zh.f1_stderr": 0.0,
}
HOW = {"method": "bootstrap over records", "resamples": 1000, "seed": 0}


def test_every_format_shows_the_stderr_as_plus_minus():
    runs = [Run(_results("rome", ERRORS, stderr=HOW))]
    lines = render(runs).splitlines()
    assert lines[2].split()[:6] == ["bizsre_en_zh", "rome", "77.65", "±", "4.32", "(67.98)"]
    assert "23.27 ± 0.00 (3.28)" in lines[2] and "72.27 (55.06)" in lines[2]  # no stderr stored: no ±
    assert lines[-1].startswith(
        "F1 ± standard error (EM) in percent (standard error: bootstrap over records, 1000 resamples, seed 0)"
    )
    assert "| bizsre_en_zh | rome | 77.65 ± 4.32 (67.98) | 72.27 (55.06) |" in render(runs, "markdown")
    assert r"bizsre\_en\_zh & rome & 77.65 $\pm$ 4.32 (67.98) & 72.27 (55.06) &" in render(runs, "latex")


def test_csv_has_a_stderr_column_beside_each_metric():
    rows = list(csv.DictReader(io.StringIO(render([Run(_results("rome", ERRORS, stderr=HOW))], "csv"))))
    assert list(rows[0])[9:14] == [
        "reliability.en.f1",
        "reliability.en.f1_stderr",
        "reliability.en.em",
        "reliability.en.em_stderr",
        "generality.en.f1",
    ]
    assert rows[0]["reliability.en.f1_stderr"] == "4.321" and rows[0]["generality.zh.f1_stderr"] == "0.0"
    assert "generality.en.f1_stderr" not in rows[0]  # a column only for the stderrs some row has
    assert rows[1]["row"] == "unedited" and rows[1]["reliability.en.f1_stderr"] == ""


def test_the_change_after_edits_shows_its_paired_interval_marked_beyond_noise():
    entry = {"metric": "accuracy", "n": 200, "edited": {"accuracy": 40.0, "f1": 50.0}}
    entry |= {"unedited": {"accuracy": 60.0, "f1": 52.0}, "change": {"accuracy": -20.0, "f1": -2.0}}
    entry["change_ci95"] = {"accuracy": [-29.5, -10.25], "f1": [-6.0, 2.5]}
    table = then_table({"general_nli": entry})
    assert table.header[-1] == "paired 95% CI"
    assert [row[-1] for row in table.body] == ["[-29.50, -10.25]*", "[-6.00, +2.50]"]
    assert "* the change is beyond example sampling noise" in table.footer
    del entry["change_ci95"]  # results written before the interval existed
    assert [row[-1] for row in then_table({"general_nli": entry}).body] == ["-", "-"]


def test_ability_tables_skip_stderr_keys():
    then = {
        "general_nli": {
            "metric": "accuracy",
            "n": 200,
            "edited": {"accuracy": 51.5, "accuracy_stderr": 3.5},
            "unedited": {"accuracy": 55.0, "accuracy_stderr": 3.5},
            "change": {"accuracy": -3.5},
        }
    }
    assert [row[1] for row in then_table(then).body] == ["accuracy"]
    ability = {
        "editor": "none",
        "task": {"name": "general_nli", "kind": "ability"},
        "results": {"general_nli": {"accuracy": 55.0, "accuracy_stderr": 3.5}},
    }
    assert ability_table([Run(ability)]).body == [["general_nli", "none", "accuracy", "55.00 ± 3.50"]]
