"""The MzsRE task family: variants discovered from files, records and probes, validation, training pools."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from harness import plugins
from harness.api import Capabilities, Edit, Editor, Probe, TrainingExample
from harness.config import ConfigError
from harness.hookspecs import hookimpl
from harness.runner import run

PROPERTIES = ("generality", "locality", "portability")


def side(lang: str, index: int) -> dict:
    """One language's side of record ``index``: every field names its language and record."""
    return {
        "subject": f"S{index}{lang}",
        "src": f"{lang} where is S{index}{lang}?",
        "rephrase": f"{lang} rephrase {index}",
        "alt": f"{lang} alt {index}",
        "loc": f"nq question: {lang} loc {index}" if lang == "en" else f"{lang} loc {index}",
        "loc_ans": f"{lang} loc_ans {index}",
        "portability": {"New Question": f"{lang} port {index}", "New Answer": f"{lang} port_ans {index}"},
    }


def write_language(data_dir: Path, lang: str, count: int = 3) -> Path:
    path = data_dir / "mzsre" / f"test_{lang}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([side(lang, i) for i in range(count)]), encoding="utf-8")
    return path


def mzsre_tasks(data_dir: Path | None) -> dict:
    return {name: task for name, task in plugins.tasks(data_dir).items() if name.startswith("mzsre_")}


def identity(question: str) -> str:
    return question


@pytest.fixture
def en_de(tmp_path) -> Path:
    write_language(tmp_path, "en")
    write_language(tmp_path, "de")
    return tmp_path


def expected_probes(index: int, edit: str, languages: tuple[str, ...]) -> list[Probe]:
    probes = [Probe("reliability", edit, f"{edit} where is S{index}{edit}?", f"{edit} alt {index}")]
    for lang in languages:
        probes += [
            Probe("generality", lang, f"{lang} rephrase {index}", f"{lang} alt {index}"),
            Probe(
                "locality", lang, f"{lang} loc {index}", f"{lang} loc_ans {index}", reference_is_pre_edit=True
            ),
            Probe("portability", lang, f"{lang} port {index}", f"{lang} port_ans {index}"),
        ]
    return probes


def test_variants_are_discovered_from_the_language_files(en_de):
    tasks = mzsre_tasks(en_de)
    assert set(tasks) == {"mzsre_en_de", "mzsre_de_en", "mzsre_en_all", "mzsre_de_all"}
    assert tasks["mzsre_de_en"].languages == ("de", "en")
    assert tasks["mzsre_de_all"].edit_language == "de"

    write_language(en_de, "fr")
    for ignored in ("test_eng.json", "test_EN.json", "test_en_old.json", "notes.json", "test_it.jsonl"):
        (en_de / "mzsre" / ignored).write_text("[]", encoding="utf-8")
    tasks = mzsre_tasks(en_de)
    pairs = {f"mzsre_{a}_{b}" for a in ("en", "de", "fr") for b in ("en", "de", "fr") if a != b}
    assert set(tasks) == pairs | {"mzsre_en_all", "mzsre_de_all", "mzsre_fr_all"}
    assert tasks["mzsre_en_all"].languages == ("en", "de", "fr")
    assert tasks["mzsre_fr_all"].languages == ("fr", "de", "en")
    for name, task in tasks.items():
        assert task.name == name
        assert task.properties == ("reliability", *PROPERTIES)
        assert task.template == "bizsre/question.jinja"


def test_no_data_dir_or_folder_registers_no_variant(tmp_path):
    assert mzsre_tasks(None) == {}
    assert mzsre_tasks(tmp_path) == {}
    assert "bizsre_en_zh" in plugins.tasks(None)


def test_pair_records_edit_in_one_language_and_probe_both(en_de):
    task = mzsre_tasks(en_de)["mzsre_en_de"]
    assert task.data_files(en_de) == [en_de / "mzsre" / "test_en.json", en_de / "mzsre" / "test_de.json"]
    raw = task.load_raw(en_de)
    assert raw == [{"en": side("en", i), "de": side("de", i)} for i in range(3)]
    assert task.validate(raw) == []
    records = task.records(raw, identity)
    assert [record.id for record in records] == ["0", "1", "2"]
    for index, record in enumerate(records):
        request = record.request
        assert (request.prompt, request.target, request.subject, request.language, request.record_id) == (
            f"en where is S{index}en?",
            f"en alt {index}",
            f"S{index}en",
            "en",
            str(index),
        )
        assert list(record.probes) == expected_probes(index, "en", ("en", "de"))
    assert [p.key for p in records[0].probes] == [
        "reliability.en",
        "generality.en",
        "locality.en",
        "portability.en",
        "generality.de",
        "locality.de",
        "portability.de",
    ]


def test_all_records_probe_every_language_edit_language_first(en_de):
    write_language(en_de, "fr")
    write_language(en_de, "cs")
    tasks = mzsre_tasks(en_de)
    en_all = tasks["mzsre_en_all"]
    raw = en_all.load_raw(en_de)
    records = en_all.records(raw, lambda question: f"Q: {question}")
    assert records[2].request.prompt == "Q: en where is S2en?"
    assert [p.prompt for p in records[2].probes[:3]] == [
        "Q: en where is S2en?",
        "Q: en rephrase 2",
        "Q: en loc 2",
    ]
    assert list(en_all.records(raw, identity)[1].probes) == expected_probes(1, "en", ("en", "cs", "de", "fr"))

    de_all = tasks["mzsre_de_all"]
    (record, *_) = de_all.records(de_all.load_raw(en_de), identity)
    assert record.request.language == "de"
    assert list(record.probes) == expected_probes(0, "de", ("de", "cs", "en", "fr"))


def test_different_record_counts_name_the_files(en_de):
    short = write_language(en_de, "fr", count=2)
    task = mzsre_tasks(en_de)["mzsre_en_fr"]
    with pytest.raises(ValueError, match="record counts differ") as info:
        task.load_raw(en_de)
    assert f"'{en_de / 'mzsre' / 'test_en.json'}': 3" in str(info.value)
    assert f"'{short}': 2" in str(info.value)


def test_validation_names_record_and_field(en_de):
    task = mzsre_tasks(en_de)["mzsre_en_de"]
    raw = task.load_raw(en_de)
    raw[0]["de"]["subject"] = "Prahy"  # not in src: aligned at edit time, not a data error
    del raw[1]["de"]["rephrase"]
    raw[2]["en"]["alt"] = "  "
    raw[2]["de"]["portability"] = {"New Question": "q"}
    assert [(i.index, i.field_name) for i in task.validate(raw)] == [
        (1, "de.rephrase"),
        (2, "en.alt"),
        (2, "de.portability.New Answer"),
    ]
    del raw[0]["de"]
    (issue, *_) = task.validate(raw)
    assert str(issue) == "record 0, field 'de': missing language side"


def test_training_questions_from_tsv(en_de, caplog):
    path = en_de / "zsre_train" / "train_en_10000.tsv"
    path.parent.mkdir()
    path.write_text(
        "Who wrote Q1?\tA1 \nno tab here\n Q2 \t A2\nQ3?\t\nQ4?\tA4\textra\nQ5?\tA5\n", encoding="utf-8"
    )
    (path.parent / "train_EN_10000.tsv").write_text("X\tY\n", encoding="utf-8")
    found = {name: ts for name, ts in plugins.training_sets(en_de).items() if name.startswith("mzsre_")}
    assert set(found) == {"mzsre_train_en"}
    training_set = found["mzsre_train_en"]
    assert (training_set.language, training_set.data_files(en_de)) == ("en", [path])
    tasks = mzsre_tasks(en_de)
    assert (tasks["mzsre_en_de"].training_set, tasks["mzsre_en_all"].training_set) == ("mzsre_train_en",) * 2
    assert tasks["mzsre_de_en"].training_set == ""

    with caplog.at_level(logging.WARNING):
        examples = training_set.examples(en_de)
    assert "skipped 3 line(s)" in caplog.text
    assert "[2, 4, 5]" in caplog.text
    facts = [("Who wrote Q1?", "A1"), ("Q2", "A2"), ("Q5?", "A5")]
    assert examples == [
        TrainingExample(
            prompt=question,
            target=answer,
            subject="",
            rephrase=question,
            locality_prompt=facts[(i + 1) % 3][0],
            locality_answer=facts[(i + 1) % 3][1],
            language="en",
        )
        for i, (question, answer) in enumerate(facts)
    ]
    assert examples[-1].locality_prompt == "Who wrote Q1?"  # the last wraps to the first
    with pytest.raises(FileNotFoundError, match="mzsre_train_en"):
        training_set.data_files(None)


def test_real_data_all_languages_agree_with_bizsre(data_dir):
    tasks = plugins.tasks(data_dir)
    languages = ("en", "cs", "de", "es", "fr", "nl", "pt", "ru", "zh")
    task = tasks["mzsre_en_all"]
    assert task.languages == languages
    assert task.training_set == "mzsre_train_en"
    raw = task.load_raw(data_dir)
    assert len(raw) == 743
    assert task.validate(raw) == []
    records = task.records(raw[:5], identity)
    keys = ["reliability.en"] + [f"{prop}.{lang}" for lang in languages for prop in PROPERTIES]
    assert all([p.key for p in record.probes] == keys for record in records)

    bizsre = tasks["bizsre_en_zh"]
    references = bizsre.records(bizsre.load_raw(data_dir)[:5], identity)
    for i, (record, reference) in enumerate(zip(records, references, strict=True)):
        # the same edit; its new answer is known in every language the task probes
        assert replace(record.request, targets=()) == replace(reference.request, targets=())
        assert dict(record.request.targets) == {lang: raw[i][lang]["alt"] for lang in languages}
        assert [p for p in record.probes if p.language in ("en", "zh")] == list(reference.probes)


@dataclass(frozen=True)
class NoSettings:
    pass


class SubjectLocator(Editor):
    """An editor that locates subjects (so the harness aligns them) and records what it was given."""

    hparams_class = NoSettings
    capabilities = Capabilities(locates_subject=True)
    given: list = []

    def edit(self, model, tokenizer, requests):
        SubjectLocator.given += requests
        return Edit(model, {})


class LocatorPlugin:
    @hookimpl
    def register_editors(self, register):
        register("test-locator", SubjectLocator)


def test_runs_align_subjects_record_the_strategy_and_can_skip_unaligned_records(tmp_path, register_plugin):
    write_language(tmp_path, "en")
    records = [side("de", i) for i in range(3)]
    records[0].update(subject="Zürich", src="Wo liegt Zürich?")  # exact
    records[1].update(subject="ZURICH", src="Wo liegt Zurich?")  # normalised (case, diacritic)
    records[2].update(subject="Rufen Sie den Doktor", src="Wer schrieb Call the Doctor?")  # no match
    (tmp_path / "mzsre" / "test_de.json").write_text(json.dumps(records), encoding="utf-8")
    register_plugin(LocatorPlugin())
    SubjectLocator.given = []
    settings = dict(editor="test-locator", task="mzsre_de_en", model="tiny-llama", data_dir=str(tmp_path))
    results = run(output_dir=str(tmp_path / "a"), progress=False, **settings)
    assert [r.subject for r in SubjectLocator.given] == ["Zürich", "Zurich", "Doctor"]
    assert results["subject_alignment"] == {
        "fallback": "prompt_end",
        "fuzzy_threshold": 0.7,
        "counts": {"exact": 1, "normalised": 1, "fuzzy": 0, "prompt_end": 1},
        "skipped": [],
    }
    lines = [json.loads(line) for line in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    assert [line["subject_alignment"]["strategy"] for line in lines] == ["exact", "normalised", "prompt_end"]
    assert lines[1]["subject_alignment"]["declared"] == "ZURICH"
    SubjectLocator.given = []
    skipping = run(
        output_dir=str(tmp_path / "b"), overrides={"subject_fallback": "skip"}, progress=False, **settings
    )
    assert [r.record_id for r in SubjectLocator.given] == ["0", "1"]
    assert skipping["subject_alignment"]["skipped"] == ["2"] and skipping["n-samples"] == {"mzsre_de_en": 2}


def test_editors_that_do_not_locate_subjects_get_the_declared_subject(tmp_path):
    write_language(tmp_path, "en")
    write_language(tmp_path, "de")
    results = run(
        editor="none",
        task="mzsre_de_en",
        model="tiny-llama",
        data_dir=str(tmp_path),
        output_dir=str(tmp_path / "o"),
        progress=False,
    )
    assert "subject_alignment" not in results
    line = json.loads((tmp_path / "o" / "samples.jsonl").read_text().splitlines()[0])
    assert line["request"]["subject"] == "S0de" and "subject_alignment" not in line


def test_a_stricter_fuzzy_threshold_sends_inflected_subjects_to_the_fallback(tmp_path, register_plugin):
    write_language(tmp_path, "en", count=1)
    records = [side("cs", 0)]
    records[0].update(subject="Praha", src="Jaké je hlavní město Prahy?")
    (tmp_path / "mzsre" / "test_cs.json").write_text(json.dumps(records), encoding="utf-8")
    register_plugin(LocatorPlugin())
    settings = dict(editor="test-locator", task="mzsre_cs_en", model="tiny-llama", data_dir=str(tmp_path))
    loose = run(output_dir=str(tmp_path / "a"), progress=False, **settings)
    strict = run(
        output_dir=str(tmp_path / "b"),
        overrides={"subject_fuzzy_threshold": 0.95},
        progress=False,
        **settings,
    )
    assert loose["subject_alignment"]["counts"]["fuzzy"] == 1
    assert strict["subject_alignment"]["counts"]["prompt_end"] == 1
    with pytest.raises(ConfigError, match="subject_fuzzy_threshold"):
        run(output_dir=str(tmp_path / "c"), overrides={"subject_fuzzy_threshold": 0}, **settings)
