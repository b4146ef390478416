"""The single-edit loop: pre-edit answers once -> for each record: edit, probe, score, restore, log."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from harness.answers import Answer, read_answers
from harness.api import Record
from harness.plugins import pm
from harness.results import SampleLog

log = logging.getLogger(__name__)

Metric = Callable[[list[int], list[int], str, str], float]


@dataclass
class Scorer:
    """Scores answers with the registered metrics, encoding both sides with one scoring tokenizer."""

    tokenizer: Any
    metrics: dict[str, Metric]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text.strip(), add_special_tokens=False).input_ids

    def __call__(self, answer: str, expected: str) -> dict[str, float]:
        answer_ids, expected_ids = self.encode(answer), self.encode(expected)
        return {name: fn(answer_ids, expected_ids, answer, expected) for name, fn in self.metrics.items()}


@dataclass
class RunContext:
    """Everything one evaluation needs; hooks receive it as ``run``."""

    model: Any
    tokenizer: Any
    editor: Any
    records: list[Record]
    scorer: Scorer
    answer_mode: str
    batch_size: int
    output_dir: Path
    cache_dir: Path
    model_fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)


def _pairs(records: list[Record]) -> list[tuple[str, str]]:
    return [(probe.prompt, probe.expected) for record in records for probe in record.probes]


def pre_edit_answers(run: RunContext) -> dict[str, list[Answer]]:
    """Answers of the unedited model to every probe, per record id; cached on disk.

    They do not depend on the editor, so the cache key is the model, the exact probe texts and
    the answer mode (and batch size, which can move float rounding).
    """
    pairs = _pairs(run.records)
    key_source = json.dumps(
        [run.model_fingerprint, run.answer_mode, run.batch_size, pairs], ensure_ascii=False
    )
    key = hashlib.sha256(key_source.encode()).hexdigest()[:32]
    path = run.cache_dir / "pre_edit" / f"{key}.json"
    if path.exists():
        flat = [Answer(text, tuple(ids)) for text, ids in json.loads(path.read_text(encoding="utf-8"))]
    else:
        log.info("reading pre-edit answers for %d probes", len(pairs))
        flat = read_answers(run.model, run.tokenizer, pairs, run.answer_mode, run.batch_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = [[a.text, list(a.token_ids)] for a in flat]
        path.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    answers, start = {}, 0
    for record in run.records:
        answers[record.id] = flat[start : start + len(record.probes)]
        start += len(record.probes)
    return answers


def _edit_one(run: RunContext, record: Record, pre: list[Answer]) -> dict[str, Any]:
    pm.hook.before_edit(request=record.request, run=run)
    started = time.perf_counter()
    edit = run.editor.apply(run.model, run.tokenizer, [record.request])
    edit_seconds = time.perf_counter() - started
    try:
        pairs = [(edit.wrap_prompt(p.prompt), p.expected) for p in record.probes]
        post = read_answers(run.model, run.tokenizer, pairs, run.answer_mode, run.batch_size)
    finally:
        edit.restore()  # raises RestoreError unless every touched tensor is bit-identical again
    probes = []
    for probe, before, after in zip(record.probes, pre, post, strict=True):
        reference = before.text if probe.reference_is_pre_edit else probe.expected
        entry = {
            "property": probe.property,
            "language": probe.language,
            "prompt": probe.prompt,
            "expected": probe.expected,
            "reference": reference,
            "pre": before.text,
            "post": after.text,
            "post_scores": run.scorer(after.text, reference),
        }
        if not probe.reference_is_pre_edit:
            entry["pre_scores"] = run.scorer(before.text, reference)
        probes.append(entry)
    request = record.request
    return {
        "record_id": record.id,
        "request": {
            "prompt": request.prompt,
            "target": request.target,
            "subject": request.subject,
            "language": request.language,
        },
        "edit_seconds": edit_seconds,
        "edit_info": edit.info,
        "touched": edit.touched,
        "probes": probes,
    }


def evaluate(run: RunContext, log_file: SampleLog, progress: bool = True) -> list[dict[str, Any]]:
    """Run every record not yet in ``log_file``; returns the samples of all selected records."""
    pre = pre_edit_answers(run)
    done = log_file.done
    todo = [r for r in run.records if r.id not in done]
    if done:
        log.info(
            "resuming: %d of %d edits already in %s",
            len(run.records) - len(todo),
            len(run.records),
            log_file.path,
        )
    for record in tqdm(todo, desc="edits", unit="edit", disable=not progress):
        sample = _edit_one(run, record, pre[record.id])
        log_file.append(sample)
        pm.hook.after_edit(request=record.request, sample=sample, run=run)
    wanted = {r.id for r in run.records}
    return [s for s in log_file.samples if s["record_id"] in wanted]
