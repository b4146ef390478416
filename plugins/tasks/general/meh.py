"""The ``meh`` profile of the eight tasks: Gu et al.'s own evaluation (Model-Editing-Hurt scripts
``test-task-code/test-*.py``, unedited, and ``test-task-after-code/test-*-after.py``, edited).

Every record of the file is asked, zero-shot, with MEH's prompt (templates/general/meh/); the model
continues it greedily for MEH's number of new tokens with no stop string, and MEH's rule reads and
scores the text (meh_scoring.py). Per task: prompt ends with; new tokens; score.

- general_reasoning: "... Therefore, the answer (arabic numerals) is:" after the question and the
  gold solution's steps; 5; the gold final answer occurs in the answer (solve_rate, every item).
- general_nli: "... True or False? answer:"; 1; "true"/"false" in the answer (accuracy over answered).
- general_open_qa: the question, after the record's passage; 20; MEH's span match (exact_match).
- general_closed_qa: "... answer:" after passage and question; 1; "yes"/"no" (exact_match over answered).
- general_dialogue: "... Among A through D, the answer is"; 1; the gold letter (accuracy, every item).
- general_summarization: "TL;DR:" after the chat; 25; ROUGE of the ``rouge`` package (rouge_mean).
- general_ner: "... Entity:", one query per sentence and type; 10; per-type recall, macro average.
- general_sentiment: "... answer:" after the sentence; 1; "positive"/"negative" (accuracy over answered).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

from harness.templates import Templates

from . import meh_scoring as rules
from . import reading
from .reading import Check, DataProblems
from .tasks import (
    MEH,
    ClosedDomainQA,
    Dialogue,
    Example,
    NamedEntityRecognition,
    NaturalLanguageInference,
    OpenDomainQA,
    Reasoning,
    Sentiment,
    Summarization,
)

FINAL_MARKER = "#### "  # MEH splits GSM8K solutions here: the steps before, the final answer after
NER_NAMES = {"PER": "Person", "LOC": "Location", "ORG": "Organization", "MISC": "Miscellaneous"}


def meh_solution(value: Any) -> str | None:
    """A GSM8K solution as MEH splits it: steps, then "#### " once, then the final answer."""
    if reading.text(value) or value.count(FINAL_MARKER) != 1 or not value.split(FINAL_MARKER)[1].strip():
        return 'needs a solution with one "#### " followed by its final answer'
    return None


@cache
def _templates() -> Templates:
    return Templates()


class MehProfile:
    """What the profile changes in every task: no demonstrations (empty context), MEH's template,
    greedy generation of ``max_new_tokens`` with no stop string, and no options."""

    protocol: ClassVar[str] = MEH
    shots: ClassVar[int] = 0
    stop: ClassVar[tuple[str, ...]] = ()

    def options(self, example: Example) -> tuple[str, ...]:
        return ()


class MehReasoning(MehProfile, Reasoning):
    """The prompt gives the gold solution's steps (MEH's "hint") and asks for the final answer."""

    template = "general/meh/reasoning.jinja"
    default_limit = 100
    max_new_tokens = 5
    marker = "Therefore, the answer (arabic numerals) is:"
    checks: ClassVar[dict[str, Check]] = {"question": reading.text, "answer": meh_solution}

    def example(self, record: dict[str, Any]) -> Example:
        steps, final = record["answer"].split(FINAL_MARKER)
        return {"question": record["question"], "hint": steps, "final": final}

    def prompt_fields(self, example: Example) -> dict[str, Any]:
        return {"question": example["question"], "hint": example["hint"]}

    def metrics(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        readings = [rules.before_first(p, self.marker) for p in predictions]
        return rules.reasoning_solve_rate(readings, [e["final"] for e in examples])


class MehNaturalLanguageInference(MehProfile, NaturalLanguageInference):
    """RTE read with the csv module's default quoting, as MEH read it (69 rows lose their quotes)."""

    template = "general/meh/nli.jinja"
    max_new_tokens = 1

    def read(self, path: Path, problems: DataProblems) -> Iterator[tuple[str, Any]]:
        return reading.tsv(path, ("index", "sentence1", "sentence2", "label"), problems, quoted=True)

    def metrics(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        readings = [rules.after_last(p, "answer:") for p in predictions]
        counts = rules.nli_counts(readings, [e["label"] == "entailment" for e in examples])
        return rules.label_scores(self.metric, counts, len(examples))


class MehOpenDomainQA(MehProfile, OpenDomainQA):
    """The record's passage (``output[0]``) before the question. MEH reads the text after the last
    "Answer:"; as the prompt has none, an answer without one is read with the whole prompt before it."""

    template = "general/meh/open_qa.jinja"
    max_new_tokens = 20
    marker = "Answer:"
    checks: ClassVar[dict[str, Check]] = {
        "question": reading.text,
        "answer": reading.texts,
        "output": reading.texts,
    }

    def example(self, record: dict[str, Any]) -> Example:
        return {"question": record["question"], "passage": record["output"][0], "answers": record["answer"]}

    def prompt_fields(self, example: Example) -> dict[str, Any]:
        return {"passage": example["passage"], "question": example["question"]}

    def reading(self, example: Example, prediction: str) -> str:
        """What MEH scores: the answer after its last "Answer:", else the prompt and the answer."""
        if self.marker in prediction:
            return rules.after_last(prediction, self.marker)
        return _templates().render(self.template, **self.prompt_fields(example)) + " " + prediction

    def metrics(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        readings = [self.reading(e, p) for e, p in zip(examples, predictions)]
        return rules.open_qa_scores(readings, [e["answers"] for e in examples])


class MehClosedDomainQA(MehProfile, ClosedDomainQA):
    """BoolQ with the whole passage."""

    template = "general/meh/closed_qa.jinja"
    max_new_tokens = 1

    def metrics(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        readings = [rules.before_first(p, "answer:") for p in predictions]
        counts = rules.closed_qa_counts(readings, [e["label"] for e in examples])
        return rules.label_scores(self.metric, counts, len(examples))


class MehDialogue(MehProfile, Dialogue):
    """MuTual with the four candidates lettered in the prompt; the answer is a letter."""

    template = "general/meh/dialogue.jinja"
    max_new_tokens = 1

    def prompt_fields(self, example: Example) -> dict[str, Any]:
        return {"conversation": example["conversation"], "candidates": example["candidates"]}

    def metrics(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        readings = [rules.after_last(p, "the answer is") for p in predictions]
        return rules.dialogue_scores(readings, [e["letter"] for e in examples])


class MehSummarization(MehProfile, Summarization):
    """SAMSum with the chat and the reference summary as the file writes them."""

    template = "general/meh/summarization.jinja"
    max_new_tokens = 25

    def example(self, record: dict[str, Any]) -> Example:
        return {"dialogue": record["dialogue"], "summary": record["summary"]}

    def metrics(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        readings = [rules.after_last(p, "DR:") for p in predictions]
        return rules.summarization_scores(readings, [e["summary"] for e in examples])


class MehNamedEntityRecognition(MehProfile, NamedEntityRecognition):
    """CoNLL-2003 sentences as MEH splits the file (``-DOCSTART-`` lines are sentences too), each
    asked once per entity type; an example is a (sentence, type) pair with id "SENTENCE-TYPE"."""

    metric = "macro_recall"
    template = "general/meh/ner.jinja"
    default_limit = 200  # queries: the first 50 sentences
    max_new_tokens = 10

    def read(self, path: Path, problems: DataProblems) -> Iterator[tuple[str, Any]]:
        return reading.conll_sentences(path, problems, keep_docstart=True)

    def example(self, record: dict[str, Any]) -> Example:
        tokens, tags = record["tokens"], record["tags"]
        entities = {kind: rules.ner_entities(tokens, tags, kind) for kind in rules.NER_KINDS}
        return {"sentence": rules.ner_sentence(tokens), "entities": entities}

    def examples(self, data_dir: Path | None) -> list[Example]:
        return [
            {
                "id": f"{s['id']}-{kind}",
                "sentence": s["sentence"],
                "kind": kind,
                "entities": s["entities"][kind],
            }
            for s in super().examples(data_dir)
            for kind in rules.NER_KINDS
        ]

    def prompt_fields(self, example: Example) -> dict[str, Any]:
        return {"kind": NER_NAMES[example["kind"]], "sentence": example["sentence"]}

    def metrics(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        readings = [rules.before_first(p, "Entity:") for p in predictions]
        return rules.ner_recalls(readings, [e["kind"] for e in examples], [e["entities"] for e in examples])


class MehSentiment(MehProfile, Sentiment):
    """SST-2 with the sentence as the file writes it (trailing space kept)."""

    template = "general/meh/sentiment.jinja"
    max_new_tokens = 1

    def example(self, record: dict[str, Any]) -> Example:
        return {"sentence": record["sentence"], "label": record["label"]}

    def metrics(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        readings = [rules.after_last(p, "answer:") for p in predictions]
        counts = rules.sentiment_counts(readings, [e["label"] == "1" for e in examples])
        return rules.label_scores(self.metric, counts, len(examples))


MEH_TASKS = (
    MehReasoning(),
    MehNaturalLanguageInference(),
    MehOpenDomainQA(),
    MehClosedDomainQA(),
    MehDialogue(),
    MehSummarization(),
    MehNamedEntityRecognition(),
    MehSentiment(),
)
