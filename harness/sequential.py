"""Accumulating editing modes (sequential, batch-sequential): every edit stays in force, records are
probed on the model that holds all of them, and the original weights come back at the end.

A run that dies resumes: after each edit call the current value of every tensor touched so far is
saved (``accumulated.pt``, with the originals), and so is the editor's memory for editors that keep
one (``Capabilities.memory``), so a restart loads both instead of editing again. Edits must
therefore live in the weights or in such a memory, which is why editors whose edits live elsewhere
(in the prompt, in a retrieval store) do not offer these modes (``harness.api.Capabilities``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.answers import Answer
from harness.api import Edit, Editor, Record
from harness.evaluator import RunContext, describe_call, probe_records
from harness.integrity import ModelFingerprint
from harness.models import save_atomic
from harness.results import aggregate

log = logging.getLogger(__name__)

STATE = "accumulated.pt"
DECAY = "decay.jsonl"


@dataclass
class Accumulated:
    """The edits applied so far: per edit call its records, time, info and touched tensors, plus the
    original and the current value of every tensor any of them touched, and the editor's memory
    after the last call (editors that keep one)."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    original: dict[str, torch.Tensor] = field(default_factory=dict)
    current: dict[str, torch.Tensor] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, output_dir: Path) -> Accumulated:
        path = output_dir / STATE
        if not path.is_file():
            return cls()
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return cls(json.loads(saved["calls"]), saved["original"], saved["current"], saved.get("memory", {}))

    def save(self, output_dir: Path) -> None:
        payload = {
            "calls": json.dumps(self.calls),
            "original": self.original,
            "current": self.current,
            "memory": self.memory,
        }
        save_atomic(payload, output_dir / STATE)

    @property
    def edits(self) -> int:
        return sum(len(call["records"]) for call in self.calls)

    def put_back(self, model: torch.nn.Module, editor: Editor) -> None:
        """Load the saved edited weights and the editor's memory into ``model`` (a resumed run)."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.current.items():
                params[name].copy_(value)
        if self.calls and editor.capabilities.memory:
            editor.load_memory_state(model, self.memory)

    def add(
        self, model: torch.nn.Module, editor: Editor, edit: Edit, records: list[Record], seconds: float
    ) -> None:
        for name, value in edit.originals.items():
            self.original.setdefault(name, value)
        params = dict(model.named_parameters())
        self.current = {name: params[name].detach().clone() for name in self.original}
        if editor.capabilities.memory:
            self.memory = editor.memory_state()
        self.calls.append(
            {
                "records": [r.id for r in records],
                "seconds": seconds,
                "info": edit.info,
                "touched": edit.touched,
            }
        )

    def restore(self, model: torch.nn.Module, editor: Editor) -> None:
        """The editor's memory cleared and every touched tensor back to its value before the first
        edit, checked bit for bit."""
        if editor.capabilities.memory:
            editor.clear_memory(model)
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


def _decay_logged(output_dir: Path) -> dict[int, dict[str, Any]]:
    path = output_dir / DECAY
    if not path.is_file():
        return {}
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {line["edits"]: line for line in lines}


class Accumulating:
    """Sequential and batch-sequential modes (an ``EditPolicy``): apply every edit call in order without
    restoring, saving the edited weights after each; probe every record on the final model (and, with
    ``probe_every``, the records edited so far every n edits, into decay.jsonl); run ``after_edits``
    on that model; restore the original weights at the end and check them bit for bit."""

    def __init__(self, run: RunContext):
        self.run = run
        self.state = Accumulated()
        self.pre: dict[str, list[Answer]] = {}
        self.decay: dict[int, dict[str, Any]] = {}
        self.last: Edit = Edit()  # a resumed run whose edits are all applied probes the weights as they are
        self.finished = False

    def pending(self, planned, logged):
        wanted = {r.id for r in self.run.records}
        if wanted <= set(logged) and not (self.run.output_dir / STATE).is_file():
            self.finished = True
            return []
        self.state = Accumulated.load(self.run.output_dir)
        _check_prefix(planned, self.state, self.run.output_dir)
        if self.state.calls:
            log.info("resuming: %d of %d edits already applied (%s)", self.state.edits, len(wanted), STATE)
        return planned[len(self.state.calls) :]

    def progress(self, logged):
        return len(self.run.records), self.state.edits

    @contextlib.contextmanager
    def session(self, pre):
        if self.finished:
            yield
            return
        self.pre, self.decay = pre, _decay_logged(self.run.output_dir)
        unedited = ModelFingerprint.of(self.run.model)
        try:
            self.state.put_back(self.run.model, self.run.editor)
            yield
            if self.run.after_edits is not None:
                self.run.after_edits()
        finally:
            self.state.restore(self.run.model, self.run.editor)
        unedited.verify(self.run.model, f"restoring all {self.state.edits} accumulated edits")
        (self.run.output_dir / STATE).unlink(missing_ok=True)

    def editing(self):
        """Calls start on weights earlier edits changed: nothing is cached under them."""
        return contextlib.nullcontext()

    def after_call(self, batch, edit, seconds):
        before = self.state.edits
        self.state.add(self.run.model, self.run.editor, edit, batch, seconds)
        self.last = edit
        every = self.run.probe_every
        if every and self.state.edits // every > before // every and self.state.edits not in self.decay:
            self.decay[self.state.edits] = self._decay_point()
        self.state.save(self.run.output_dir)
        return [], len(batch)

    def finish(self, logged):
        if self.finished:
            return []
        unlogged = [r for r in self.run.records if r.id not in logged]
        samples = probe_records(self.run, self.last, unlogged, self.pre)
        by_call = {record_id: call for call in self.state.calls for record_id in call["records"]}
        for sample in samples:
            describe_call(self.run, sample, by_call[sample["record_id"]])
            sample["edits_in_force"] = self.state.edits
        return samples

    def _decay_point(self) -> dict[str, Any]:
        """Scores of the records edited so far on the model holding all of them; a line in decay.jsonl."""
        edited = self.run.records[: self.state.edits]
        point = {
            "edits": self.state.edits,
            "results": aggregate(probe_records(self.run, self.last, edited, self.pre), "post"),
        }
        with open(self.run.output_dir / DECAY, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(point) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return point


def decay_curve(output_dir: Path) -> list[dict[str, Any]]:
    """The decay points of a run, in order of edits applied."""
    return [line for _, line in sorted(_decay_logged(output_dir).items())]
