"""Task data files read through `datasets`, cached by content.

`datasets` keys its own cache by a file's path and modification time, so a file rewritten with its
old modification time kept (`cp -p`, `rsync -a`, tar) would be read back from the stale copy while
results.json records the new file's hash. Here each file's cache lives under the harness cache in a
folder named after the file's SHA-256: new content, new folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from harness.models import cache_dir, file_sha256


class DataFileError(ValueError):
    """A data file that cannot be read as records; the message names the file and what is wrong."""


def json_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON or JSON-lines file, as `datasets.load_dataset("json")` reads them.
    An empty file, undecodable bytes, text that is not JSON and a file without records are errors
    that name the file."""
    import datasets

    text = Path(path).read_bytes()
    if not text.strip():
        raise DataFileError(f"{path}: the file is empty")
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as error:
        line = text[: error.start].count(b"\n") + 1
        raise DataFileError(f"{path}: line {line} is not UTF-8 text (byte {error.start})") from None
    if text.strip() == b"[]":
        raise DataFileError(f"{path}: holds no records")
    by_content = cache_dir() / "datasets" / file_sha256(path)[:24]
    library_log = logging.getLogger("datasets")  # it logs (and mis-formats) what is raised below
    level = library_log.level
    library_log.setLevel(logging.CRITICAL)
    try:
        records = datasets.load_dataset(
            "json", data_files=str(path), split="train", cache_dir=str(by_content)
        ).to_list()
    except Exception as error:  # noqa: BLE001 - datasets raises many kinds; one clear message instead
        cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataFileError(f"{path}: not a JSON array or JSON lines of records ({cause})") from None
    finally:
        library_log.setLevel(level)
    if not records:
        raise DataFileError(f"{path}: holds no records")
    return records
