"""Where is the subject in the prompt? Character spans for locate-then-edit methods (ROME, MEMIT).

Translated data often names the subject differently in the question than in the ``subject`` field
(case, diacritics, full-width forms, inflection: Czech "Praha" -> "Prahy"). Strategies are tried
from the most to the least certain, and the first that fires wins:

1. ``exact``: the subject occurs verbatim (its first occurrence).
2. ``normalised``: it occurs after folding case, diacritics (NFKD without combining marks),
   compatibility forms (full-width letters, ligatures), typographic quotes and dashes, and runs of
   whitespace; the span is mapped back to the original prompt's characters.
3. ``fuzzy``: the contiguous run of whole words (single characters in scripts written without
   spaces, such as Chinese) most similar to the subject after folding, if its
   ``difflib.SequenceMatcher`` ratio reaches the threshold; ties go to the earlier, then shorter, run.
   The ratio rewards the shared stem of an inflected form and penalises differing endings.
4. the declared fallback: ``prompt_end`` (the last word of the prompt, or its last character in
   scripts without spaces; score 0), or ``skip`` (no alignment, so the edit can be left out).

Nothing is silent: every alignment names the strategy that fired (with a score), so a fuzzy guess
or a fallback is never mistaken for a match, and results can count the edits located by each.
"""

from __future__ import annotations

import unicodedata
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, replace
from difflib import SequenceMatcher
from typing import Any

ALIGNMENT_STRATEGIES = ("exact", "normalised", "fuzzy", "prompt_end")
FALLBACKS = ("prompt_end", "skip")
# Scripts written without spaces between words: a fuzzy candidate may start or end at any character.
UNSPACED_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR")
TYPOGRAPHIC = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"}
)


@dataclass(frozen=True)
class SubjectAlignment:
    """The subject's character span ``[start, end)`` in the prompt, found by ``strategy``.

    ``surface == prompt[start:end]``; ``score`` is 1 for exact and normalised matches, the
    similarity for fuzzy ones and 0 for the fallback.
    """

    strategy: str
    start: int
    end: int
    surface: str
    score: float


@dataclass(frozen=True)
class FoldedText:
    """Text folded for comparison; ``origin[i]`` is the index of the original character that
    folded character ``i`` came from (folding changes lengths, so spans need this map)."""

    text: str
    origin: tuple[int, ...]

    def span_of(self, start: int, end: int) -> str:
        """The folded text of original characters ``[start, end)``."""
        return self.text[bisect_left(self.origin, start) : bisect_left(self.origin, end)]


def fold(text: str) -> FoldedText:
    """Case-, diacritic-, compatibility- and whitespace-folded ``text`` with its index map."""
    folded: list[str] = []
    origin: list[int] = []
    for index, char in enumerate(text):
        for piece in unicodedata.normalize("NFKD", char).translate(TYPOGRAPHIC).casefold():
            if unicodedata.combining(piece):
                continue
            if piece.isspace():
                if folded and folded[-1] == " ":
                    continue
                piece = " "
            folded.append(piece)
            origin.append(index)
    return FoldedText("".join(folded), tuple(origin))


def _is_word_char(char: str) -> bool:
    return char.isalnum() or unicodedata.category(char).startswith("M")


def _is_unspaced(char: str) -> bool:
    return char.isalnum() and unicodedata.name(char, "").startswith(UNSPACED_SCRIPTS)


def word_spans(text: str) -> list[tuple[int, int]]:
    """Spans of the words of ``text`` (runs of letters, digits and marks); every character of an
    unspaced script is a word of its own."""
    spans: list[tuple[int, int]] = []
    start: int | None = None
    for index, char in enumerate(text):
        if start is not None and (_is_unspaced(char) or not _is_word_char(char)):
            spans.append((start, index))
            start = None
        if _is_unspaced(char):
            spans.append((index, index + 1))
        elif start is None and _is_word_char(char):
            start = index
    if start is not None:
        spans.append((start, len(text)))
    return spans


def _alignment(strategy: str, prompt: str, start: int, end: int, score: float) -> SubjectAlignment:
    return SubjectAlignment(strategy, start, end, prompt[start:end], score)


def _normalised(prompt: str, folded_prompt: FoldedText, target: str) -> SubjectAlignment | None:
    at = folded_prompt.text.find(target)
    if at < 0:
        return None
    start, end = folded_prompt.origin[at], folded_prompt.origin[at + len(target) - 1] + 1
    while end < len(prompt) and unicodedata.combining(prompt[end]):
        end += 1  # keep a decomposed accent with its letter
    return _alignment("normalised", prompt, start, end, 1.0)


def _fuzzy(prompt: str, folded_prompt: FoldedText, target: str, threshold: float) -> SubjectAlignment | None:
    words = word_spans(prompt)
    matcher = SequenceMatcher(autojunk=False)
    matcher.set_seq2(target)
    best: tuple[float, int, int] | None = None
    for first, (start, _) in enumerate(words):
        for _, end in words[first:]:
            candidate = folded_prompt.span_of(start, end)
            if 2 * min(len(candidate), len(target)) / (len(candidate) + len(target)) < threshold:
                if len(candidate) > len(target):
                    break  # longer runs only get less similar
                continue
            matcher.set_seq1(candidate)
            if matcher.quick_ratio() < threshold:
                continue
            score = matcher.ratio()
            if score >= threshold and (best is None or score > best[0]):
                best = (score, start, end)
    return None if best is None else _alignment("fuzzy", prompt, best[1], best[2], best[0])


def _prompt_end(prompt: str) -> SubjectAlignment | None:
    words = word_spans(prompt)
    if not words:
        return None
    start, end = words[-1]
    if not _is_unspaced(prompt[start]):
        # the whole whitespace-delimited word ("Los-Angeles-Klasse", "l'IAAF"), without edge punctuation
        while start > 0 and not prompt[start - 1].isspace() and not _is_unspaced(prompt[start - 1]):
            start -= 1
        while not _is_word_char(prompt[start]):
            start += 1
    return _alignment("prompt_end", prompt, start, end, 0.0)


def align_subject(
    prompt: str, subject: str, fallback: str = "prompt_end", fuzzy_threshold: float = 0.7
) -> SubjectAlignment | None:
    """Locate ``subject`` in ``prompt`` (see the module docstring for the order of strategies).

    Returns None only with ``fallback="skip"`` when nothing matched, or when the prompt has no word
    to fall back on. An empty subject goes straight to the fallback.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown subject alignment fallback {fallback!r}; choose one of {FALLBACKS}")
    target = fold(subject).text.strip()
    if target:
        at = prompt.find(subject)
        if at >= 0:
            return _alignment("exact", prompt, at, at + len(subject), 1.0)
        folded = fold(prompt)
        found = _normalised(prompt, folded, target) or _fuzzy(prompt, folded, target, fuzzy_threshold)
        if found is not None:
            return found
    return _prompt_end(prompt) if fallback == "prompt_end" else None


@dataclass(frozen=True)
class AlignedRecords:
    """Records whose requests carry the subject as written in their prompt, how each was aligned,
    and the ids of records left out (fallback ``skip``)."""

    records: list[Any]
    per_record: dict[str, dict[str, Any]]
    skipped: list[str]

    def summary(self, fallback: str, fuzzy_threshold: float) -> dict[str, Any]:
        """What results.json reports: the settings, edits per strategy, skipped record ids."""
        counts = Counter(entry["strategy"] for entry in self.per_record.values())
        return {
            "fallback": fallback,
            "fuzzy_threshold": fuzzy_threshold,
            "counts": {strategy: counts.get(strategy, 0) for strategy in ALIGNMENT_STRATEGIES},
            "skipped": self.skipped,
        }


def align_records(records: list[Any], fallback: str, fuzzy_threshold: float = 0.7) -> AlignedRecords:
    """Align every record's subject with its edit prompt; the request's ``subject`` becomes the
    aligned text (so editors find it verbatim), the declared subject is kept in ``per_record``."""
    kept, per_record, skipped = [], {}, []
    for record in records:
        request = record.request
        found = align_subject(request.prompt, request.subject, fallback, fuzzy_threshold)
        if found is None:
            skipped.append(record.id)
            continue
        per_record[record.id] = {
            "strategy": found.strategy,
            "declared": request.subject,
            "surface": found.surface,
            "score": found.score,
        }
        kept.append(replace(record, request=replace(request, subject=found.surface)))
    return AlignedRecords(kept, per_record, skipped)
