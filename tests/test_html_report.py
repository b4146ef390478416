"""Reports from real run outputs (the tiny random model, seconds): CSV and LaTeX against results.json,
the charts (files and what is drawn), the CLI, and the HTML page rendered by a headless chromium."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from matplotlib.container import BarContainer
from matplotlib.patches import Polygon

from harness.charts import charts, write_charts
from harness.cli import main
from harness.html_report import SAMPLES, read_samples, script_json, write_html
from harness.report import SHORT, columns, load_runs, render
from harness.runner import run

TASK = "bizsre_en_zh"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def outputs(tmp_path_factory, harness_cache) -> Path:
    """Three real runs on the tiny model: rome and ft-m (3 records each), ft-m sequential probed after
    every edit (a decay curve)."""
    root = tmp_path_factory.mktemp("report-runs")
    common = dict(task=TASK, model="tiny-llama", limit=3, progress=False)
    quick = {"overrides": {"steps": 3}}
    run(
        editor="rome",
        output_dir=str(root / "rome"),
        overrides={"steps": 3, "contexts_per_length": 1},
        **common,
    )
    run(editor="ft-m", output_dir=str(root / "ft-m"), **quick, **common)
    run(editor="ft-m", output_dir=str(root / "ft-m-seq"), mode="sequential", probe_every=1, **quick, **common)
    return root


@pytest.fixture(scope="session")
def runs(outputs):
    return load_runs([outputs])


def _chromium() -> str:
    found = shutil.which("chromium")
    if not found:
        pytest.fail(
            "chromium is not installed; the HTML report is tested in it. Install it with "
            "`apt-get update && apt-get install -y chromium` (as root; .ci/run does this)"
        )
    return found


def _dom(page: Path, tmp_path: Path, fragment: str = "") -> str:
    """The page's DOM after its scripts ran, as headless chromium serialises it."""
    done = subprocess.run(
        [
            _chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--dump-dom",
            page.resolve().as_uri() + fragment,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0 and "<body" in done.stdout, done.stderr[-2000:]
    return done.stdout


def _visible(text: str) -> str:
    """An answer as the page shows it (line breaks as a return sign), escaped as in serialised HTML."""
    return html.escape(text.replace("\n", "\u21b5"), quote=False)


def test_csv_and_latex_hold_the_runs_numbers(runs):
    assert [run.editor for run in runs] == ["ft-m", "ft-m", "rome"]  # folders ft-m, ft-m-seq, rome
    rows = list(csv.DictReader(io.StringIO(render(runs, "csv"))))
    assert [(row["run"], row["row"]) for row in rows] == [
        ("ft-m", "edited"),
        ("ft-m", "unedited"),
        ("ft-m sequential", "edited"),
        ("ft-m sequential", "after edits"),
        ("ft-m sequential", "after edits"),
        ("ft-m sequential", "unedited"),
        ("rome", "edited"),
        ("rome", "unedited"),
    ]
    for row, (run_, kind) in zip(rows, [(runs[0], "results"), (runs[0], "pre_edit")]):
        scores = run_.results[kind][TASK]
        assert {k: float(row[k]) for k in scores} == {k: round(v, 4) for k, v in scores.items()}
    decay = runs[1].results["decay"]
    assert [int(row["edits"]) for row in rows[2:6]] == [3, 1, 2, 0]
    assert float(rows[4]["locality.zh.f1"]) == round(decay[1]["results"]["locality.zh.f1"], 4)
    latex = render(runs, "latex")
    assert r"\toprule" in latex and r"\bottomrule" in latex and r"bizsre\_en\_zh & rome & " in latex
    table = [line for line in latex.splitlines() if not line.startswith("%")]  # comments stay verbatim
    assert "bizsre_en_zh" not in "".join(table).replace(r"bizsre\_en\_zh", "")


def test_charts_are_written_as_png_and_svg_named_after_editor_and_task(runs, tmp_path):
    names = {
        f"radar_{TASK}",
        f"gap_{TASK}",
        f"radar_ft-m_{TASK}",
        f"radar_ft-m-sequential_{TASK}",
        f"decay_ft-m-sequential_{TASK}",
        f"radar_rome_{TASK}",
    }
    pngs = write_charts(runs, tmp_path / "png")
    assert {path.stem for path in pngs} == names and all(path.suffix == ".png" for path in pngs)
    for path in pngs:
        head = path.read_bytes()[:24]
        assert head[:8] == PNG_MAGIC
        width, height = struct.unpack(">II", head[16:24])
        assert 800 <= width <= 2400 and 600 <= height <= 1200, (path.name, width, height)
    radar = tmp_path / "png" / f"radar_rome_{TASK}.png"
    assert struct.unpack(">II", radar.read_bytes()[16:24]) == (960, 1020)  # 6.4 x 6.8 in at 150 dpi
    svgs = write_charts(runs, tmp_path / "svg", "svg")
    for path in svgs:
        root = ElementTree.parse(path).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = "".join(ElementTree.parse(tmp_path / "svg" / f"gap_{TASK}.svg").getroot().itertext())
    assert f"Cross-lingual gap on {TASK}" in texts and "en (edit language)" in texts
    with pytest.raises(ValueError, match="choose one of png, svg"):
        write_charts(runs, tmp_path, "jpg")


def test_radars_draw_a_polygon_per_run_on_every_column_and_the_unedited_model_dashed(runs):
    drawn = {chart.name: chart.figure for chart in charts(runs)}
    rome = runs[2].results
    cols = columns(rome["results"][TASK])
    ax = drawn[f"radar_rome_{TASK}"].axes[0]
    (polygon,) = [p for p in ax.patches if isinstance(p, Polygon)]
    assert list(polygon.get_xy()[: len(cols), 1]) == pytest.approx(
        [rome["results"][TASK][f"{c}.f1"] for c in cols]
    )
    assert [t.get_text() for t in ax.texts] == [f"{SHORT[c.split('.')[0]]} {c.split('.')[1]}" for c in cols]
    unedited = next(line for line in ax.lines if line.get_label() == "unedited model")
    assert unedited.get_linestyle() == "--"
    for column, value in zip(cols, unedited.get_ydata()):
        pre = rome["pre_edit"][TASK].get(f"{column}.f1")
        assert math.isnan(value) if pre is None else value == pytest.approx(pre)
    assert ax.get_ylim() == (0, 100)
    (band,) = [c for c in ax.collections if c.get_label() == "± stderr"]  # around the polygon
    ring = {round(float(r), 6) for r in band.get_paths()[0].vertices[:, 1]}
    for column in cols:
        f1, error = (rome["results"][TASK][f"{column}.{key}"] for key in ("f1", "f1_stderr"))
        assert {round(min(100.0, f1 + error), 6), round(max(0.0, f1 - error), 6)} <= ring

    overlay = drawn[f"radar_{TASK}"]
    polygons = [p for p in overlay.axes[0].patches if isinstance(p, Polygon)]
    assert len(polygons) == 3
    legend = [t.get_text() for t in overlay.legends[0].get_texts()]
    assert legend == ["ft-m", "ft-m sequential", "rome", "unedited model"]


def test_gap_and_decay_charts_plot_the_runs_scores(runs):
    drawn = {chart.name: chart.figure for chart in charts(runs)}
    ax = drawn[f"gap_{TASK}"].axes[0]
    edit_language, other = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [bar.get_height() for bar in edit_language] == pytest.approx(
        [r.results["results"][TASK]["generality.en.f1"] for r in runs]
    )
    assert [bar.get_height() for bar in other] == pytest.approx(
        [r.results["results"][TASK]["generality.zh.f1"] for r in runs]
    )
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["en (edit language)", "zh"]
    assert TASK in ax.get_title()
    (whiskers,) = other.errorbar.lines[2]  # an error bar per run: F1 - stderr to F1 + stderr
    assert [(high - low) / 2 for (_, low), (_, high) in whiskers.get_segments()] == pytest.approx(
        [r.results["results"][TASK]["generality.zh.f1_stderr"] for r in runs]
    )
    assert ax.get_ylabel() == "generality F1 (bars: ± stderr)"

    decay = runs[1].results["decay"]
    ax = drawn[f"decay_ft-m-sequential_{TASK}"].axes[0]
    assert len(ax.lines) == len(columns(runs[1].results["results"][TASK]))
    line = next(line for line in ax.lines if line.get_label() == "locality zh")
    assert list(line.get_xdata()) == [1, 2, 3]
    assert list(line.get_ydata()) == pytest.approx([p["results"]["locality.zh.f1"] for p in decay])
    assert ax.get_xlabel().startswith("edits applied") and ax.get_ylim() == (-2, 102)


def test_the_cli_prints_tables_and_writes_charts_and_the_page(outputs, tmp_path, capsys):
    assert main(["report", str(outputs), "--format", "csv", "--charts", str(tmp_path / "c")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("run,task,editor,model,mode,row,edits,records,path,reliability.en.f1,")
    assert f"chart: {tmp_path / 'c' / f'radar_rome_{TASK}.png'}" in err.splitlines()
    assert main(["report", str(outputs / "rome" / "results.json"), "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("| task | editor | rel en |")
    assert main(["report", str(outputs), "--html", str(tmp_path / "r.html")]) == 0
    assert f"html: {tmp_path / 'r.html'}" in capsys.readouterr().err
    assert (tmp_path / "r.html").stat().st_size > 10_000


def test_the_page_renders_every_probe_offline_in_a_browser(runs, tmp_path):
    page = write_html(runs, tmp_path / "report.html")
    source = page.read_text(encoding="utf-8")
    assert not re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", source, re.IGNORECASE)
    assert "<link" not in source and "<script src" not in source and "<img" not in source

    dom = _dom(page, tmp_path)
    assert re.search(r'<body[^>]*data-ready="1"', dom) and "data-error" not in dom
    assert not re.findall(r"""(?:src|href)="(?:https?:)?//""", dom)
    first = read_samples(runs[0])  # the browser opens on the first run
    assert dom.count('<tr class="probe') == sum(len(r["probes"]) for r in first) > 0
    assert f"{len(first)} records, {sum(len(r['probes']) for r in first)} probes match" in dom
    probe = first[0]["probes"][0]
    row = dom[dom.index(f'<td class="prompt">{html.escape(probe["prompt"], quote=False)}</td>') :]
    row = row[: row.index("</tr>")]
    assert _visible(probe["pre"]) in row and _visible(probe["post"]) in row
    assert f"F1 {math.floor(100 * probe['post_scores']['f1'] + 0.5)}" in row  # as JavaScript rounds
    assert dom.count("<svg") == sum(1 for _ in charts(runs))  # every chart inline
    assert "<th>zh</th>" in dom and "(unedited)" in dom
    rome_f1 = runs[2].results["results"][TASK]
    cell = f"{rome_f1['reliability.en.f1']:.2f} ± {rome_f1['reliability.en.f1_stderr']:.2f} ("
    assert f">{cell}" in dom and "F1 ± standard error (EM) in percent" in dom

    rome = read_samples(runs[2])
    dom = _dom(page, tmp_path, "#run=2&property=locality&language=zh")
    shown = re.findall(r'<tr class="probe[^"]*" data-property="([^"]+)" data-language="([^"]+)"', dom)
    assert shown == [("locality", "zh")] * sum(
        1 for r in rome for p in r["probes"] if (p["property"], p["language"]) == ("locality", "zh")
    )
    assert f"{len(rome)} records, {len(shown)} probes match" in dom


def test_text_in_the_data_cannot_break_out_of_the_page(outputs, tmp_path):
    folder = tmp_path / "hostile"
    shutil.copytree(outputs / "rome", folder)
    evil = '</script><script>document.body.dataset.pwned="1"</script><!-- & "quoted"'
    lines = (folder / SAMPLES).read_text(encoding="utf-8").splitlines()
    sample = json.loads(lines[0])
    sample["probes"][0]["prompt"] = evil
    sample["probes"][0]["post"] = "<b>bold</b>"
    (folder / SAMPLES).write_text("\n".join([json.dumps(sample), *lines[1:]]) + "\n", encoding="utf-8")
    assert "<" not in script_json({"x": evil}) and "&" not in script_json({"x": evil})

    page = write_html(load_runs([folder]), tmp_path / "hostile.html")
    dom = _dom(page, tmp_path)
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-ready="1"' in body and "pwned" not in body and "<b>bold</b>" not in dom
    assert html.escape(evil, quote=False) in dom and "&lt;b&gt;bold&lt;/b&gt;" in dom
