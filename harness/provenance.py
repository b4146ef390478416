"""Which invocations wrote a run's records: a run resumed after a crash, or finished on another
machine, lists each one in results.json with its commit, library versions, start, end and records.

Every invocation appends a line to ``invocations.jsonl`` in the output directory when it starts and
another when it finishes, and stamps each sample it logs with its id and the time. The list is
rebuilt from both, so an invocation that was killed still shows, ending at its last logged record.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

INVOCATIONS = "invocations.jsonl"

log = logging.getLogger(__name__)


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@dataclasses.dataclass(frozen=True)
class Invocation:
    """One process working on a run's output directory."""

    id: str
    started: float  # seconds since the epoch
    commit: str
    versions: dict[str, str]
    host: str
    pid: int

    @classmethod
    def begin(cls, output_dir: Path, commit: str, versions: dict[str, str], started: float) -> Invocation:
        """Record an invocation that began at ``started`` in ``output_dir`` before it logs a record."""
        invocation = cls(
            id=f"{_utc(started)}-{os.getpid()}-{uuid.uuid4().hex[:8]}",  # unique within a process too
            started=started,
            commit=commit,
            versions=versions,
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        _append(output_dir, dataclasses.asdict(invocation))
        return invocation

    def finish(self, output_dir: Path, ended: float) -> None:
        """Record when this invocation finished its records."""
        _append(output_dir, {"id": self.id, "ended": ended})

    def stamp(self, sample: dict[str, Any]) -> None:
        """Mark a sample as logged by this invocation, now."""
        sample["invocation"] = self.id
        sample["logged_at"] = time.time()


def _append(output_dir: Path, line: dict[str, Any]) -> None:
    with open(output_dir / INVOCATIONS, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line, ensure_ascii=False) + "\n")


def _recorded(output_dir: Path) -> list[dict[str, Any]]:
    """Each invocation's start line, with ``ended`` from its finish line if it wrote one."""
    path = output_dir / INVOCATIONS
    if not path.is_file():
        return []
    found: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s, line %d: not an invocation record (a killed write?); ignored", path, number)
            continue
        found.setdefault(entry["id"], {}).update(entry)
    return list(found.values())


def history(output_dir: Path, samples: list[dict[str, Any]], current: Invocation) -> list[dict]:
    """Every invocation that logged one of ``samples``, and ``current``, in the order they started;
    samples logged before invocations were recorded form one entry of their own."""
    records: dict[str | None, list[dict[str, Any]]] = {}
    for sample in samples:
        records.setdefault(sample.get("invocation"), []).append(sample)
    entries = []
    for invocation in _recorded(output_dir):
        mine = records.get(invocation["id"], [])
        if not mine and invocation["id"] != current.id:
            continue
        end = invocation.get("ended") or max(s["logged_at"] for s in mine)
        entries.append(_entry(invocation, end, mine))
    if None in records:
        earlier = {"id": None, "note": "logged before invocations were recorded", **_ids(records[None])}
        entries.insert(0, earlier)
    return entries


def _ids(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"records": [s.get("record_id", s.get("id")) for s in samples]}


def _entry(invocation: dict[str, Any], ended: float, samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": invocation["id"],
        "commit": invocation["commit"],
        "versions": invocation["versions"],
        "host": invocation["host"],
        "started": _utc(invocation["started"]),
        "ended": _utc(ended),
        "seconds": ended - invocation["started"],
        **_ids(samples),
    }


def total_seconds(entries: list[dict[str, Any]]) -> float:
    """The time every listed invocation spent, summed."""
    return sum(entry.get("seconds", 0.0) for entry in entries)
