"""Bi-ZsRE cross-lingual editing (Wang et al., 2023): edit in one language, probe in both.

One definition generates every variant: ``bizsre_{edit}_{other}`` with all four properties and
``bizsre_{edit}_{other}_{property}`` with one. Records come from ``{data_dir}/bizsre/`` or, with no
data directory configured, from a bundled sample of invented facts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.api import Record, TrainingExample, ValidationIssue
from harness.datafiles import json_records
from harness.hookspecs import hookimpl

from .zsre_records import LOC_PREFIX, PROPERTIES, build_record, record_issues, training_file

log = logging.getLogger(__name__)

LANGUAGES = ("en", "zh")
DATA_FILES = ("bizsre/bizsre_test_enzh_743.json", "bizsre/bizsre_test.json")
SAMPLE = Path(__file__).parent / "sample" / "bizsre_sample_enzh_20.json"


@dataclass(frozen=True)
class BiZsRETask:
    edit_language: str
    properties: tuple[str, ...] = PROPERTIES
    template: str = "bizsre/question.jinja"
    languages: tuple[str, ...] = LANGUAGES

    @property
    def name(self) -> str:
        other = next(lang for lang in self.languages if lang != self.edit_language)
        suffix = "" if self.properties == PROPERTIES else "_" + "_".join(self.properties)
        return f"bizsre_{self.edit_language}_{other}{suffix}"

    @property
    def training_set(self) -> str:
        return f"zsre_{self.edit_language}"

    @property
    def description(self) -> str:
        return f"Bi-ZsRE: edit in {self.edit_language}, probe {'/'.join(self.properties)} in en and zh"

    def data_files(self, data_dir: Path | None) -> list[Path]:
        if data_dir is None:
            return [SAMPLE]
        candidates = [Path(data_dir) / name for name in DATA_FILES]
        for path in candidates:
            if path.is_file():
                return [path]
        raise FileNotFoundError(
            f"task {self.name}: none of {[str(p) for p in candidates]} exists under data dir {data_dir}"
        )

    def load_raw(self, data_dir: Path | None) -> list[dict[str, Any]]:
        if data_dir is None:
            log.warning("no data directory configured: using the bundled sample of %s", SAMPLE.name)
        (path,) = self.data_files(data_dir)
        return json_records(path)

    def validate(self, raw: list[dict[str, Any]]) -> list[ValidationIssue]:
        issues: list[ValidationIssue] = []
        for index, record in enumerate(raw):
            issues += record_issues(index, record, self.languages)
            issues += self._subject_issues(index, record)
        return issues

    def _subject_issues(self, index: int, record: dict[str, Any]) -> list[ValidationIssue]:
        """Bi-ZsRE subjects occur verbatim in the edit-language question (locate-then-edit needs them)."""
        edit = record.get(self.edit_language)
        subject, src = (edit.get("subject"), edit.get("src")) if isinstance(edit, dict) else (None, None)
        if isinstance(subject, str) and isinstance(src, str) and subject and subject not in src:
            return [
                ValidationIssue(
                    index, f"{self.edit_language}.subject", f"subject {subject!r} not found in src {src!r}"
                )
            ]
        return []

    def records(self, raw: list[dict[str, Any]], render: Callable[[str], str]) -> list[Record]:
        return [
            build_record(str(index), item, self.edit_language, self.languages, self.properties, render)
            for index, item in enumerate(raw)
        ]


TRAINING_FIELDS = ("subject", "src", "alt", "rephrase", "loc", "loc_ans")


@dataclass(frozen=True)
class ZsRETrainingSet:
    """ZsRE-style training records (``subject, src, alt, rephrase, loc, loc_ans``) in one language."""

    name: str
    language: str
    relative_path: str
    description: str

    def data_files(self, data_dir: Path | None) -> list[Path]:
        return [training_file(self.name, self.relative_path, data_dir)]

    def examples(self, data_dir: Path | None) -> list[TrainingExample]:
        (path,) = self.data_files(data_dir)
        raw = json_records(path)
        usable, skipped = [], []
        for index, item in enumerate(raw):
            if all(isinstance(item.get(f), str) and item[f].strip() for f in TRAINING_FIELDS):
                usable.append(
                    TrainingExample(
                        prompt=item["src"],
                        target=item["alt"],
                        subject=item["subject"],
                        rephrase=item["rephrase"],
                        locality_prompt=item["loc"].removeprefix(LOC_PREFIX),
                        locality_answer=item["loc_ans"],
                        language=self.language,
                    )
                )
            else:
                skipped.append(index)
        if skipped:
            log.warning(
                "training set %s: skipped %d record(s) with a missing or empty field among %s (indices %s%s)",
                self.name,
                len(skipped),
                TRAINING_FIELDS,
                skipped[:10],
                " ..." if len(skipped) > 10 else "",
            )
        return usable


TRAINING_SETS = (
    ZsRETrainingSet(
        "zsre_en",
        "en",
        "zsre_train/zsre_mend_train_en_10000.json",
        "ZsRE training split, English (10,000 records, MEND format)",
    ),
    ZsRETrainingSet(
        "zsre_zh",
        "zh",
        "zsre_eval/zsre_mend_eval_zh_3000.json",
        "Bi-ZsRE Chinese validation set (3,000 records), the Chinese training pool",
    ),
)


def variants() -> list[BiZsRETask]:
    tasks = []
    for edit_language in LANGUAGES:
        tasks.append(BiZsRETask(edit_language))
        tasks += [BiZsRETask(edit_language, (prop,)) for prop in PROPERTIES]
    return tasks


@hookimpl
def register_tasks(register):
    for task in variants():
        register(task)


@hookimpl
def register_training_sets(register):
    for training_set in TRAINING_SETS:
        register(training_set)
