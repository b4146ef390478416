"""Multilingual ZsRE (MzsRE): edit in one language, probe in another or in all; pairs found from files.

The languages are the files ``{data_dir}/mzsre/test_{lang}.json`` (ISO 639-1 codes; one Bi-ZsRE side
per record, records aligned by index), so adding a language is adding its file. For every ordered
pair of distinct languages ``mzsre_{edit}_{probe}`` edits in ``edit`` and probes like
``bizsre_en_zh`` does; ``mzsre_{edit}_all`` probes generality, locality and portability in every
language, the edit language first, then alphabetically. Without a data directory (or without its
``mzsre/`` folder) the family registers nothing.

Unlike Bi-ZsRE, a subject missing from ``src`` is not a data error: translated subjects are often
inflected or transliterated, and the edit locates them with ``harness.subjects.align_subject``.
Training pools ``mzsre_train_{lang}`` come from ``{data_dir}/zsre_train/train_{lang}_10000.tsv``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.api import Record, TrainingExample, ValidationIssue
from harness.datafiles import json_records
from harness.hookspecs import hookimpl

from ..bizsre.zsre_records import PROPERTIES, build_record, record_issues, training_file

log = logging.getLogger(__name__)

TEST_FILE = re.compile(r"test_([a-z]{2})\.json")
TRAINING_FILE = re.compile(r"train_([a-z]{2})_10000\.tsv")
TEST_DIR = "mzsre"
TRAINING_DIR = "zsre_train"


def discover(folder: Path, pattern: re.Pattern[str]) -> tuple[str, ...]:
    """Language codes of the files in ``folder`` whose whole name matches ``pattern``, alphabetically."""
    if not folder.is_dir():
        return ()
    return tuple(sorted(m.group(1) for path in folder.iterdir() if (m := pattern.fullmatch(path.name))))


def language_file(lang: str) -> str:
    return f"{TEST_DIR}/test_{lang}.json"


def training_set_name(lang: str) -> str:
    return f"mzsre_train_{lang}"


@dataclass(frozen=True)
class MzsRETask:
    """Edit in ``edit_language``; probe reliability there and the other properties in ``languages``."""

    edit_language: str
    languages: tuple[str, ...]  # the edit language first
    probed: str  # the name's suffix: the other language, or "all"
    training_set: str = ""
    properties: tuple[str, ...] = PROPERTIES
    template: str = "bizsre/question.jinja"

    @property
    def name(self) -> str:
        return f"mzsre_{self.edit_language}_{self.probed}"

    @property
    def description(self) -> str:
        return (
            f"MzsRE: edit in {self.edit_language}, probe reliability in {self.edit_language} and "
            f"generality/locality/portability in {', '.join(self.languages)}"
        )

    def data_files(self, data_dir: Path | None) -> list[Path]:
        if data_dir is None:
            raise FileNotFoundError(f"task {self.name} needs a data directory holding {TEST_DIR}/")
        paths = [Path(data_dir) / language_file(lang) for lang in self.languages]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"task {self.name}: missing data file(s) {missing}")
        return paths

    def load_raw(self, data_dir: Path | None) -> list[dict[str, Any]]:
        """One dict per record keyed by language (the shape of a Bi-ZsRE record)."""
        paths = self.data_files(data_dir)
        sides = [json_records(p) for p in paths]
        counts = {str(path): len(records) for path, records in zip(paths, sides)}
        if len(set(counts.values())) > 1:
            raise ValueError(
                f"task {self.name}: the language files must hold the same records in the same order, "
                f"but their record counts differ: {counts}"
            )
        return [dict(zip(self.languages, record)) for record in zip(*sides)]

    def validate(self, raw: list[dict[str, Any]]) -> list[ValidationIssue]:
        return [
            issue
            for index, record in enumerate(raw)
            for issue in record_issues(index, record, self.languages)
        ]

    def records(self, raw: list[dict[str, Any]], render: Callable[[str], str]) -> list[Record]:
        return [
            build_record(str(index), item, self.edit_language, self.languages, self.properties, render)
            for index, item in enumerate(raw)
        ]


def variants(languages: tuple[str, ...], training_languages: tuple[str, ...]) -> list[MzsRETask]:
    """Every ordered pair of distinct languages, and each language against all (given two or more)."""
    tasks = []
    for edit in languages:
        training_set = training_set_name(edit) if edit in training_languages else ""
        others = [lang for lang in languages if lang != edit]
        tasks += [MzsRETask(edit, (edit, other), other, training_set) for other in others]
        if others:
            tasks.append(MzsRETask(edit, (edit, *others), "all", training_set))
    return tasks


@dataclass(frozen=True)
class MzsRETrainingSet:
    """MzsRE training questions in one language: a TSV of ``src<TAB>alt`` lines.

    The file has no subject, rephrase or locality fields, so each example's rephrase is its own
    question (there is no paraphrase to learn generality from), its subject is empty, and its
    locality question is the next usable line's (an unrelated fact; the last wraps to the first).
    """

    language: str

    @property
    def name(self) -> str:
        return training_set_name(self.language)

    @property
    def relative_path(self) -> str:
        return f"{TRAINING_DIR}/train_{self.language}_10000.tsv"

    @property
    def description(self) -> str:
        return f"MzsRE training questions, {self.language} (src<TAB>alt; rephrase = src, no subject)"

    def data_files(self, data_dir: Path | None) -> list[Path]:
        return [training_file(self.name, self.relative_path, data_dir)]

    def examples(self, data_dir: Path | None) -> list[TrainingExample]:
        (path,) = self.data_files(data_dir)
        facts, skipped = [], []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            fields = [field.strip() for field in line.split("\t")]
            if len(fields) == 2 and all(fields):
                facts.append((fields[0], fields[1]))
            else:
                skipped.append(number)
        if skipped:
            log.warning(
                "training set %s: skipped %d line(s) of %s without exactly two non-empty fields (lines %s%s)",
                self.name,
                len(skipped),
                path,
                skipped[:10],
                " ..." if len(skipped) > 10 else "",
            )
        return [
            TrainingExample(
                prompt=question,
                target=answer,
                subject="",
                rephrase=question,
                locality_prompt=facts[(index + 1) % len(facts)][0],
                locality_answer=facts[(index + 1) % len(facts)][1],
                language=self.language,
            )
            for index, (question, answer) in enumerate(facts)
        ]


@hookimpl
def register_tasks(register, data_dir):
    if data_dir is None:
        return
    languages = discover(Path(data_dir) / TEST_DIR, TEST_FILE)
    for task in variants(languages, discover(Path(data_dir) / TRAINING_DIR, TRAINING_FILE)):
        register(task)


@hookimpl
def register_training_sets(register, data_dir):
    if data_dir is None:
        return
    for lang in discover(Path(data_dir) / TRAINING_DIR, TRAINING_FILE):
        register(MzsRETrainingSet(lang))
