"""The paper-style table: paper column order, F1 (EM) cells, the unedited row beneath."""

from __future__ import annotations

from harness.report import columns, table

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
