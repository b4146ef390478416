"""Accumulating editing modes (sequential, batch-sequential): every edit stays in force, records are
probed on the model that holds all of them, and the original weights come back at the end.

A run that dies resumes: after each edit call the current value of every tensor touched so far is
saved (``accumulated.pt``, with the originals), so a restart loads the weights instead of editing
again. Edits must therefore live in the weights, which is why editors whose edits live elsewhere
do not offer these modes (``harness.api.Capabilities``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from harness import plugins
from harness.answers import Answer
from harness.api import Edit, Record
from harness.evaluator import RunContext, _check_grouping, _sample, batches, pre_edit_answers
from harness.integrity import ModelFingerprint
from harness.models import save_atomic
from harness.results import SampleLog, aggregate

log = logging.getLogger(__name__)

STATE = "accumulated.pt"
DECAY = "decay.jsonl"


@dataclass
class Accumulated:
    """The edits applied so far: per edit call its records, time, info and touched tensors, plus the
    original and the current value of every tensor any of them touched."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    original: dict[str, torch.Tensor] = field(default_factory=dict)
    current: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def load(cls, output_dir: Path) -> Accumulated:
        path = output_dir / STATE
        if not path.is_file():
            return cls()
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return cls(json.loads(saved["calls"]), saved["original"], saved["current"])

    def save(self, output_dir: Path) -> None:
        payload = {"calls": json.dumps(self.calls), "original": self.original, "current": self.current}
        save_atomic(payload, output_dir / STATE)

    @property
    def edits(self) -> int:
        return sum(len(call["records"]) for call in self.calls)

    def put_back(self, model: torch.nn.Module) -> None:
        """Load the saved edited weights into ``model`` (a resumed run)."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.current.items():
                params[name].copy_(value)

    def add(self, model: torch.nn.Module, edit: Edit, records: list[Record], seconds: float) -> None:
        for name, value in edit.originals.items():
            self.original.setdefault(name, value)
        params = dict(model.named_parameters())
        self.current = {name: params[name].detach().clone() for name in self.original}
        self.calls.append(
            {
                "records": [r.id for r in records],
                "seconds": seconds,
                "info": edit.info,
                "touched": edit.touched,
            }
        )

    def restore(self, model: torch.nn.Module) -> None:
        """Every touched tensor back to its value before the first edit, checked bit for bit."""
        Edit(model, self.original).restore()


def _check_prefix(planned: list[list[Record]], state: Accumulated, output_dir: Path) -> None:
    for call, batch in zip(state.calls, planned):
        if call["records"] != [r.id for r in batch]:
            raise ValueError(
                f"{output_dir} holds edits applied in the order {call['records']} where this run "
                f"applies {[r.id for r in batch]} (was --limit or --batch-size changed?). "
                "Use another --output-dir, or delete it to start over."
            )
    if len(state.calls) > len(planned):
        raise ValueError(f"{output_dir} holds more edits ({state.edits}) than this run makes")


def _probe(
    run: RunContext, edit: Edit | None, records: list[Record], pre: dict[str, list[Answer]]
) -> list[dict[str, Any]]:
    probes = [p for record in records for p in record.probes]
    pairs = [(p.prompt, p.expected) for p in probes]
    if edit is None:  # resumed after the last edit: the weights hold everything
        edit = Edit()
    languages = [p.language for p in probes]
    post = edit.answers(run.model, run.tokenizer, pairs, run.answer_mode, run.probe_batch_size, languages)
    samples, start = [], 0
    for record in records:
        samples.append(_sample(run, record, pre[record.id], post[start : start + len(record.probes)]))
        start += len(record.probes)
    return samples


def _decay_logged(output_dir: Path) -> dict[int, dict[str, Any]]:
    path = output_dir / DECAY
    if not path.is_file():
        return {}
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {line["edits"]: line for line in lines}


def evaluate_accumulating(
    run: RunContext, log_file: SampleLog, progress: bool = True
) -> list[dict[str, Any]]:
    """Apply every batch of records in order without restoring, then probe every record on the final
    model (and, with ``probe_every``, the records edited so far every n edits, into decay.jsonl);
    run ``run.after_edits`` on that model; restore the original weights at the end. Returns the
    samples of all records."""
    wanted = {r.id for r in run.records}
    logged = {s["record_id"] for s in log_file.samples}
    if wanted <= logged and not (run.output_dir / STATE).is_file():
        return [s for s in log_file.samples if s["record_id"] in wanted]
    pre = pre_edit_answers(run)
    planned = batches(run.records, run.edit_batch_size)
    _check_grouping(planned, {s["record_id"]: s for s in log_file.samples})
    state = Accumulated.load(run.output_dir)
    _check_prefix(planned, state, run.output_dir)
    unedited = ModelFingerprint.of(run.model)
    if state.calls:
        log.info("resuming: %d of %d edits already applied (%s)", state.edits, len(run.records), STATE)
        state.put_back(run.model)
    decay = _decay_logged(run.output_dir)
    edit: Edit | None = None
    try:
        with tqdm(
            total=len(run.records), initial=state.edits, desc="edits", unit="edit", disable=not progress
        ) as bar:
            for batch in planned[len(state.calls) :]:
                requests = [record.request for record in batch]
                for request in requests:
                    plugins.call("before_edit", request=request, run=run)
                started = time.perf_counter()
                edit = run.editor.apply(run.model, run.tokenizer, requests)
                before = state.edits
                state.add(run.model, edit, batch, time.perf_counter() - started)
                due = run.probe_every and state.edits // run.probe_every > before // run.probe_every
                if due and state.edits not in decay:
                    decay[state.edits] = _decay_point(run, edit, state.edits, pre)
                state.save(run.output_dir)
                bar.update(len(batch))
        samples = _probe(run, edit, [r for r in run.records if r.id not in logged], pre)
        by_call = {record_id: call for call in state.calls for record_id in call["records"]}
        by_id = {record.id: record for record in run.records}
        for sample in samples:
            call = by_call[sample["record_id"]]
            sample.update(
                edit_seconds=call["seconds"] / len(call["records"]),
                edit_info=call["info"],
                touched=call["touched"],
                edits_in_force=state.edits,
            )
            if run.edit_batch_size > 1:
                sample["batch"] = {"records": call["records"], "seconds": call["seconds"]}
            log_file.append(sample)
            plugins.call("after_edit", request=by_id[sample["record_id"]].request, sample=sample, run=run)
        if run.after_edits is not None:
            run.after_edits()
    finally:
        state.restore(run.model)
    unedited.verify(run.model, f"restoring all {state.edits} accumulated edits")
    (run.output_dir / STATE).unlink(missing_ok=True)
    return [s for s in log_file.samples if s["record_id"] in wanted]


def _decay_point(run: RunContext, edit: Edit, edits: int, pre: dict[str, list[Answer]]) -> dict[str, Any]:
    """Scores of the first ``edits`` records on the model holding all of them; one line in decay.jsonl."""
    point = {"edits": edits, "results": aggregate(_probe(run, edit, run.records[:edits], pre), "post")}
    with open(run.output_dir / DECAY, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(point) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return point


def decay_curve(output_dir: Path) -> list[dict[str, Any]]:
    """The decay points of a run, in order of edits applied."""
    return [line for _, line in sorted(_decay_logged(output_dir).items())]
