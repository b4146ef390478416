"""Reading the general-ability data files, with every malformed record reported at once.

Readers yield ``(where, record)`` pairs, ``where`` being the record's place in the file ("line 7",
"record 3") so that a problem can be located; checks collect problems in ``DataProblems``, which
raises one ValueError naming the file and up to ten of them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SHOWN_PROBLEMS = 10
ENTITY_TYPES = ("PER", "ORG", "LOC", "MISC")  # the CoNLL-2003 entity types

# A field check returns what is wrong with a value, or None when it is fine.
Check = Callable[[Any], str | None]


class DataProblems:
    """Problems found in one data file; ``raise_if_any`` reports them together."""

    def __init__(self, path: Path):
        self.path = path
        self.found: list[str] = []

    def add(self, where: str, problem: str, field: str | None = None) -> None:
        self.found.append(f"{where}, field {field!r}: {problem}" if field else f"{where}: {problem}")

    def raise_if_any(self) -> None:
        if not self.found:
            return
        shown = "\n  ".join(self.found[:SHOWN_PROBLEMS])
        hidden = len(self.found) - SHOWN_PROBLEMS
        more = f"\n  ... and {hidden} more" if hidden > 0 else ""
        raise ValueError(f"{self.path}: {len(self.found)} problem(s) in the data:\n  {shown}{more}")


def text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "needs a non-empty string"


def texts(value: Any) -> str | None:
    if isinstance(value, list) and value and all(text(item) is None for item in value):
        return None
    return "needs a non-empty list of non-empty strings"


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "needs true or false"


def identifier(value: Any) -> str | None:
    usable = isinstance(value, int | str) and not isinstance(value, bool) and str(value).strip()
    return None if usable else "needs a non-empty string or an integer"


def one_of(*allowed: Any) -> Check:
    return lambda value: None if value in allowed else f"needs one of {list(allowed)}, got {value!r}"


def fields_ok(record: Any, checks: dict[str, Check], where: str, problems: DataProblems) -> bool:
    """Check a record's fields, adding a problem for each one missing or malformed."""
    if not isinstance(record, dict):
        problems.add(where, "needs an object with fields " + ", ".join(checks))
        return False
    found = [(name, check(record[name]) if name in record else "missing") for name, check in checks.items()]
    for name, problem in found:
        if problem:
            problems.add(where, problem, name)
    return not any(problem for _, problem in found)


def json_lines(path: Path, problems: DataProblems) -> Iterator[tuple[str, Any]]:
    """One JSON value per non-blank line."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"line {number}", json.loads(line)
        except json.JSONDecodeError as error:
            problems.add(f"line {number}", f"not JSON ({error})")


def json_array(path: Path, problems: DataProblems) -> Iterator[tuple[str, Any]]:
    """The items of a file holding one JSON array."""
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        problems.add("file", f"not JSON ({error})")
        return
    if not isinstance(items, list):
        problems.add("file", "needs a JSON array of records")
        return
    yield from ((f"record {index}", item) for index, item in enumerate(items))


def tsv(
    path: Path, columns: tuple[str, ...], problems: DataProblems, quoted: bool = False
) -> Iterator[tuple[str, Any]]:
    """Rows of a tab-separated file with a header line naming ``columns``; no quoting, unless
    ``quoted``: then a field may be quoted as the csv module reads by default (as MEH read RTE)."""
    quoting = csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
    with path.open(encoding="utf-8", newline="") as file:
        rows = csv.reader(file, delimiter="\t", quoting=quoting)
        header = next(rows, None)
        if header is None or tuple(header) != columns:
            problems.add("line 1", f"needs the header {list(columns)}, got {header}")
            return
        for number, row in enumerate(rows, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(columns):
                problems.add(f"line {number}", f"needs {len(columns)} tab-separated columns, got {len(row)}")
                continue
            yield f"line {number}", dict(zip(columns, row))


def conll_sentences(
    path: Path, problems: DataProblems, keep_docstart: bool = False
) -> Iterator[tuple[str, Any]]:
    """Sentences of a CoNLL-2003 column file: the token is the first column, the entity tag the last;
    blank lines end sentences and ``-DOCSTART-`` lines are skipped, unless ``keep_docstart``: then
    they are ordinary lines (MEH asks about each one as a sentence). Tags are O, B-TYPE or I-TYPE."""
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for number, line in enumerate([*path.read_text(encoding="utf-8").splitlines(), ""], start=1):
        columns = line.split()
        if not columns or (columns[0] == "-DOCSTART-" and not keep_docstart):
            if tokens:
                yield f"line {start}", {"tokens": tokens, "tags": tags}
            tokens, tags = [], []
            continue
        start = start if tokens else number
        tag = columns[-1]
        prefix, _, kind = tag.partition("-")
        if len(columns) < 2 or not (tag == "O" or (prefix in ("B", "I") and kind in ENTITY_TYPES)):
            problems.add(f"line {number}", f"needs O, B-TYPE or I-TYPE with TYPE in {ENTITY_TYPES}", "tag")
        tokens.append(columns[0])
        tags.append(tag)
