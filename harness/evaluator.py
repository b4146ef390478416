"""The edit loop of every mode: pre-edit answers once -> per edit call (one record in single mode,
``batch_size`` in the batch modes): apply, then what the mode's policy says (probe and restore at
once, or keep the edit and probe after the last) -> score, log one line per record."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from harness import plugins
from harness.answers import Answer, read_answers
from harness.api import Edit, Record, holding_unedited_weights
from harness.integrity import ModelFingerprint
from harness.models import build_once
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

    def read() -> None:
        log.info("reading pre-edit answers for %d probes", len(pairs))
        flat = [
            answer
            for batch in batches(run.records, run.edit_batch_size)
            for answer in read_answers(
                run.model, run.tokenizer, _pairs(batch), run.answer_mode, run.probe_batch_size
            )
        ]
        write_json(path, [[a.text, list(a.token_ids)] for a in flat])

    build_once(path, read)
    flat = [Answer(text, tuple(ids)) for text, ids in json.loads(path.read_text(encoding="utf-8"))]
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


def check_grouping(planned: list[list[Record]], logged: dict[str, dict[str, Any]]) -> None:
    """Refuse an output directory whose records were edited in other groups than ``planned``."""
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


def probe_records(
    run: RunContext, edit: Edit, records: list[Record], pre: dict[str, list[Answer]]
) -> list[dict[str, Any]]:
    """Ask every probe of ``records`` while ``edit`` is in force and score it; one sample per record."""
    probes = [p for record in records for p in record.probes]
    pairs = [(p.prompt, p.expected) for p in probes]
    languages = [p.language for p in probes]
    post = edit.answers(run.model, run.tokenizer, pairs, run.answer_mode, run.probe_batch_size, languages)
    before = _references(run, edit, records, pre, pairs, languages)
    samples, start = [], 0
    for record in records:
        end = start + len(record.probes)
        samples.append(_sample(run, record, before[start:end], post[start:end]))
        start = end
    return samples


def describe_call(run: RunContext, sample: dict[str, Any], call: dict[str, Any]) -> None:
    """Add to ``sample`` what the edit call that wrote its record took and did (``call``: its records,
    seconds, info and touched tensors); in the batch modes also which records shared it."""
    records, seconds = call["records"], call["seconds"]
    sample.update(edit_seconds=seconds / len(records), edit_info=call["info"], touched=call["touched"])
    if run.edit_batch_size > 1:
        sample["batch"] = {"records": records, "seconds": seconds}


class EditPolicy(Protocol):
    """When the edit loop probes and when it restores: after every edit call (``Restoring``), or once
    all edits are in force (``harness.sequential.Accumulating``)."""

    def pending(self, planned: list[list[Record]], logged: dict[str, dict[str, Any]]) -> list[list[Record]]:
        """The edit calls still to make, in order."""

    def progress(self, logged: dict[str, dict[str, Any]]) -> tuple[int, int]:
        """What the progress bar counts: (total, done before this invocation)."""

    def session(self, pre: dict[str, list[Answer]]) -> contextlib.AbstractContextManager:
        """Around all edit calls: whatever must hold before the first and be undone after the last."""

    def editing(self) -> contextlib.AbstractContextManager:
        """Around one edit call."""

    def after_call(self, batch: list[Record], edit: Edit, seconds: float) -> tuple[list[dict], int]:
        """After one edit call: the samples it finished and how far the bar advances."""

    def finish(self, logged: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """After the last edit call: the samples still to log."""


class Restoring:
    """Single and batch modes: probe each edit call's records at once, then restore the weights and
    check the whole model is bit-identical to the unedited one."""

    def __init__(self, run: RunContext):
        self.run = run
        self.pre: dict[str, list[Answer]] = {}
        self.unedited: ModelFingerprint | None = None
        self.weights = ""  # the unedited weights' digest, taken once with their fingerprint
        self.logged: dict[str, dict[str, Any]] = {}
        self.todo: list[list[Record]] = []

    def pending(self, planned, logged):
        self.logged = logged
        self.todo = [batch for batch in planned if any(r.id not in logged for r in batch)]
        return self.todo

    def progress(self, logged):
        return sum(r.id not in logged for r in self.run.records), 0

    @contextlib.contextmanager
    def session(self, pre):
        self.pre = pre
        self.unedited = ModelFingerprint.of(self.run.model) if self.todo else None
        self.weights = f"{self.run.model_fingerprint}:{self.unedited.digest()}" if self.unedited else ""
        yield

    def editing(self):
        """Every call starts on the unedited weights (checked after each restore), so what an editor
        computes from them before its first write may be cached (``api.unedited_weights``)."""
        return holding_unedited_weights(self.weights)

    def after_call(self, batch, edit, seconds):
        try:
            samples = probe_records(self.run, edit, batch, self.pre)
        finally:
            edit.restore()  # raises RestoreError unless every touched tensor is bit-identical again
        self.unedited.verify(self.run.model, f"restoring the edit of record(s) {[r.id for r in batch]}")
        call = {
            "records": [r.id for r in batch],
            "seconds": seconds,
            "info": edit.info,
            "touched": edit.touched,
        }
        for sample in samples:
            describe_call(self.run, sample, call)
        fresh = [s for s in samples if s["record_id"] not in self.logged]
        return fresh, len(fresh)

    def finish(self, logged):
        return []


def evaluate(
    run: RunContext, log_file: SampleLog, policy: EditPolicy, progress: bool = True
) -> list[dict[str, Any]]:
    """The one edit loop of every mode: each edit call still pending (``policy``) fires ``before_edit``
    for its requests, is applied and timed, and hands the policy the edit; every finished sample is
    logged and fires ``after_edit``. Returns the samples of all selected records.

    A run cut short resumes from ``log_file``: a batch cut short is edited again as a whole (same
    records, same result) and only its missing records are logged.
    """
    logged = {s["record_id"]: s for s in log_file.samples}
    planned = batches(run.records, run.edit_batch_size)
    check_grouping(planned, logged)
    todo = policy.pending(planned, logged)
    if logged and todo:
        log.info("resuming: %d of %d records already in %s", len(logged), len(run.records), log_file.path)
    total, done = policy.progress(logged)
    by_id = {record.id: record for record in run.records}
    with policy.session(pre_edit_answers(run)):
        with tqdm(total=total, initial=done, desc="edits", unit="edit", disable=not progress) as bar:
            for batch in todo:
                for record in batch:
                    plugins.call("before_edit", request=record.request, run=run)
                started = time.perf_counter()
                with policy.editing():
                    edit = run.editor.apply(run.model, run.tokenizer, [record.request for record in batch])
                finished, advanced = policy.after_call(batch, edit, time.perf_counter() - started)
                _log(run, log_file, finished, by_id)
                bar.update(advanced)
        _log(run, log_file, policy.finish(logged), by_id)
    wanted = set(by_id)
    return [s for s in log_file.samples if s["record_id"] in wanted]


def _log(
    run: RunContext, log_file: SampleLog, samples: list[dict[str, Any]], by_id: dict[str, Record]
) -> None:
    for sample in samples:
        log_file.append(sample)
        plugins.call("after_edit", request=by_id[sample["record_id"]].request, sample=sample, run=run)
