"""The edit loop: pre-edit answers once -> per batch of records (one record in single mode): edit,
probe every record of the batch, restore, score, log one line per record."""

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

from harness import plugins
from harness.answers import Answer, read_answers
from harness.api import Record
from harness.integrity import ModelFingerprint
from harness.results import SampleLog, write_json

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
    probe_batch_size: int
    output_dir: Path
    cache_dir: Path
    model_fingerprint: str
    edit_batch_size: int = 1  # records per editor.apply call; more than one is batch mode
    accumulate: bool = False  # keep every edit until the end (sequential, batch-sequential)
    probe_every: int = 0  # accumulating: also score the records edited so far every n edits
    # accumulating: called on the model holding every edit before the originals come back (--then)
    after_edits: Callable[[], None] | None = None
    # per record id: how its subject was aligned with the prompt (editors that locate subjects)
    alignments: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def _pairs(records: list[Record]) -> list[tuple[str, str]]:
    return [(probe.prompt, probe.expected) for record in records for probe in record.probes]


def pre_edit_answers(run: RunContext) -> dict[str, list[Answer]]:
    """Answers of the unedited model to every probe, per record id; cached on disk.

    They do not depend on the editor, so the cache key is the model, the exact probe texts and
    the answer mode. Probes are read in the same groups as after the edit (one edit batch at a
    time, ``probe_batch_size`` per forward pass): padding can move float rounding, and this way a
    record's answers never depend on which other records share its run or shard.
    """
    pairs = _pairs(run.records)
    grouping = [run.probe_batch_size, run.edit_batch_size]
    key_source = json.dumps([run.model_fingerprint, run.answer_mode, grouping, pairs], ensure_ascii=False)
    key = hashlib.sha256(key_source.encode()).hexdigest()[:32]
    path = run.cache_dir / "pre_edit" / f"{key}.json"
    if path.exists():
        flat = [Answer(text, tuple(ids)) for text, ids in json.loads(path.read_text(encoding="utf-8"))]
    else:
        log.info("reading pre-edit answers for %d probes", len(pairs))
        flat = [
            answer
            for batch in batches(run.records, run.edit_batch_size)
            for answer in read_answers(
                run.model, run.tokenizer, _pairs(batch), run.answer_mode, run.probe_batch_size
            )
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, [[a.text, list(a.token_ids)] for a in flat])
    answers, start = {}, 0
    for record in run.records:
        answers[record.id] = flat[start : start + len(record.probes)]
        start += len(record.probes)
    return answers


class BatchMismatch(ValueError):
    """The output directory holds batch-mode edits grouped differently from this run's batches."""


def batches(records: list[Record], size: int) -> list[list[Record]]:
    """Consecutive groups of ``size`` records (the last may be shorter): the unit of one edit call."""
    return [records[start : start + size] for start in range(0, len(records), size)]


def _edit_batch(run: RunContext, records: list[Record], pre: dict[str, list[Answer]]) -> list[dict[str, Any]]:
    """Apply one edit for all ``records``, probe all of them, restore; one sample per record."""
    requests = [record.request for record in records]
    for request in requests:
        plugins.call("before_edit", request=request, run=run)
    started = time.perf_counter()
    edit = run.editor.apply(run.model, run.tokenizer, requests)
    edit_seconds = time.perf_counter() - started
    try:
        probes = [p for record in records for p in record.probes]
        pairs = [(p.prompt, p.expected) for p in probes]
        languages = [p.language for p in probes]
        post = edit.answers(run.model, run.tokenizer, pairs, run.answer_mode, run.probe_batch_size, languages)
        before = _references(run, edit, records, pre, pairs, languages)
    finally:
        edit.restore()  # raises RestoreError unless every touched tensor is bit-identical again
    samples, start = [], 0
    for record in records:
        answers = post[start : start + len(record.probes)]
        sample = _sample(run, record, before[start : start + len(record.probes)], answers)
        start += len(record.probes)
        sample.update(edit_seconds=edit_seconds / len(records), edit_info=edit.info, touched=edit.touched)
        if run.edit_batch_size > 1:
            sample["batch"] = {"records": [r.id for r in records], "seconds": edit_seconds}
        samples.append(sample)
    return samples


def _references(
    run: RunContext,
    edit: Any,
    records: list[Record],
    pre: dict[str, list[Answer]],
    pairs: list[tuple[str, str]],
    languages: list[str],
) -> list[Answer]:
    """The unedited answers of every probe of ``records``, in order, with the edit's own reference
    (``Edit.reference_answers``) in place of the locality probes' where it gives one."""
    before = [answer for record in records for answer in pre[record.id]]
    local = [i for i, probe in enumerate(p for r in records for p in r.probes) if probe.reference_is_pre_edit]
    found = edit.reference_answers(
        run.model,
        run.tokenizer,
        [pairs[i] for i in local],
        run.answer_mode,
        run.probe_batch_size,
        [languages[i] for i in local],
    )
    for i, answer in zip(local, found or (), strict=found is not None):
        before[i] = answer
    return before


def _sample(run: RunContext, record: Record, pre: list[Answer], post: list[Answer]) -> dict[str, Any]:
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
    sample = {
        "record_id": record.id,
        "request": {
            "prompt": request.prompt,
            "target": request.target,
            "subject": request.subject,
            "language": request.language,
        },
        "probes": probes,
    }
    if record.id in run.alignments:
        sample["subject_alignment"] = run.alignments[record.id]
    return sample


def _check_grouping(planned: list[list[Record]], logged: dict[str, dict[str, Any]]) -> None:
    for batch in planned:
        ids = [r.id for r in batch]
        for record_id in ids:
            sample = logged.get(record_id)
            if sample is not None and sample.get("batch", {}).get("records", [record_id]) != ids:
                raise BatchMismatch(
                    f"record {record_id} was edited in a batch of {sample.get('batch', {}).get('records')}, "
                    f"but this run groups it with {ids} (was --limit or --batch-size changed?). "
                    "Use another --output-dir, or delete it to start over."
                )


def evaluate(run: RunContext, log_file: SampleLog, progress: bool = True) -> list[dict[str, Any]]:
    """Run every batch with a record not yet in ``log_file``; returns the samples of all selected records.

    A batch cut short by a crash is edited again as a whole (same records, same result) and only
    its missing records are logged.
    """
    pre = pre_edit_answers(run)
    logged = {s["record_id"]: s for s in log_file.samples}
    planned = batches(run.records, run.edit_batch_size)
    _check_grouping(planned, logged)
    todo = [batch for batch in planned if any(r.id not in logged for r in batch)]
    remaining = sum(r.id not in logged for batch in todo for r in batch)
    if logged:
        log.info(
            "resuming: %d of %d edits already in %s",
            len(run.records) - remaining,
            len(run.records),
            log_file.path,
        )
    unedited = ModelFingerprint.of(run.model) if todo else None
    with tqdm(total=remaining, desc="edits", unit="edit", disable=not progress) as bar:
        for batch in todo:
            samples = _edit_batch(run, batch, pre)
            unedited.verify(run.model, f"restoring the edit of record(s) {[r.id for r in batch]}")
            for record, sample in zip(batch, samples, strict=True):
                if record.id in logged:
                    continue
                log_file.append(sample)
                plugins.call("after_edit", request=record.request, sample=sample, run=run)
                bar.update(1)
    wanted = {r.id for r in run.records}
    return [s for s in log_file.samples if s["record_id"] in wanted]
