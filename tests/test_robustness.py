"""Malformed records, configs and sample logs, generated: every case ends in a clear message that
names the file, record, field, option or line, with the exit code of an error of use (2) or of bad
data (1), never a traceback; no finished record is lost."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest

from harness.cli import main
from harness.results import SAMPLES, SampleLog, SampleLogError

SAMPLE = Path(__file__).parents[1] / "plugins" / "tasks" / "bizsre" / "sample" / "bizsre_sample_enzh_20.json"
FIELDS = ["subject", "src", "rephrase", "alt", "loc", "loc_ans"]
BAD_VALUES = {
    "none": None,
    "empty": "",
    "blank": "  \n",
    "invisible": "\u200b\ufeff",
    "number": 5,
    "list": [],
}
RECORD_CASES = [(lang, field, kind) for lang in ("en", "zh") for field in FIELDS for kind in BAD_VALUES]


def _data_dir(tmp_path: Path, records: list) -> Path:
    folder = tmp_path / "data" / "bizsre"
    folder.mkdir(parents=True)
    (folder / "bizsre_test_enzh_743.json").write_text(
        json.dumps(records, ensure_ascii=False), encoding="utf-8"
    )
    return tmp_path / "data"


@pytest.mark.parametrize(("lang", "field", "kind"), RECORD_CASES)
def test_a_malformed_record_field_is_named(lang, field, kind, tmp_path, capsys, harness_cache):
    records = json.loads(SAMPLE.read_text(encoding="utf-8"))[:3]
    broken = copy.deepcopy(records)
    broken[1][lang][field] = BAD_VALUES[kind]
    code = main(["validate", "--task", "bizsre_en_zh", "--data-dir", str(_data_dir(tmp_path, broken))])
    out = capsys.readouterr()
    assert code == 1
    assert f"record 1, field '{lang}.{field}'" in out.out
    assert "Traceback" not in out.out + out.err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"[]", "holds no records"),
        (b"\xff\xfe[", "line 1 is not UTF-8 text"),
        (b"[{", "not a JSON array or JSON lines of records"),
        (b'{"en": 1}\n{"en": \n', "not a JSON array or JSON lines of records"),
    ],
)
def test_an_unreadable_data_file_is_named(content, message, tmp_path, capsys, harness_cache):
    folder = tmp_path / "data" / "bizsre"
    folder.mkdir(parents=True)
    (folder / "bizsre_test_enzh_743.json").write_bytes(content)
    code = main(["validate", "--task", "bizsre_en_zh", "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 2
    assert "bizsre_test_enzh_743.json" in err and message in err and "Traceback" not in err


CONFIGS = [
    ("[run\n", "invalid TOML"),
    ("[runs]\n", "unknown section"),
    ("run = 5\n", "must be a table"),
    ("[run]\nseed = 'x'\n", "seed: expected int"),
    ("[run]\nmode = 'bogus'\n", "mode: 'bogus' is not one of"),
    ("[run]\nbatch_size = 0\n", "batch_size: 0 is out of range"),
    ("[run]\nanswer_mode = 'sampled'\n", "answer_mode: 'sampled' is not one of"),
    ("[run]\ndtype = 'int8'\n", "dtype: 'int8' is not one of"),
    ("[run]\ndevice = 'tpu:0:1'\n", "device: 'tpu:0:1' is not a device"),
    ("[run]\nunknown_key = 1\n", "unknown key(s) ['unknown_key']"),
    ("[run]\nsubject_fuzzy_threshold = 2.0\n", "subject_fuzzy_threshold: 2.0 is not in (0, 1]"),
    ('[models."tiny-lama".rome]\nlayer = 1\n', "no model of that name"),
    ('[models."tiny-llama".romee]\nlayer = 1\n', "no editor of that name"),
    ('[models."tiny-llama".rome]\nlayer = "one"\n', "layer: expected int"),
    ('[models."tiny-llama".rome]\nnot_a_setting = 1\n', "unknown key(s) ['not_a_setting']"),
    ('[models."tiny-llama".rome]\nlr = -1\n', "lr must be > 0"),
]


@pytest.mark.parametrize(("toml", "message"), CONFIGS)
def test_a_malformed_config_is_an_error_of_use_naming_the_key(toml, message, tmp_path, capsys, harness_cache):
    config = tmp_path / "harness.toml"
    config.write_text(toml, encoding="utf-8")
    out = tmp_path / "out"
    code = main(
        [
            "run",
            "--editor",
            "rome",
            "--task",
            "bizsre_en_zh",
            "--model",
            "tiny-llama",
            "--limit",
            "1",
            "--config",
            str(config),
            "--output-dir",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def _lines(count: int) -> list[bytes]:
    return [json.dumps({"record_id": f"r{i}", "probes": []}).encode() + b"\n" for i in range(count)]


@pytest.mark.parametrize("seed", range(12))
def test_a_cut_sample_log_keeps_every_finished_record(seed, tmp_path):
    """Cut anywhere (a killed write): every line that was complete before the cut is kept."""
    lines = _lines(6)
    content = b"".join(lines)
    cut = random.Random(seed).randrange(1, len(content))
    (tmp_path / SAMPLES).write_bytes(content[:cut])
    kept = [s["record_id"] for s in SampleLog(tmp_path).samples]
    complete = content[:cut].count(b"\n")
    whole_last = content[:cut].endswith(b"}")  # cut exactly before a newline: that record is whole
    assert kept == [f"r{i}" for i in range(complete + whole_last)]


@pytest.mark.parametrize("seed", range(12))
def test_garbage_inside_a_sample_log_is_named_and_nothing_is_dropped(seed, tmp_path):
    rng = random.Random(seed)
    lines = _lines(6)
    where = rng.randrange(0, 5)  # a line that is not the last
    lines[where] = lines[where][: rng.randrange(1, len(lines[where]) - 2)] + b"\n"
    content = b"".join(lines)
    (tmp_path / SAMPLES).write_bytes(content)
    with pytest.raises(SampleLogError, match=f"line {where + 1}: not one JSON record"):
        SampleLog(tmp_path)
    assert (tmp_path / SAMPLES).read_bytes() == content
