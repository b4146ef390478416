"""The Bi-ZsRE task plugin: variants, records and probes per docs/protocol.md, validation, data location."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jinja2
import pytest

from harness import plugins
from harness.api import Probe, ValidationIssue
from harness.templates import Templates

NAMES = {
    f"bizsre_{edit}_{other}{suffix}"
    for edit, other in (("en", "zh"), ("zh", "en"))
    for suffix in ("", "_reliability", "_generality", "_locality", "_portability")
}
ALL_KEYS = {
    "reliability.en",
    "generality.en",
    "generality.zh",
    "locality.en",
    "locality.zh",
    "portability.en",
    "portability.zh",
}


@pytest.fixture(scope="module")
def tasks():
    return plugins.tasks()


@pytest.fixture(scope="module")
def sample(tasks):
    return tasks["bizsre_en_zh"].load_raw(None)


@pytest.fixture(scope="module")
def templates():
    return Templates()


def renderer(templates, task):
    return lambda question: templates.render(task.template, question=question)


def test_registers_exactly_the_bizsre_variants(tasks):
    bizsre = {name: task for name, task in tasks.items() if name.startswith("bizsre_")}
    assert set(bizsre) == NAMES
    for name, task in bizsre.items():
        assert task.name == name
    assert tasks["bizsre_en_zh"].properties == ("reliability", "generality", "locality", "portability")
    assert tasks["bizsre_zh_en_portability"].properties == ("portability",)
    assert tasks["bizsre_zh_en"].edit_language == "zh"
    assert tasks["bizsre_en_zh_locality"].edit_language == "en"


def test_template_renders_strictly(templates, tasks):
    template = tasks["bizsre_en_zh"].template
    assert templates.render(template, question="Who is X?") == "Who is X?"
    assert template in templates.used
    with pytest.raises(jinja2.UndefinedError):
        templates.render(template)
    assert templates.render("bizsre/qa.jinja", question="Q?") == "Question: Q?\nAnswer:"
    with pytest.raises(ValueError, match="not found"):
        templates.render("bizsre/absent.jinja", question="Q?")


def test_en_zh_records_on_the_bundled_sample(tasks, sample, templates):
    task = tasks["bizsre_en_zh"]
    assert task.data_files(None)[0].name == "bizsre_sample_enzh_20.json"
    assert len(sample) == 20
    assert task.validate(sample) == []
    records = task.records(sample, renderer(templates, task))
    assert len(records) == 20
    assert [r.id for r in records] == [str(i) for i in range(20)]
    for raw, record in zip(sample, records):
        en, zh = raw["en"], raw["zh"]
        assert len(record.probes) == 7
        probes = {p.key: p for p in record.probes}
        assert set(probes) == ALL_KEYS
        request = record.request
        assert (request.prompt, request.target, request.subject, request.language) == (
            en["src"],
            en["alt"],
            en["subject"],
            "en",
        )
        assert request.record_id == record.id
        assert probes["reliability.en"] == Probe("reliability", "en", en["src"], en["alt"])
        assert probes["generality.en"] == Probe("generality", "en", en["rephrase"], en["alt"])
        assert probes["generality.zh"] == Probe("generality", "zh", zh["rephrase"], zh["alt"])
        for lang, side in (("en", en), ("zh", zh)):
            loc = probes[f"locality.{lang}"]
            assert loc.reference_is_pre_edit is True
            assert loc.expected == side["loc_ans"]
            assert loc.prompt == side["loc"].removeprefix("nq question: ")
            assert not loc.prompt.startswith("nq question")
            port = probes[f"portability.{lang}"]
            assert port == Probe(
                "portability", lang, side["portability"]["New Question"], side["portability"]["New Answer"]
            )
        others = [p for p in record.probes if p.property != "locality"]
        assert not any(p.reference_is_pre_edit for p in others)


def test_sample_locality_prompts_lose_exactly_the_prefix(tasks, sample, templates):
    task = tasks["bizsre_en_zh"]
    records = task.records(sample[:1], renderer(templates, task))
    assert sample[0]["en"]["loc"] == "nq question: who wrote the novel pride and prejudice"
    loc = next(p for p in records[0].probes if p.key == "locality.en")
    assert loc.prompt == "who wrote the novel pride and prejudice"


def test_locality_prefix_is_removed_as_a_prefix_not_a_character_set(tasks, sample, templates):
    task = tasks["bizsre_en_zh"]
    raw = copy.deepcopy(sample[0])
    raw["en"]["loc"] = "nq question: nobody question"  # lstrip("nq question: ") would give "body question"
    raw["zh"]["loc"] = "question nq question: stays"  # no prefix: untouched
    (record,) = task.records([raw], renderer(templates, task))
    probes = {p.key: p for p in record.probes}
    assert probes["locality.en"].prompt == "nobody question"
    assert probes["locality.zh"].prompt == "question nq question: stays"


def test_zh_en_edits_in_chinese(tasks, sample, templates):
    task = tasks["bizsre_zh_en"]
    records = task.records(sample, renderer(templates, task))
    for raw, record in zip(sample, records):
        zh = raw["zh"]
        request = record.request
        assert (request.prompt, request.target, request.subject, request.language) == (
            zh["src"],
            zh["alt"],
            zh["subject"],
            "zh",
        )
        keys = [p.key for p in record.probes]
        assert len(keys) == 7
        assert set(keys) == ALL_KEYS - {"reliability.en"} | {"reliability.zh"}
        reliability = record.probes[keys.index("reliability.zh")]
        assert reliability == Probe("reliability", "zh", zh["src"], zh["alt"])


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("bizsre_en_zh_locality", ["locality.en", "locality.zh"]),
        ("bizsre_zh_en_locality", ["locality.en", "locality.zh"]),
        ("bizsre_en_zh_reliability", ["reliability.en"]),
        ("bizsre_zh_en_reliability", ["reliability.zh"]),
        ("bizsre_en_zh_generality", ["generality.en", "generality.zh"]),
        ("bizsre_zh_en_portability", ["portability.en", "portability.zh"]),
    ],
)
def test_single_property_variants(tasks, sample, templates, name, keys):
    task = tasks[name]
    records = task.records(sample, renderer(templates, task))
    assert len(records) == 20
    for record in records:
        assert sorted(p.key for p in record.probes) == keys
        assert record.request.language == task.edit_language
        if name.endswith("_locality"):
            assert all(p.reference_is_pre_edit for p in record.probes)


def test_probes_go_through_the_template(tasks, sample):
    """A non-trivial template is applied to every prompt, including the edit request's."""
    task = tasks["bizsre_en_zh"]
    templates = Templates()
    (record,) = task.records(sample[:1], lambda q: templates.render("bizsre/qa.jinja", question=q))
    en = sample[0]["en"]
    assert record.request.prompt == f"Question: {en['src']}\nAnswer:"
    for probe in record.probes:
        assert probe.prompt.startswith("Question: ")
        assert probe.prompt.endswith("\nAnswer:")
    loc = next(p for p in record.probes if p.key == "locality.en")
    assert loc.prompt == f"Question: {en['loc'].removeprefix('nq question: ')}\nAnswer:"


def issues_of(task, raw):
    issues = task.validate(raw)
    assert all(isinstance(i, ValidationIssue) for i in issues)
    return [(i.index, i.field_name) for i in issues]


def test_validate_locates_each_problem(tasks, sample):
    good = sample[0]
    missing = copy.deepcopy(good)
    del missing["en"]["rephrase"]
    empty_alt = copy.deepcopy(good)
    empty_alt["en"]["alt"] = "   "
    bad_subject = copy.deepcopy(good)
    bad_subject["en"]["subject"] = "Atlantis"
    zh_missing_port = copy.deepcopy(good)
    del zh_missing_port["zh"]["portability"]["New Answer"]
    no_zh = copy.deepcopy(good)
    del no_zh["zh"]
    raw = [good, missing, empty_alt, bad_subject, zh_missing_port, no_zh]

    en_zh = tasks["bizsre_en_zh"]
    assert issues_of(en_zh, raw) == [
        (1, "en.rephrase"),
        (2, "en.alt"),
        (3, "en.subject"),
        (4, "zh.portability.New Answer"),
        (5, "zh"),
    ]
    issue = en_zh.validate([bad_subject])[0]
    assert "Atlantis" in issue.problem
    assert str(issue).startswith("record 0, field 'en.subject'")
    # the subject is only checked in the edit language
    assert issues_of(tasks["bizsre_zh_en"], raw) == [
        (1, "en.rephrase"),
        (2, "en.alt"),
        (4, "zh.portability.New Answer"),
        (5, "zh"),
    ]
    zh_subject = copy.deepcopy(good)
    zh_subject["zh"]["subject"] = "不存在"
    assert issues_of(tasks["bizsre_zh_en"], [good, zh_subject]) == [(1, "zh.subject")]
    assert issues_of(en_zh, [good, zh_subject]) == []


def test_validate_wrong_types(tasks, sample):
    record = copy.deepcopy(sample[0])
    record["en"]["alt"] = 5
    record["zh"]["portability"] = "not a dict"
    assert issues_of(tasks["bizsre_en_zh"], [record]) == [
        (0, "en.alt"),
        (0, "zh.portability.New Question"),
        (0, "zh.portability.New Answer"),
    ]


def test_missing_data_file_names_the_path(tasks, tmp_path):
    task = tasks["bizsre_en_zh"]
    with pytest.raises(FileNotFoundError) as info:
        task.data_files(tmp_path)
    assert str(tmp_path / "bizsre" / "bizsre_test_enzh_743.json") in str(info.value)
    with pytest.raises(FileNotFoundError, match="bizsre_test_enzh_743.json"):
        task.load_raw(tmp_path)


def test_data_dir_file_is_loaded(tasks, sample, tmp_path):
    task = tasks["bizsre_zh_en"]
    (tmp_path / "bizsre").mkdir()
    path = tmp_path / "bizsre" / "bizsre_test.json"  # the fallback name
    path.write_text(json.dumps(sample[:3], ensure_ascii=False), encoding="utf-8")
    assert task.data_files(tmp_path) == [path]
    assert task.load_raw(tmp_path) == sample[:3]


def test_full_dataset_validates_cleanly(tasks, data_dir):
    path = data_dir / "bizsre" / "bizsre_test_enzh_743.json"
    for name in ("bizsre_en_zh", "bizsre_zh_en"):
        task = tasks[name]
        assert task.data_files(Path(data_dir)) == [path]
        raw = task.load_raw(Path(data_dir))
        assert len(raw) == 743
        issues = task.validate(raw)
        assert [str(i) for i in issues] == []
