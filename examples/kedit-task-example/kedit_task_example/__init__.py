"""example_capitals_{en,de}: six counterfactual capitals, edited in one language, probed in both.

The worked example of docs/writing-a-task.md. Each record of the bundled ``data/capitals.json`` has an
``id`` and one side per language with ``subject, question, rephrase, answer, unrelated,
unrelated_answer``. A task variant edits ``question -> answer`` in its edit language and probes
reliability there, then generality (the rephrase) and locality (an unrelated question, scored
against the unedited model's answer) in English and German. Probe prompts are rendered through the
package's own template, ``kedit_task_example/question.jinja``, registered with ``template_dirs``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.api import EditRequest, Probe, Record, ValidationIssue
from harness.hookspecs import hookimpl

HERE = Path(__file__).parent
DATA = HERE / "data" / "capitals.json"
LANGUAGES = ("en", "de")
FIELDS = ("subject", "question", "rephrase", "answer", "unrelated", "unrelated_answer")


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def record_issues(index: int, record: Any, edit_language: str) -> list[ValidationIssue]:
    """Every problem of one raw record, each naming the record (index and id) and the field."""
    if not isinstance(record, dict):
        return [ValidationIssue(index, "(record)", f"expected an object, got {type(record).__name__}")]
    which = f" (id {record['id']!r})" if _is_text(record.get("id")) else ""
    issues = [] if which else [ValidationIssue(index, "id", "missing or empty")]
    for lang in LANGUAGES:
        side = record.get(lang)
        if not isinstance(side, dict):
            issues.append(ValidationIssue(index, lang, f"missing language side{which}"))
            continue
        issues += [
            ValidationIssue(index, f"{lang}.{name}", f"missing or empty{which}")
            for name in FIELDS
            if not _is_text(side.get(name))
        ]
    edit = record.get(edit_language) if isinstance(record.get(edit_language), dict) else {}
    subject, question = edit.get("subject"), edit.get("question")
    if _is_text(subject) and _is_text(question) and subject not in question:
        # editors that locate the subject (ROME, MEMIT) need it in the edited prompt
        issues.append(ValidationIssue(index, f"{edit_language}.subject", f"not found in the question{which}"))
    return issues


@dataclass(frozen=True)
class CapitalsTask:
    """One variant per edit language; the fields below are what ``harness.api.Task`` asks for."""

    edit_language: str
    languages: tuple[str, ...] = LANGUAGES
    properties: tuple[str, ...] = ("reliability", "generality", "locality")
    template: str = "kedit_task_example/question.jinja"
    training_set: str = ""  # no training data: editors that learn cannot run on this task

    @property
    def name(self) -> str:
        return f"example_capitals_{self.edit_language}"

    @property
    def description(self) -> str:
        return f"six counterfactual capitals (example plugin): edit in {self.edit_language}, probe en and de"

    def data_files(self, data_dir: Path | None) -> list[Path]:
        """The bundled file; a data directory is not needed (its hash joins results.json)."""
        return [DATA]

    def load_raw(self, data_dir: Path | None) -> list[dict[str, Any]]:
        return json.loads(DATA.read_text(encoding="utf-8"))

    def validate(self, raw: list[dict[str, Any]]) -> list[ValidationIssue]:
        issues = [issue for i, item in enumerate(raw) for issue in record_issues(i, item, self.edit_language)]
        seen: dict[str, int] = {}
        for index, record in enumerate(raw):
            rid = record.get("id") if isinstance(record, dict) else None
            if _is_text(rid) and rid in seen:
                issues.append(ValidationIssue(index, "id", f"{rid!r} repeats record {seen[rid]}"))
            elif _is_text(rid):
                seen[rid] = index
        return sorted(issues, key=lambda issue: issue.index)

    def records(self, raw: list[dict[str, Any]], render: Callable[[str], str]) -> list[Record]:
        """The edit in the edit language and its probes, in a fixed order (``render`` fills the template)."""
        return [self._record(item, render) for item in raw]

    def _record(self, item: dict[str, Any], render: Callable[[str], str]) -> Record:
        edit = item[self.edit_language]
        request = EditRequest(
            prompt=render(edit["question"]),
            target=edit["answer"],
            subject=edit["subject"],
            language=self.edit_language,
            record_id=item["id"],
        )
        probes = [Probe("reliability", self.edit_language, request.prompt, request.target)]
        for lang in self.languages:
            side = item[lang]
            probes.append(Probe("generality", lang, render(side["rephrase"]), side["answer"]))
            probes.append(
                Probe(
                    "locality",
                    lang,
                    render(side["unrelated"]),
                    side["unrelated_answer"],
                    reference_is_pre_edit=True,  # scored against the unedited model's answer
                )
            )
        return Record(id=item["id"], request=request, probes=tuple(probes), raw=item)


@hookimpl
def register_tasks(register) -> None:
    """One task per edit language: ``example_capitals_en`` and ``example_capitals_de``."""
    for language in LANGUAGES:
        register(CapitalsTask(language))


@hookimpl
def template_dirs() -> list[str]:
    """The package's Jinja templates; names live under ``kedit_task_example/`` so none can clash."""
    return [str(HERE / "templates")]
