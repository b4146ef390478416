"""Stand-ins the harness used because a language lacks its own resource (English starter words for
the text a model samples, the English essence prompt). Each is logged once per process and, once a
run's output directory is known, appended to its ``fallbacks.jsonl``; results.json lists every one
any invocation of the run used (``fallbacks``), so no number silently rests on one."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

FALLBACKS = "fallbacks.jsonl"

_used: list[dict[str, str]] = []
_sink: Path | None = None


def note(resource: str, language: str, stand_in: str) -> None:
    """Record that ``resource`` has no ``language`` version and ``stand_in`` was used instead."""
    entry = {"resource": resource, "language": language, "used": stand_in}
    if entry in _used:
        return
    _used.append(entry)
    log.warning("%s: none for language %r; using %s instead", resource, language, stand_in)
    if _sink is not None:
        _append(_sink, [entry])


def reset() -> None:
    """Forget what was noted and stop writing it anywhere (a new run starts)."""
    global _sink
    _used.clear()
    _sink = None


def persist(output_dir: Path) -> None:
    """From now on append every stand-in to ``output_dir``'s record, starting with those noted so far."""
    global _sink
    _sink = output_dir / FALLBACKS
    known = in_run(output_dir)
    _append(_sink, [entry for entry in _used if entry not in known])


def in_run(output_dir: Path) -> list[dict[str, str]]:
    """Every stand-in any invocation of the run in ``output_dir`` recorded, each once."""
    path = output_dir / FALLBACKS
    found: list[dict[str, str]] = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line) if line.strip() else None
            if entry and entry not in found:
                found.append(entry)
    return found


def _append(path: Path, entries: list[dict[str, str]]) -> None:
    if entries:
        with open(path, "a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries)
