"""example_capitals_*: registration, records and probes from the bundled file, and validation errors."""

from __future__ import annotations

import copy
import importlib.metadata

import kedit_task_example
import pluggy
import pytest
from kedit_task_example import CapitalsTask

from harness import hookspecs
from harness.templates import Templates

EN = CapitalsTask("en")


@pytest.fixture(scope="module")
def raw() -> list[dict]:
    return EN.load_raw(None)


def render(question: str) -> str:
    """What the harness passes to ``records``: the task's template over the package's own directory."""
    return Templates(kedit_task_example.template_dirs()).render(EN.template, question=question)


def test_tasks_and_template_register_with_a_fresh_plugin_manager():
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(hookspecs)
    manager.register(kedit_task_example)
    found = {}
    manager.hook.register_tasks(register=lambda task: found.setdefault(task.name, task), data_dir=None)
    assert sorted(found) == ["example_capitals_de", "example_capitals_en"]
    (directories,) = manager.hook.template_dirs()
    assert "kedit_task_example/question.jinja" in Templates(directories).environment.list_templates()


def test_installed_distribution_ships_the_data_and_the_entry_point():
    try:
        dist = importlib.metadata.distribution("kedit-task-example")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("kedit-task-example is not installed (run from a source checkout)")
    (entry,) = [e for e in dist.entry_points if e.group == "harness"]
    assert entry.load() is kedit_task_example
    assert EN.data_files(None)[0].is_file()


def test_bundled_data_is_valid(raw):
    assert [r["id"] for r in raw] == ["norway", "japan", "egypt", "italy", "spain", "peru"]
    assert EN.validate(raw) == [] and CapitalsTask("de").validate(raw) == []


def test_records_hold_the_edit_and_probes_in_order(raw):
    record = EN.records(raw, render)[0]
    request = record.request
    assert record.id == "norway" and request.record_id == "norway"
    assert request.prompt == "Q: What is the capital of Norway?\nA:"
    assert (request.target, request.subject, request.language) == ("Bergen", "Norway", "en")
    assert [p.key for p in record.probes] == [
        "reliability.en",
        "generality.en",
        "locality.en",
        "generality.de",
        "locality.de",
    ]
    generality_de, locality_de = record.probes[3], record.probes[4]
    assert generality_de.prompt == "Q: Welche Stadt ist die Hauptstadt Norwegens?\nA:"
    assert generality_de.expected == "Bergen" and not generality_de.reference_is_pre_edit
    assert locality_de.expected == "Honig" and locality_de.reference_is_pre_edit


def test_the_german_variant_edits_in_german(raw):
    request = CapitalsTask("de").records(raw, render)[3].request
    assert (request.prompt, request.target, request.subject, request.language) == (
        "Q: Was ist die Hauptstadt von Italien?\nA:",
        "Mailand",
        "Italien",
        "de",
    )


def test_validation_names_each_bad_record_and_field(raw):
    bad = copy.deepcopy(raw)
    bad[1]["de"]["answer"] = " "
    del bad[2]["en"]
    bad[3]["id"] = "norway"
    bad[4]["en"]["subject"] = "Castile"
    bad[5]["id"] = ""
    bad.append("not a record")
    assert [str(issue) for issue in EN.validate(bad)] == [
        "record 1, field 'de.answer': missing or empty (id 'japan')",
        "record 2, field 'en': missing language side (id 'egypt')",
        "record 3, field 'id': 'norway' repeats record 0",
        "record 4, field 'en.subject': not found in the question (id 'spain')",
        "record 5, field 'id': missing or empty",
        "record 6, field '(record)': expected an object, got str",
    ]
    assert CapitalsTask("de").validate(bad[4:5]) == []  # the German side of that record is fine
