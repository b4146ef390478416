"""Stand-ins for a language's missing resources are logged and recorded in results.json, also when
the run that used them is resumed by another invocation."""

from __future__ import annotations

import logging

from test_mzsre import write_language

from harness import fallbacks
from harness.model_text import STARTERS, starters
from harness.runner import run
from harness.weight_editing.values import ESSENCE_PROMPTS, essence_template

STARTERS_DE = {"resource": "sampling starter words", "language": "de", "used": "the English starters"}


def test_a_language_without_its_own_resource_gets_the_english_one_noted_once(caplog):
    fallbacks.reset()
    with caplog.at_level(logging.WARNING):
        assert starters("de") == STARTERS["en"] and starters("de") == STARTERS["en"]
        assert starters("zh") == STARTERS["zh"]
        assert essence_template("sw") == ESSENCE_PROMPTS["en"] and essence_template("de") == "{} ist ein"
    assert [(e["resource"], e["language"]) for e in fallbacks._used] == [
        ("sampling starter words", "de"),
        ("essence prompt", "sw"),
    ]
    assert caplog.text.count("none for language 'de'") == 1
    fallbacks.reset()


def test_results_list_the_stand_ins_of_every_invocation(tmp_path):
    write_language(tmp_path, "en")
    write_language(tmp_path, "de")
    settings = dict(
        editor="rome",
        task="mzsre_de_en",
        model="tiny-llama",
        data_dir=str(tmp_path),
        limit=1,
        output_dir=str(tmp_path / "out"),
        overrides={"steps": 2, "contexts_per_length": 2, "second_moments": False},
        progress=False,
    )
    first = run(**settings)
    assert first["fallbacks"] == [STARTERS_DE]
    fallbacks.reset()
    assert fallbacks.in_run(tmp_path / "out") == [STARTERS_DE]  # on disk, for the invocations to come
    resumed = run(**settings)
    assert resumed["invocations"][-1]["records"] == [] and resumed["fallbacks"] == [STARTERS_DE]
    english = run(**{**settings, "task": "mzsre_en_de", "output_dir": str(tmp_path / "en")})
    assert english["fallbacks"] == []  # English edits: English context prefixes
