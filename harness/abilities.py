"""General-ability tasks: ask a model every query of an ``AbilityTask`` and score its predictions.

The few-shot context is the same for every query, so it is encoded once and its key/value states
reused; options are chosen by mean log-probability per token, generations are greedy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from harness import protocols, uncertainty
from harness.answers import (
    SharedPrefix,
    at_positions,
    final_hidden,
    greedy_after_prefix,
    output_logits,
    pad_batch,
    scored_positions,
)
from harness.api import AbilityQuery
from harness.models import cache_dir, file_sha256
from harness.results import RESULTS, SampleLog, write_json
from harness.runtime import device_of
from harness.templates import Templates

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"


class PredictionFileError(ValueError):
    """A prediction file that cannot be scored: the message names the line or example id."""


def read_predictions(path: Path, examples: list[dict[str, Any]]) -> list[str]:
    """Predictions from a JSON-lines file of ``{"id": ..., "prediction": "..."}``, in example order.

    Every example needs exactly one prediction; unknown or repeated ids are errors.
    """
    wanted = {example["id"] for example in examples}
    found: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise PredictionFileError(f"{path}, line {number}: not JSON ({error})") from None
        if not isinstance(item, dict) or not isinstance(item.get("prediction"), str) or "id" not in item:
            raise PredictionFileError(f'{path}, line {number}: needs {{"id": ..., "prediction": "<text>"}}')
        example_id = str(item["id"])
        if example_id not in wanted:
            raise PredictionFileError(
                f"{path}, line {number}: id {example_id!r} is not an example of the task"
            )
        if example_id in found:
            raise PredictionFileError(f"{path}, line {number}: a second prediction for id {example_id!r}")
        found[example_id] = item["prediction"]
    missing = [example["id"] for example in examples if example["id"] not in found]
    if missing:
        raise PredictionFileError(
            f"{path}: no prediction for {len(missing)} example(s), e.g. ids {missing[:5]}"
        )
    return [found[example["id"]] for example in examples]


def score_prediction_file(task: Any, data_dir: Path | None, path: Path, limit: int = 0) -> dict[str, float]:
    """Score a prediction file against the task's first ``limit`` examples (0: all of them)."""
    examples = task.examples(data_dir)
    if limit:
        examples = examples[:limit]
    return task.score(examples, read_predictions(path, examples))


@torch.no_grad()
def option_log_probs(
    model, tokenizer, prefix: SharedPrefix, prompt: list[int], options: tuple[str, ...]
) -> list[float]:
    """Mean log-probability per token of each option's tokens right after ``prompt`` (one batch)."""
    encoded = [(prompt, tokenizer(option, add_special_tokens=False).input_ids) for option in options]
    if not all(ids for _, ids in encoded):
        raise ValueError(f"every option needs at least one token: {options}")
    device = device_of(model)
    ids, mask = pad_batch([p + o for p, o in encoded], tokenizer.pad_token_id, device)
    rows, cols = scored_positions([len(p) for p, _ in encoded], [len(o) for _, o in encoded], device)
    hidden = at_positions(final_hidden(model, ids, mask, prefix), rows, cols)
    logits = output_logits(model, hidden).float()
    rows = rows.to(logits.device)
    targets = torch.tensor([token for _, option in encoded for token in option], device=logits.device)
    chosen = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
    sums = torch.zeros(len(options), device=logits.device).index_add(0, rows, chosen)
    return (sums / torch.bincount(rows, minlength=len(options)).float()).tolist()


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """The text before the earliest of ``stops``, without surrounding whitespace."""
    cut = min((text.find(stop) for stop in stops if stop and stop in text), default=len(text))
    return text[:cut].strip()


def answer_query(model, tokenizer, prefix: SharedPrefix, query: AbilityQuery) -> dict[str, Any]:
    """One query's prediction (and, for choices, every option's score)."""
    prompt = tokenizer(query.prompt, add_special_tokens=False).input_ids
    if not prompt:
        raise ValueError(f"example {query.example_id}: the query renders to no tokens")
    if query.options:
        scores = option_log_probs(model, tokenizer, prefix, prompt, query.options)
        best = max(range(len(scores)), key=scores.__getitem__)
        return {"id": query.example_id, "prediction": query.options[best], "option_scores": scores}
    tokens = greedy_after_prefix(model, tokenizer, prefix, prompt, query.max_new_tokens, query.stop)
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    return {"id": query.example_id, "prediction": cut_at_stop(text, query.stop), "generated": text}


def encode_context(model, ids: list[int]) -> SharedPrefix:
    """The context's encoded states; no ids (a zero-shot task, a tokenizer that adds no BOS) give an
    empty cache for the queries to fill, as the model cannot run on an empty input."""
    return SharedPrefix.encode(model, ids) if ids else SharedPrefix((), DynamicCache())


def ask(
    model, tokenizer, context: str, queries: list[AbilityQuery], log_file: SampleLog, progress: bool = True
) -> list[str]:
    """Predictions for every query, in order; those already in ``log_file`` are read back, not asked
    again, and each new one is appended as soon as it exists (a killed run resumes)."""
    done = {line["id"]: line["prediction"] for line in log_file.samples}
    todo = [query for query in queries if query.example_id not in done]
    if todo:
        prefix = encode_context(model, tokenizer(context).input_ids)
        for query in tqdm(todo, desc="queries", unit="query", disable=not progress):
            line = answer_query(model, tokenizer, prefix, query)
            log_file.append(line)
            done[query.example_id] = line["prediction"]
    return [done[query.example_id] for query in queries]


@dataclasses.dataclass(frozen=True)
class AbilitySetup:
    """One ability task ready to ask: its examples (the first ``limit``), context and queries, plus the
    identity of everything a score depends on except the model (data and template hashes)."""

    task: Any
    examples: list[dict[str, Any]]
    context: str
    queries: list[AbilityQuery]
    data: dict[str, str]
    templates: dict[str, str]
    limit: int

    @classmethod
    def of(cls, task: Any, data_dir: Path | None, limit: int) -> AbilitySetup:
        """``limit``: -1 the task's documented CPU subset, 0 every example, else the first N."""
        templates = Templates()
        render = templates.render
        examples = task.examples(data_dir)
        chosen = task.default_limit if limit < 0 else limit
        if chosen:
            examples = examples[:chosen]
        context = task.context(data_dir, render)
        queries = task.queries(examples, render)
        if [q.example_id for q in queries] != [e["id"] for e in examples]:
            raise ValueError(f"task {task.name}: queries() must return one query per example, in order")
        data = {str(p): file_sha256(p) for p in task.data_files(data_dir)}
        return cls(task, examples, context, queries, data, dict(templates.used), len(examples))

    def identity(self, model_sha256: str) -> dict[str, Any]:
        """What the predictions depend on: the model and the exact context and queries (their hash),
        with the data and template hashes they came from."""
        asked = json.dumps([self.context, [dataclasses.astuple(q) for q in self.queries]], ensure_ascii=False)
        return {
            "task": self.task.name,
            "protocol": protocols.name_of(self.task),
            "model_sha256": model_sha256,
            "queries_sha256": hashlib.sha256(asked.encode()).hexdigest(),
            "data": self.data,
            "templates": self.templates,
            "examples": self.limit,
        }

    def evaluate(self, model, tokenizer, output_dir: Path, progress: bool = True) -> dict[str, Any]:
        """Ask every query (resuming from ``output_dir``), score, write ``results.json`` there."""
        output_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        predictions = ask(
            model, tokenizer, self.context, self.queries, SampleLog(output_dir, PREDICTIONS), progress
        )
        result = {
            "metrics": self.scores(predictions),
            "metric": self.task.metric,
            "n": len(self.examples),
            "seconds": time.perf_counter() - started,
        }
        write_json(output_dir / RESULTS, result)
        return result

    def predictions(self, output_dir: Path) -> list[str]:
        """The predictions ``evaluate`` logged in ``output_dir``, in query order."""
        logged = {line["id"]: line["prediction"] for line in SampleLog(output_dir, PREDICTIONS).samples}
        missing = [q.example_id for q in self.queries if q.example_id not in logged]
        if missing:
            raise RuntimeError(
                f"{output_dir / PREDICTIONS} lacks {len(missing)} example(s), e.g. {missing[0]!r}"
            )
        return [logged[q.example_id] for q in self.queries]

    def change_intervals(self, edited: list[str], unedited: list[str]) -> dict[str, list[float]]:
        """Per metric, the paired bootstrap 95% interval of edited minus unedited: both models' answers
        to the same resampled examples, scored as the task scores them."""
        examples = self.examples

        def scorer(predictions: list[str]):
            return lambda rows: self.task.score([examples[i] for i in rows], [predictions[i] for i in rows])

        found = uncertainty.paired_resampled_intervals(scorer(edited), scorer(unedited), len(examples))
        return {key: [interval.low, interval.high] for key, interval in found.items()}

    def scores(self, predictions: list[str]) -> dict[str, float]:
        """The task's metrics, each followed by its bootstrap standard error over examples."""
        examples = self.examples

        def on(indices: list[int]) -> dict[str, float]:
            return self.task.score([examples[i] for i in indices], [predictions[i] for i in indices])

        errors = uncertainty.resampled_stderrs(on, len(examples))
        scored: dict[str, float] = {}
        for key, value in self.task.score(examples, predictions).items():
            scored[key] = value
            if uncertainty.stderr_key(key) in errors:
                scored[uncertainty.stderr_key(key)] = errors[uncertainty.stderr_key(key)]
        return scored


def baseline_dir(setup: AbilitySetup, model_sha256: str) -> Path:
    key_source = json.dumps(setup.identity(model_sha256), sort_keys=True)
    return cache_dir() / "ability_baselines" / hashlib.sha256(key_source.encode()).hexdigest()[:24]


def baseline(
    setup: AbilitySetup, model, tokenizer, model_sha256: str, progress: bool = True
) -> dict[str, Any]:
    """The unedited model's result on ``setup``. Its predictions are cached per model and exact
    queries, so every editing run followed by the same task compares against them without asking
    again; they are scored anew each time, so a corrected metric applies to cached predictions too."""
    directory = baseline_dir(setup, model_sha256)
    if not (directory / PREDICTIONS).is_file():
        log.info("measuring the unedited model on %s (%d examples), cached", setup.task.name, setup.limit)
    return setup.evaluate(model, tokenizer, directory, progress)


def change(edited: dict[str, float], unedited: dict[str, float]) -> dict[str, float]:
    """Edited minus unedited, per metric (percentage points; negative is a drop)."""
    return {key: edited[key] - unedited[key] for key in uncertainty.metric_keys(edited) if key in unedited}
