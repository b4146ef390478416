"""Subject alignment: which strategy fires, and spans in the original prompt's characters."""

from __future__ import annotations

import json
import unicodedata
from collections import Counter

import pytest

from harness.subjects import ALIGNMENT_STRATEGIES, FALLBACKS, SubjectAlignment, align_subject, fold

# README of the shared data: records whose subject is not verbatim in src, of 743.
NOT_VERBATIM = {"zh": 0, "cs": 315, "de": 210, "es": 369, "fr": 374, "nl": 330, "pt": 333, "ru": 383}


def aligned(prompt: str, subject: str, **options) -> SubjectAlignment:
    alignment = align_subject(prompt, subject, **options)
    assert alignment is not None
    assert alignment.surface == prompt[alignment.start : alignment.end]
    assert alignment.strategy in ALIGNMENT_STRATEGIES
    return alignment


def test_verbatim_subject_is_exact_at_its_first_occurrence():
    prompt = "Who founded Acme, and when did Acme close?"
    assert aligned(prompt, "Acme") == SubjectAlignment("exact", 12, 16, "Acme", 1.0)


@pytest.mark.parametrize(
    ("prompt", "subject", "surface"),
    [
        ("Where was marie curie born?", "Marie Curie", "marie curie"),
        ("What is the population of Zürich?", "Zurich", "Zürich"),
        ("What is the population of Zurich?", "Zürich", "Zurich"),
        ("Where was François Truffaut born?", "Francois Truffaut", "François Truffaut"),
        ("Where was Francois Truffaut born?", "François Truffaut", "Francois Truffaut"),
        ("Who designed the Ｔｏｋｙｏ Tower?", "Tokyo Tower", "Ｔｏｋｙｏ Tower"),
        ("Who wrote  The   Hobbit?", "the hobbit", "The   Hobbit"),
        ("Quand fut créé le Défi de l’IAAF ?", "Défi de l'IAAF", "Défi de l’IAAF"),
    ],
)
def test_normalised_match_folds_case_diacritics_width_whitespace_and_quotes(prompt, subject, surface):
    alignment = aligned(prompt, subject)
    assert (alignment.strategy, alignment.surface, alignment.score) == ("normalised", surface, 1.0)


def test_normalised_span_maps_back_through_length_changes():
    # "ß" folds to "ss" and the ligature "ﬁ" to "fi": folded offsets run ahead of the prompt's
    prompt = "Die Straße der ﬁnalen Route führt nach Zürich."
    assert len(fold(prompt).text) == len(prompt) + 2
    alignment = aligned(prompt, "zurich")
    assert (alignment.start, alignment.end, alignment.surface) == (39, 45, "Zürich")
    decomposed = unicodedata.normalize("NFD", prompt)  # "u" + combining diaeresis: one character longer
    alignment = aligned(decomposed, "Zurich")
    assert alignment.strategy == "normalised"
    assert alignment.surface == unicodedata.normalize("NFD", "Zürich")
    assert (alignment.start, alignment.end) == (decomposed.index("Zu"), len(decomposed) - 1)


def test_inflected_czech_subject_is_a_fuzzy_match():
    alignment = aligned("Jaké je hlavní město Prahy?", "Praha")
    assert (alignment.strategy, alignment.surface) == ("fuzzy", "Prahy")
    assert alignment.score == pytest.approx(0.8)


def test_inflected_russian_subject_is_a_fuzzy_match():
    alignment = aligned("Какое население Москвы?", "Москва")
    assert (alignment.strategy, alignment.surface) == ("fuzzy", "Москвы")
    alignment = aligned("Какой тип голоса у Лолы Бет?", "Лола Бет")
    assert (alignment.strategy, alignment.surface) == ("fuzzy", "Лолы Бет")


def test_fuzzy_span_is_whole_words_without_edge_punctuation():
    alignment = aligned("Who directed (Gangland Odyssey)?", "Gangland Odyssee")
    assert (alignment.strategy, alignment.surface) == ("fuzzy", "Gangland Odyssey")
    below = align_subject("Who directed Gangland Odyssey?", "Gangland Odyssee", fuzzy_threshold=0.99)
    assert below is not None and below.strategy == "prompt_end"


def test_fuzzy_ties_go_to_the_earlier_span():
    alignment = aligned("Is Prahy bigger than Prahy?", "Praha")
    assert (alignment.strategy, alignment.start) == ("fuzzy", 3)


def test_no_match_falls_back_to_the_last_word():
    prompt = "Which artist created Call the Doctor?"
    assert aligned(prompt, "Zavolejte doktora") == SubjectAlignment("prompt_end", 30, 36, "Doctor", 0.0)
    assert align_subject(prompt, "Zavolejte doktora", fallback="skip") is None
    hyphenated = aligned("Which class is the USS Jimmy Carter (Los-Angeles-Klasse)?", "Xyz")
    assert hyphenated.surface == "Los-Angeles-Klasse"


@pytest.mark.parametrize("subject", ["", "   "])
def test_empty_subject_goes_straight_to_the_fallback(subject):
    assert aligned("What is the capital of France?", subject).strategy == "prompt_end"
    assert align_subject("What is the capital of France?", subject, fallback="skip") is None


def test_unknown_fallback_names_the_option_and_the_choices():
    with pytest.raises(ValueError, match="'guess'") as info:
        align_subject("Q?", "Q", fallback="guess")
    for name in FALLBACKS:
        assert name in str(info.value)


def test_chinese_prompts_align_by_characters():
    prompt = "北京的人口是多少？"
    assert aligned(prompt, "北京") == SubjectAlignment("exact", 0, 2, "北京", 1.0)
    fuzzy = aligned(prompt, "北京市")
    assert (fuzzy.strategy, fuzzy.surface) == ("fuzzy", "北京")
    assert aligned(prompt, "上海") == SubjectAlignment("prompt_end", 7, 8, "少", 0.0)
    # a Latin word and then single characters: the best run may end inside the Chinese text
    mixed = aligned("IAAF综合项目挑战赛的创立时间是什么时候？", "IAAF综合项目挑战杯")
    assert (mixed.strategy, mixed.surface) == ("fuzzy", "IAAF综合项目挑战")


def test_real_mzsre_subjects_all_align(data_dir):
    """Every record of every non-English file aligns; exact counts match the README."""
    counts = {}
    for lang, not_verbatim in NOT_VERBATIM.items():
        records = json.loads((data_dir / "mzsre" / f"test_{lang}.json").read_text(encoding="utf-8"))
        strategies = Counter()
        for record in records:
            alignment = align_subject(record["src"], record["subject"])
            assert alignment is not None
            assert alignment.surface == record["src"][alignment.start : alignment.end]
            strategies[alignment.strategy] += 1
        assert strategies["exact"] == len(records) - not_verbatim == 743 - not_verbatim
        counts[lang] = {name: strategies[name] for name in ALIGNMENT_STRATEGIES}
    print("\nsubject alignment on MzsRE src:")
    for lang, by_strategy in counts.items():
        print(f"  {lang}: {by_strategy}")
