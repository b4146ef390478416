"""The eight general-ability tasks: one class each over a shared reader of data file and demonstrations.

A task reads its file into records (``reading``), checks them, turns them into examples, takes the
first ``shots`` examples as the few-shot demonstrations and evaluates on the rest. A demonstration
is the task's query template rendered with the answer filled in; the context is the demonstrations,
each followed by a blank line, so ``context + query.prompt`` reads as one more demonstration.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from harness.api import ABILITY, AbilityQuery

from . import reading
from .reading import Check, DataProblems
from .scoring import (
    answer_matches,
    entity_scores,
    final_number,
    format_entities,
    parse_entities,
    percent,
    rouge_scores,
    tagged_entities,
)

Render = Callable[..., str]
Example = dict[str, Any]
# The scoring profiles (harness.protocols): this module's few-shot tasks, the default, and MEH's
# zero-shot generation with its own scorers (meh.py); docs/ability-protocols.md compares them.
FEWSHOT = "fewshot"
MEH = "meh"
GSM8K_CALCULATIONS = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations: "$<<9*2=18>>18"


def gsm8k_solution(value: Any) -> str | None:
    """A GSM8K solution: text whose final line is "#### <number>"."""
    if reading.text(value) or "####" not in value or final_number(value.rsplit("####", 1)[1]) is None:
        return 'needs a solution ending in "#### <number>"'
    return None


def four_candidates(value: Any) -> str | None:
    """MuTual's candidate responses: exactly four non-empty strings."""
    return None if reading.texts(value) is None and len(value) == 4 else "needs a list of 4 non-empty strings"


class GeneralTask:
    """What the eight tasks share: the data file, the split into demonstrations and evaluation
    examples, the context, and queries built from the template. Subclasses say how to read, check
    and convert a record, what a query asks and how predictions score."""

    kind: ClassVar[str] = ABILITY
    name: ClassVar[str]
    description: ClassVar[str]
    metric: ClassVar[str]
    default_limit: ClassVar[int]
    template: ClassVar[str]
    relative_path: ClassVar[str]  # under the data directory
    shots: ClassVar[int]  # the first records of the file, used as demonstrations
    checks: ClassVar[dict[str, Check]]
    id_field: ClassVar[str | None] = None  # the record's own id; without one, its position in the file
    max_new_tokens: ClassVar[int] = 32
    stop: ClassVar[tuple[str, ...]] = ("\n",)
    protocols: ClassVar[tuple[str, ...]] = (FEWSHOT, MEH)
    protocol: ClassVar[str] = FEWSHOT

    def with_protocol(self, name: str) -> GeneralTask:
        """This task as scoring profile ``name`` asks and scores it."""
        from .meh import MEH_TASKS  # meh.py builds on this module's tasks

        profiles = {FEWSHOT: TASKS, MEH: MEH_TASKS}
        return next(task for task in profiles[name] if task.name == self.name)

    def data_files(self, data_dir: Path | None) -> list[Path]:
        if data_dir is None:
            raise FileNotFoundError(
                f"task {self.name} needs a data directory holding {self.relative_path} "
                "(--data-dir, HARNESS_DATA_DIR or data_dir in harness.toml); see the data README"
            )
        path = Path(data_dir) / self.relative_path
        if not path.is_file():
            raise FileNotFoundError(f"task {self.name}: data file {path} not found")
        return [path]

    def examples(self, data_dir: Path | None) -> list[Example]:
        """The examples after the demonstrations, less any from a demonstration's source item
        (``source``), which would leak the demonstration's answer into the evaluation."""
        every = self._all_examples(data_dir)
        shown = {self.source(example) for example in every[: self.shots]}
        return [example for example in every[self.shots :] if self.source(example) not in shown]

    def source(self, example: Example) -> str:
        """The item an example was made from; examples sharing one are not independent."""
        return example["id"]

    def context(self, data_dir: Path | None, render: Render) -> str:
        demonstrations = self._all_examples(data_dir)[: self.shots]
        return "".join(
            render(self.template, **self.demonstration_fields(example), answer=self.answer(example)) + "\n\n"
            for example in demonstrations
        )

    def queries(self, examples: list[Example], render: Render) -> list[AbilityQuery]:
        return [
            AbilityQuery(
                example["id"],
                render(self.template, **self.prompt_fields(example), answer=""),
                options=self.options(example),
                max_new_tokens=self.max_new_tokens,
                stop=self.stop,
            )
            for example in examples
        ]

    def score(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        if len(predictions) != len(examples):
            raise ValueError(f"task {self.name}: {len(predictions)} predictions for {len(examples)} examples")
        return self.metrics(examples, predictions)

    def _all_examples(self, data_dir: Path | None) -> list[Example]:
        (path,) = self.data_files(data_dir)
        problems = DataProblems(path)
        records = [
            (where, record)
            for where, record in self.read(path, problems)
            if reading.fields_ok(record, self.checks, where, problems)
        ]
        ids = [
            str(record[self.id_field]) if self.id_field else str(n) for n, (_, record) in enumerate(records)
        ]
        first_seen: dict[str, str] = {}
        for example_id, (where, _) in zip(ids, records):
            if example_id in first_seen:
                problem = f"repeats the id {example_id!r} of {first_seen[example_id]}"
                problems.add(where, problem, self.id_field)
            first_seen.setdefault(example_id, where)
        if not problems.found and len(records) <= self.shots:
            problems.add(
                "file", f"needs more than {self.shots} records: the first {self.shots} are demonstrations"
            )
        problems.raise_if_any()
        return [{"id": example_id, **self.example(record)} for example_id, (_, record) in zip(ids, records)]

    # What each task defines.
    def read(self, path: Path, problems: DataProblems) -> Iterator[tuple[str, Any]]:
        return reading.json_lines(path, problems)

    def example(self, record: dict[str, Any]) -> Example:
        """The fields prompting and scoring need, from a checked record."""
        raise NotImplementedError

    def prompt_fields(self, example: Example) -> dict[str, Any]:
        """The template's fields other than ``answer``."""
        raise NotImplementedError

    def demonstration_fields(self, example: Example) -> dict[str, Any]:
        return self.prompt_fields(example)

    def answer(self, example: Example) -> str:
        """The answer a demonstration shows, as the template writes it after a space."""
        raise NotImplementedError

    def options(self, example: Example) -> tuple[str, ...]:
        return ()

    def metrics(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        raise NotImplementedError


class LabelChoiceTask(GeneralTask):
    """A choice between fixed label words: the options are " word" for each word in ``words``
    (gold label -> word); a prediction is one of them, read back after stripping and lowercasing."""

    words: ClassVar[dict[Any, str]]

    def answer(self, example: Example) -> str:
        return self.words[example["label"]]

    def options(self, example: Example) -> tuple[str, ...]:
        return tuple(" " + word for word in self.words.values())

    def metrics(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        hits = [p.strip().lower() == self.words[e["label"]] for e, p in zip(examples, predictions)]
        return {self.metric: percent(hits)}


class Reasoning(GeneralTask):
    """GSM8K: a generated step-by-step solution, solved when its final number equals the gold one."""

    name = "general_reasoning"
    description = "GSM8K arithmetic reasoning (solve rate, generated solutions)"
    metric = "solve_rate"
    default_limit = 30
    template = "general/reasoning.jinja"
    relative_path = "general/test-reasoning.jsonl"
    shots = 3
    max_new_tokens = 160
    stop = ("\n\n", "Question:")

    checks = {"question": reading.text, "answer": gsm8k_solution}

    def example(self, record: dict[str, Any]) -> Example:
        solution = record["answer"]
        return {"question": record["question"], "solution": solution, "answer": final_number(solution)}

    def prompt_fields(self, example: Example) -> dict[str, Any]:
        return {"question": example["question"]}

    def answer(self, example: Example) -> str:
        return GSM8K_CALCULATIONS.sub("", example["solution"])

    def metrics(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        solved = [final_number(p) == e["answer"] for e, p in zip(examples, predictions)]
        return {"solve_rate": percent(solved)}


class NaturalLanguageInference(LabelChoiceTask):
    """RTE: does the premise entail the hypothesis? Options " yes" (entailment), " no" (not_entailment)."""

    name = "general_nli"
    description = "RTE natural language inference (accuracy, yes/no choice)"
    metric = "accuracy"
    default_limit = 200
    template = "general/nli.jinja"
    relative_path = "general/test-NLI.tsv"
    shots = 4
    id_field = "index"
    words = {"entailment": "yes", "not_entailment": "no"}
    checks = {
        "index": reading.identifier,
        "sentence1": reading.text,
        "sentence2": reading.text,
        "label": reading.one_of(*words),
    }

    def read(self, path: Path, problems: DataProblems) -> Iterator[tuple[str, Any]]:
        return reading.tsv(path, ("index", "sentence1", "sentence2", "label"), problems)

    def example(self, record: dict[str, Any]) -> Example:
        return {"premise": record["sentence1"], "hypothesis": record["sentence2"], "label": record["label"]}

    def prompt_fields(self, example: Example) -> dict[str, Any]:
        return {"premise": example["premise"], "hypothesis": example["hypothesis"]}


class OpenDomainQA(GeneralTask):
    """Natural Questions (open): a generated short answer, exact match with any gold answer."""

    name = "general_open_qa"
    description = "Natural Questions open-domain QA (exact match, generated answers)"
    metric = "exact_match"
    default_limit = 50
    template = "general/open_qa.jinja"
    relative_path = "general/test-OpenDomainQA.jsonl"
    shots = 5
    max_new_tokens = 16
    checks = {"question": reading.text, "answer": reading.texts}

    def example(self, record: dict[str, Any]) -> Example:
        return {"question": record["question"], "answers": record["answer"]}

    def prompt_fields(self, example: Example) -> dict[str, Any]:
        return {"question": example["question"]}

    def answer(self, example: Example) -> str:
        return example["answers"][0]

    def metrics(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        hits = [answer_matches(p, e["answers"]) for e, p in zip(examples, predictions)]
        return {"exact_match": percent(hits)}


class ClosedDomainQA(LabelChoiceTask):
    """BoolQ: a yes/no question about a passage. Options " yes", " no"; demonstrations show only the
    first ``demonstration_words`` words of their passages to keep the context short."""

    name = "general_closed_qa"
    description = "BoolQ yes/no reading comprehension (exact match, yes/no choice)"
    metric = "exact_match"
    default_limit = 100
    template = "general/closed_qa.jinja"
    relative_path = "general/test-ClosedDomainQA.jsonl"
    shots = 2
    demonstration_words = 60
    words = {True: "yes", False: "no"}
    checks = {"question": reading.text, "passage": reading.text, "answer": reading.boolean}

    def example(self, record: dict[str, Any]) -> Example:
        return {"question": record["question"], "passage": record["passage"], "label": record["answer"]}

    def prompt_fields(self, example: Example) -> dict[str, Any]:
        return {"question": example["question"], "passage": example["passage"]}

    def demonstration_fields(self, example: Example) -> dict[str, Any]:
        words = example["passage"].split()
        if len(words) <= self.demonstration_words:
            return self.prompt_fields(example)
        passage = " ".join(words[: self.demonstration_words]) + " ..."
        return {"question": example["question"], "passage": passage}


class Dialogue(GeneralTask):
    """MuTual: choose the right next turn of a conversation among four candidates.

    The options are the candidates' texts after a space; a prediction is the chosen option's text
    (compared after stripping) or the gold letter A-D itself.
    """

    name = "general_dialogue"
    description = "MuTual dialogue reasoning (accuracy, choice of the next turn among four)"
    metric = "accuracy"
    default_limit = 100
    template = "general/dialogue.jinja"
    relative_path = "general/test-dialogue.jsonl"
    shots = 1
    id_field = "id"
    letters = ("A", "B", "C", "D")

    checks = {
        "id": reading.identifier,
        "article": reading.text,
        "options": four_candidates,
        "answers": reading.one_of(*letters),
    }

    def example(self, record: dict[str, Any]) -> Example:
        return {
            "conversation": record["article"],
            "candidates": record["options"],
            "letter": record["answers"],
        }

    def prompt_fields(self, example: Example) -> dict[str, Any]:
        return {"conversation": example["conversation"]}

    def source(self, example: Example) -> str:
        """MuTual asks several next turns of one conversation (consecutive ids share its opening)."""
        return example["conversation"][:60]

    def answer(self, example: Example) -> str:
        return example["candidates"][self.letters.index(example["letter"])]

    def options(self, example: Example) -> tuple[str, ...]:
        return tuple(" " + candidate for candidate in example["candidates"])

    def metrics(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        hits = [p.strip() in (e["letter"], self.answer(e).strip()) for e, p in zip(examples, predictions)]
        return {"accuracy": percent(hits)}


class Summarization(GeneralTask):
    """SAMSum: a generated one-line summary of a chat, ROUGE-1/2/L F-measure against the reference."""

    name = "general_summarization"
    description = "SAMSum dialogue summarisation (mean of ROUGE-1/2/L F, generated summaries)"
    metric = "rouge_mean"
    default_limit = 30
    template = "general/summarization.jinja"
    relative_path = "general/test-summarization.json"
    shots = 1
    id_field = "id"
    max_new_tokens = 64
    checks = {"id": reading.identifier, "dialogue": reading.text, "summary": reading.text}

    def read(self, path: Path, problems: DataProblems) -> Iterator[tuple[str, Any]]:
        return reading.json_array(path, problems)

    def example(self, record: dict[str, Any]) -> Example:
        turns = [line.strip() for line in record["dialogue"].splitlines() if line.strip()]
        return {"dialogue": "\n".join(turns), "summary": " ".join(record["summary"].split())}

    def prompt_fields(self, example: Example) -> dict[str, Any]:
        return {"dialogue": example["dialogue"]}

    def answer(self, example: Example) -> str:
        return example["summary"]

    def metrics(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        return rouge_scores(predictions, [e["summary"] for e in examples])


class NamedEntityRecognition(GeneralTask):
    """CoNLL-2003: the model lists a sentence's entities as "TEXT (TYPE); ..." or "none"; scored by
    micro precision/recall/F1 over (type, text) pairs. Examples are sentences, ids their position."""

    name = "general_ner"
    description = "CoNLL-2003 named entities (entity-level micro F1, generated entity lists)"
    metric = "f1"
    default_limit = 50
    template = "general/ner.jinja"
    relative_path = "general/test-NER.txt"
    shots = 3
    max_new_tokens = 48
    checks: ClassVar[dict[str, Check]] = {}  # the reader checks every tag, by line

    def read(self, path: Path, problems: DataProblems) -> Iterator[tuple[str, Any]]:
        return reading.conll_sentences(path, problems)

    def example(self, record: dict[str, Any]) -> Example:
        entities = [list(entity) for entity in tagged_entities(record["tokens"], record["tags"])]
        return {"sentence": " ".join(record["tokens"]), "entities": entities}

    def prompt_fields(self, example: Example) -> dict[str, Any]:
        return {"sentence": example["sentence"]}

    def answer(self, example: Example) -> str:
        return format_entities(example["entities"])

    def metrics(self, examples: list[Example], predictions: list[str]) -> dict[str, float]:
        gold = [Counter(tuple(entity) for entity in e["entities"]) for e in examples]
        return entity_scores([parse_entities(p) for p in predictions], gold)


class Sentiment(LabelChoiceTask):
    """SST-2: the sentiment of a movie-review sentence. Options " positive" (1), " negative" (0)."""

    name = "general_sentiment"
    description = "SST-2 sentiment (accuracy, positive/negative choice)"
    metric = "accuracy"
    default_limit = 200
    template = "general/sentiment.jinja"
    relative_path = "general/test-SentimentAnalysis.tsv"
    shots = 6
    words = {"1": "positive", "0": "negative"}
    checks = {"sentence": reading.text, "label": reading.one_of(*words)}

    def read(self, path: Path, problems: DataProblems) -> Iterator[tuple[str, Any]]:
        return reading.tsv(path, ("sentence", "label"), problems)

    def example(self, record: dict[str, Any]) -> Example:
        return {"sentence": record["sentence"].strip(), "label": record["label"]}

    def prompt_fields(self, example: Example) -> dict[str, Any]:
        return {"sentence": example["sentence"]}


TASKS = (
    Reasoning(),
    NaturalLanguageInference(),
    OpenDomainQA(),
    ClosedDomainQA(),
    Dialogue(),
    Summarization(),
    NamedEntityRecognition(),
    Sentiment(),
)
