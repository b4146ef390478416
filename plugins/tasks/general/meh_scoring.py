"""Scores of the ``meh`` profile: the rules of Gu et al.'s evaluation scripts (Model-Editing-Hurt,
``test-task-code/test-*.py`` and ``test-task-after-code/test-*-after.py``), as pure functions.

MEH decodes the whole sequence and splits it at a marker its prompt ends with; every prompt here
ends with that marker and no data record contains it, so the same reading comes from the generated
text alone (``after_last``, ``before_first``). Every score is in percent. The rules are MEH's,
including where they are odd; docs/ability-protocols.md lists those places.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from .scoring import normalise_answer

NER_KINDS = ("PER", "LOC", "ORG", "MISC")  # MEH's order
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def after_last(text: str, marker: str) -> str:
    """What MEH reads when it keeps the last piece of the output split at ``marker``."""
    return text.split(marker)[-1]


def before_first(text: str, marker: str) -> str:
    """What MEH reads when it keeps the piece after the prompt's own ``marker`` (the second piece)."""
    return text.split(marker)[0]


def _count(total: int) -> int:
    if not total:
        raise ValueError("nothing to score: no examples")
    return total


def label_scores(key: str, counts: tuple[int, int, int], items: int) -> dict[str, float]:
    """MEH's two accuracies of a label task from its (right, wrong, unanswered) counts: ``key`` over
    the answers (its "accuracy"; 0 when there is none, where MEH writes "error"), ``key_all`` over
    every count, and the share of the ``items`` answered."""
    right, wrong, unanswered = counts
    answers = right + wrong
    return {
        key: 100 * right / answers if answers else 0.0,
        f"{key}_all": 100 * right / (answers + unanswered),
        "answered": 100 * (items - unanswered) / _count(items),
    }


def nli_counts(readings: Sequence[str], entailed: Sequence[bool]) -> tuple[int, int, int]:
    """RTE (test-NLI.py): an answer holds "true" or "false" (any case). Each word found counts
    separately, so an answer holding both counts once right and once wrong, as in MEH."""
    right = wrong = unanswered = 0
    for reading, gold in zip(readings, entailed):
        said = reading.lower()
        says_true, says_false = "true" in said, "false" in said
        if not (says_true or says_false):
            unanswered += 1
            continue
        right += says_true if gold else says_false
        wrong += says_false if gold else says_true
    return right, wrong, unanswered


def closed_qa_counts(readings: Sequence[str], gold: Sequence[bool]) -> tuple[int, int, int]:
    """BoolQ (test-ClosedDomainQA.py): an answer is exactly "yes" or "no" (any case)."""
    said = [reading.lower() for reading in readings]
    right = sum(s == ("yes" if g else "no") for s, g in zip(said, gold))
    wrong = sum(s == ("no" if g else "yes") for s, g in zip(said, gold))
    return right, wrong, len(said) - right - wrong


def sentiment_counts(readings: Sequence[str], positive: Sequence[bool]) -> tuple[int, int, int]:
    """SST-2 (test-SentimentAnalysis.py): an answer holds "positive" or "negative" (any case); MEH's
    chain of tests makes an answer holding both right for either label."""
    right = wrong = unanswered = 0
    for reading, gold in zip(readings, positive):
        said = reading.lower()
        says_positive, says_negative = "positive" in said, "negative" in said
        if not (says_positive or says_negative):
            unanswered += 1
        elif (says_positive and gold) or (says_negative and not gold):
            right += 1
        else:
            wrong += 1
    return right, wrong, unanswered


def dialogue_scores(readings: Sequence[str], letters: Sequence[str]) -> dict[str, float]:
    """MuTual (test-dialogue-after.py): an answer holding "Chi" is unanswered (the start of
    "Chioces" would read as letter C); else one holding a capital A-D is answered, right when it
    holds the gold letter. Accuracy is over every item."""
    answered = ["Chi" not in reading and any(letter in reading for letter in "ABCD") for reading in readings]
    right = sum(ok and gold in reading for ok, reading, gold in zip(answered, readings, letters))
    every = _count(len(answered))
    return {"accuracy": 100 * right / every, "answered": 100 * sum(answered) / every}


def reasoning_solve_rate(readings: Sequence[str], finals: Sequence[str]) -> dict[str, float]:
    """GSM8K (test-reasoning.py): solved when the gold final answer (the text after "#### ") occurs
    anywhere in the answer, as a substring; over every item."""
    return {"solve_rate": 100 * sum(g in r for r, g in zip(readings, finals)) / _count(len(readings))}


def open_qa_scores(readings: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Natural Questions (test-OpenDomainQA.py): MEH's exact matches over word spans, per item.

    A reading is normalised (SQuAD) and split into words. It counts once when its first or last
    word matches a gold answer; else every single word that matches counts once more, and the first
    matching span of several words counts once and ends the item. That span match sets a flag
    MEH never resets: from then on each later item stops after its first word that does not match
    alone (and the spans starting there). So an item may count more than once, and items depend on
    those before them (scored in file order), and the score may pass 100.
    """
    hits = 0
    span_found = False  # MEH's ``flag``
    for reading, golds in zip(readings, answers):
        gold = {normalise_answer(answer) for answer in golds}
        words = normalise_answer(reading).split(" ")
        if words[0] in gold or words[-1] in gold:
            hits += 1
            continue
        for start in range(len(words) - 1):
            if words[start] in gold:
                hits += 1
                continue
            for end in range(start + 2, len(words) + 1):
                if " ".join(words[start:end]) in gold:
                    hits += 1
                    span_found = True
                    break
            if span_found:
                break
    return {"exact_match": 100 * hits / _count(len(readings))}


def ner_entities(tokens: Sequence[str], tags: Sequence[str], kind: str) -> list[str]:
    """MEH's entities of one type (test-NER.py): each starts at a B-``kind`` tag and runs over the
    tokens before the next O tag, whatever their tags; with no O after it, the sentence's last
    token is left out (a B- tag on the last token gives the empty entity "")."""
    found: list[str] = []
    index = 0
    while index < len(tags):
        if tags[index] == f"B-{kind}":
            end = next((m for m in range(index, len(tags)) if tags[m] == "O"), len(tags) - 1)
            found.append(" ".join(tokens[index:end]))
            index = end
        index += 1
    return found


def ner_sentence(tokens: Sequence[str]) -> str:
    """MEH's sentence text: tokens joined by spaces, except that "," and "." follow without one."""
    return "".join(token if token in (",", ".") else " " + token for token in tokens)[1:]


def ner_recalls(
    readings: Sequence[str], kinds: Sequence[str], golds: Sequence[Sequence[str]]
) -> dict[str, float]:
    """MEH's per-type recall and its macro average (test-NER.py), one reading per (sentence, type).

    A gold entity is found when its text occurs in the reading. A sentence without an entity of the
    type counts one found of one when the reading is empty; otherwise it counts nothing, except for
    MISC, where it counts one missed (MEH's test differs for that type alone).
    """
    found = dict.fromkeys(NER_KINDS, 0)
    total = dict.fromkeys(NER_KINDS, 0)
    for reading, kind, gold in zip(readings, kinds, golds):
        if not gold and not reading:
            found[kind] += 1
            total[kind] += 1
        elif gold:
            total[kind] += len(gold)
        elif kind == "MISC":
            total[kind] += 1
        found[kind] += sum(entity in reading for entity in gold)
    _count(len(readings))
    missing = [kind for kind in NER_KINDS if not total[kind]]
    if missing:
        raise ValueError(
            f"MEH's NER recall is undefined: nothing of type(s) {missing} to find; score more sentences"
        )
    recalls = {f"recall_{kind.lower()}": 100 * found[kind] / total[kind] for kind in NER_KINDS}
    return {"macro_recall": sum(recalls.values()) / len(NER_KINDS), **recalls}


def _sentences(text: str) -> list[list[str]]:
    """The ``rouge`` package's reading: pieces between full stops (empty ones dropped), whitespace
    collapsed, words split at single spaces (a blank piece gives the word "")."""
    return [" ".join(piece.split()).split(" ") for piece in text.split(".") if piece]


def _f_measure(overlap: int, predicted: int, reference: int) -> float:
    precision = overlap / predicted if predicted else 0.0
    recall = overlap / reference if reference else 0.0
    return 2.0 * precision * recall / (precision + recall + 1e-8)


def _ngrams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _lcs_words(reference: Sequence[str], predicted: Sequence[str]) -> set[str]:
    """The words of one longest common subsequence, traced back as the ``rouge`` package does
    (on a tie it steps back in ``predicted``)."""
    table = [[0] * (len(predicted) + 1) for _ in range(len(reference) + 1)]
    for i, word in enumerate(reference, start=1):
        for j, other in enumerate(predicted, start=1):
            same = word == other
            table[i][j] = table[i - 1][j - 1] + 1 if same else max(table[i - 1][j], table[i][j - 1])
    words: set[str] = set()
    i, j = len(reference), len(predicted)
    while i and j:
        if reference[i - 1] == predicted[j - 1]:
            words.add(reference[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def rouge_f(prediction: str, reference: str) -> dict[str, float] | None:
    """ROUGE-1, -2 and -L F of the ``rouge`` package 1.0.1 that MEH uses (``Rouge().get_scores``),
    as fractions; None when the prediction has no sentence (the package raises there).

    Unlike rouge_score it neither lowercases, strips punctuation nor stems; n-grams are counted once
    each (sets, across sentence ends), and ROUGE-L is the summary-level union of per-sentence LCS
    words over the distinct words of each side.
    """
    predicted, referred = _sentences(prediction), _sentences(reference)
    if not predicted or not referred:
        return None
    flat_predicted = list(itertools.chain(*predicted))
    flat_reference = list(itertools.chain(*referred))
    scores = {}
    for key, n in (("rouge1", 1), ("rouge2", 2)):
        mine, theirs = _ngrams(flat_predicted, n), _ngrams(flat_reference, n)
        scores[key] = _f_measure(len(mine & theirs), len(mine), len(theirs))
    union = set().union(*(_lcs_words(ref, pred) for ref in referred for pred in predicted))
    scores["rougeL"] = _f_measure(len(union), len(set(flat_predicted)), len(set(flat_reference)))
    return scores


def summarization_scores(readings: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """SAMSum (test-summarization.py): per item the mean of ROUGE-1/2/L F (``rouge_f``), 0 for an
    empty answer, averaged over every item; ``rouge_mean`` is MEH's figure, the three parts beside it."""
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for reading, reference in zip(readings, references):
        scores = rouge_f(reading, reference) if reading else None
        for key in ROUGE_KEYS:
            totals[key] += scores[key] if scores else 0.0
    every = _count(len(readings))
    averages = {key: 100 * total / every for key, total in totals.items()}
    return {"rouge_mean": sum(averages.values()) / len(ROUGE_KEYS), **averages}
