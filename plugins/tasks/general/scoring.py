"""Scores of the general-ability tasks: pure functions from prediction strings to numbers.

Every score is in percent. Text normalisation lives here once: SQuAD's answer normalisation for
exact match, GSM8K's final-number reading, the entity list format the NER prompt asks for.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal

ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = frozenset(string.punctuation)
# A number as written in a solution: an optional sign and dollar sign, thousands commas, decimals.
# Not preceded by a digit or a point, so the "-" of a range "5-10" is not read as a minus sign.
NUMBER = re.compile(r"(?<![\d.])-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
ANSWER_MARKERS = ("####", "The answer is")
ENTITY = re.compile(r"(.+?)\s*\((PER|ORG|LOC|MISC)\)", re.IGNORECASE)
NO_ENTITIES = "none"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def percent(hits: Sequence[bool]) -> float:
    """The share of true values, in percent."""
    if not hits:
        raise ValueError("nothing to score: no examples")
    return 100.0 * sum(hits) / len(hits)


def normalise_answer(answer: str) -> str:
    """SQuAD's normalisation: lowercase, drop ASCII punctuation and the articles a/an/the,
    collapse whitespace; so "The Beatles." and "beatles" match."""
    without_punctuation = "".join(char for char in answer.lower() if char not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", without_punctuation).split())


def answer_matches(prediction: str, answers: Sequence[str]) -> bool:
    """Exact match after normalisation with any of the gold answers."""
    return normalise_answer(prediction) in {normalise_answer(answer) for answer in answers}


def canonical_number(written: str) -> str:
    """A written number without "$" and commas, in shortest decimal form: "$1,250.00" -> "1250"."""
    value = Decimal(written.replace("$", "").replace(",", "")).normalize()
    return format(value, "f")


def final_number(solution: str) -> str | None:
    """The final answer of a GSM8K-style solution, canonical: the first number after "####", else
    after "The answer is" (any case), else the last number in the text; None when there is none."""
    for marker in ANSWER_MARKERS:
        found = re.search(re.escape(marker), solution, re.IGNORECASE)
        number = NUMBER.search(solution, found.end()) if found else None
        if number:
            return canonical_number(number.group())
    numbers = NUMBER.findall(solution)
    return canonical_number(numbers[-1]) if numbers else None


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """``(type, start, end)`` of each entity in a tag sequence, IOB1 and IOB2 alike.

    An entity starts at B-X, or at an I-X that does not continue an entity of type X (IOB1 starts
    entities with I-X and uses B-X only between two adjacent entities of one type; conlleval reads a
    stray I-X in IOB2 the same way), and continues over the I-X tokens that follow.
    """
    spans: list[tuple[str, int, int]] = []
    for index, tag in enumerate(tags):
        if tag == "O":
            continue
        prefix, kind = tag.split("-", 1)
        if prefix == "I" and spans and spans[-1][0] == kind and spans[-1][2] == index:
            spans[-1] = (kind, spans[-1][1], index + 1)
        else:
            spans.append((kind, index, index + 1))
    return spans


def tagged_entities(tokens: Sequence[str], tags: Sequence[str]) -> list[tuple[str, str]]:
    """``(type, text)`` of each tagged entity, its tokens joined by single spaces."""
    return [(kind, " ".join(tokens[start:end])) for kind, start, end in entity_spans(tags)]


def format_entities(entities: Sequence[Sequence[str]]) -> str:
    """The answer format the NER prompt shows: "EU (ORG); German (MISC)", or "none"."""
    return "; ".join(f"{text} ({kind})" for kind, text in entities) or NO_ENTITIES


def parse_entities(answer: str) -> Counter[tuple[str, str]]:
    """The multiset of ``(type, text)`` in an answer written like ``format_entities``' output.

    Types are read in any case; whitespace inside a text is collapsed. An item that is not
    "TEXT (TYPE)" is kept with type "" so that it counts as a wrong prediction.
    """
    found: Counter[tuple[str, str]] = Counter()
    if answer.strip().lower() == NO_ENTITIES:
        return found
    for item in (item.strip() for item in answer.split(";")):
        match = ENTITY.fullmatch(item)
        if match:
            found[(match[2].upper(), " ".join(match[1].split()))] += 1
        elif item:
            found[("", item)] += 1
    return found


def entity_scores(
    predicted: Sequence[Counter[tuple[str, str]]], gold: Sequence[Counter[tuple[str, str]]]
) -> dict[str, float]:
    """Micro precision, recall and F1 over all examples, matching ``(type, text)`` as multisets:
    a generated answer has no token offsets, so an entity is right when its type and text are."""
    if not gold:
        raise ValueError("nothing to score: no examples")
    correct = sum(sum((p & g).values()) for p, g in zip(predicted, gold))
    n_predicted = sum(sum(p.values()) for p in predicted)
    n_gold = sum(sum(g.values()) for g in gold)
    precision = correct / n_predicted if n_predicted else 0.0
    recall = correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if correct else 0.0
    return {"precision": 100 * precision, "recall": 100 * recall, "f1": 100 * f1}


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F-measure (Porter stemming, as rouge_score computes it) averaged over examples,
    and ``rouge_mean``, the mean of the three."""
    from rouge_score import rouge_scorer  # imported when scoring: it loads nltk (seconds)

    if not references:
        raise ValueError("nothing to score: no examples")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        for kind, score in scorer.score(reference, prediction).items():
            totals[kind] += score.fmeasure
    scores = {kind: 100 * total / len(references) for kind, total in totals.items()}
    return {**scores, "rouge_mean": sum(scores.values()) / len(ROUGE_TYPES)}
