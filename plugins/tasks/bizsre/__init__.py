"""Bi-ZsRE cross-lingual editing (Wang et al., 2023): edit in one language, probe in both.

One definition generates every variant: ``bizsre_{edit}_{other}`` with all four properties and
``bizsre_{edit}_{other}_{property}`` with one. Records come from ``{data_dir}/bizsre/`` or, with no
data directory configured, from a bundled sample of invented facts.

Two scoring profiles (docs/protocol.md): ``harness``, the default, and ``bizsre-published``, which
builds and scores probes the way the published Bi-ZsRE tables were: locality questions keep their
``nq question: `` marker, "F1" is precision times recall, every model is scored with one Chinese-LLaMA
tokenizer, and the official 1,037-record test file is read when present.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.api import Record, TrainingExample, ValidationIssue
from harness.datafiles import json_records
from harness.hookspecs import hookimpl
from harness.metrics import token_f1_product

from .zsre_records import LOC_PREFIX, PROPERTIES, build_record, record_issues, training_file

log = logging.getLogger(__name__)

LANGUAGES = ("en", "zh")
DATA_FILES = ("bizsre/bizsre_test_enzh_743.json", "bizsre/bizsre_test.json")
HARNESS, PUBLISHED = "harness", "bizsre-published"
# the published tables read the official file (1,037 records, 294 of them repeating a subject) first
PUBLISHED_DATA_FILES = DATA_FILES[::-1]
PUBLISHED_TOKENIZER = "chinese-llama-plus-7b"
CHINESE_POOL_NOTE = (
    "the Bi-ZsRE code drew IKE's Chinese demonstrations from a Chinese training split with rephrases "
    "and locality questions, which the harness's data layout lacks; the registered Chinese training "
    "set is used instead"
)


def _published_f1(answer_ids, expected_ids, answer, expected) -> float:
    return token_f1_product(answer_ids, expected_ids)


SAMPLE = Path(__file__).parent / "sample" / "bizsre_sample_enzh_20.json"


@dataclass(frozen=True)
class BiZsRETask:
    edit_language: str
    properties: tuple[str, ...] = PROPERTIES
    template: str = "bizsre/question.jinja"
    languages: tuple[str, ...] = LANGUAGES
    protocol: str = HARNESS
    protocols = (HARNESS, PUBLISHED)

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

    def with_protocol(self, name: str) -> BiZsRETask:
        return replace(self, protocol=name)

    @property
    def published(self) -> bool:
        return self.protocol == PUBLISHED

    @property
    def metric_overrides(self) -> dict[str, Callable[..., float]]:
        return {"f1": _published_f1} if self.published else {}

    @property
    def reference_scoring_tokenizer(self) -> str:
        return PUBLISHED_TOKENIZER if self.published else ""

    def protocol_notes(self, data_dir: Path | None) -> list[str]:
        """Where a published-profile run cannot read what the published tables did."""
        if not self.published:
            return []
        found = [CHINESE_POOL_NOTE] if self.edit_language != "en" else []
        if data_dir is None:
            found.append("no data directory: the bundled sample of invented facts stands in for the test set")
        elif not (Path(data_dir) / PUBLISHED_DATA_FILES[0]).is_file():
            found.append(
                f"{PUBLISHED_DATA_FILES[0]} (the official 1,037 records) is not in the data directory; "
                f"read {self.data_files(data_dir)[0].name} instead"
            )
        return found

    def data_files(self, data_dir: Path | None) -> list[Path]:
        if data_dir is None:
            return [SAMPLE]
        names = PUBLISHED_DATA_FILES if self.published else DATA_FILES
        candidates = [Path(data_dir) / name for name in names]
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
            build_record(
                str(index),
                item,
                self.edit_language,
                self.languages,
                self.properties,
                render,
                keep_locality_marker=self.published,
            )
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
