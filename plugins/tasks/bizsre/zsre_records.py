"""ZsRE-shaped records shared by the Bi-ZsRE and MzsRE families.

A raw record maps each language to one side with ``subject, src, rephrase, alt, loc, loc_ans`` and
``portability{"New Question", "New Answer"}``. Both families validate a side and turn a record into
an edit request and probes the same way; only which languages they probe differs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.api import EditRequest, Probe, Record, ValidationIssue

PROPERTIES = ("reliability", "generality", "locality", "portability")
FIELDS = ("subject", "src", "rephrase", "alt", "loc", "loc_ans")
PORTABILITY_FIELDS = ("New Question", "New Answer")
# Natural Questions locality prompts carry this marker; drop it as a prefix (the original code
# stripped it as a character set, which could eat the question's first letters).
LOC_PREFIX = "nq question: "


INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u200e\u200f\u2060\ufeff\u00ad"))
MAX_SUBJECT = 300  # characters: longer is not a subject but a paragraph (and costs unbounded time)


def _is_text(value: Any) -> bool:
    """A string with something visible in it (zero-width characters and soft hyphens do not count)."""
    return isinstance(value, str) and bool(value.translate(INVISIBLE).strip())


def record_issues(index: int, record: dict[str, Any], languages: tuple[str, ...]) -> list[ValidationIssue]:
    """Every missing or empty field of record ``index`` in ``languages``, named ``{lang}.{field}``."""
    issues: list[ValidationIssue] = []
    for lang in languages:
        side = record.get(lang)
        if not isinstance(side, dict):
            issues.append(ValidationIssue(index, lang, "missing language side"))
            continue
        issues += [
            ValidationIssue(index, f"{lang}.{name}", "missing or empty")
            for name in FIELDS
            if not _is_text(side.get(name))
        ]
        subject = side.get("subject")
        if isinstance(subject, str) and len(subject) > MAX_SUBJECT:
            issues.append(
                ValidationIssue(index, f"{lang}.subject", f"{len(subject)} characters; at most {MAX_SUBJECT}")
            )
        portability = side.get("portability")
        issues += [
            ValidationIssue(index, f"{lang}.portability.{name}", "missing or empty")
            for name in PORTABILITY_FIELDS
            if not _is_text(portability.get(name) if isinstance(portability, dict) else None)
        ]
    return issues


def build_record(
    record_id: str,
    item: dict[str, Any],
    edit_language: str,
    languages: tuple[str, ...],
    properties: tuple[str, ...],
    render: Callable[[str], str],
    keep_locality_marker: bool = False,
) -> Record:
    """The edit in ``edit_language`` and its probes: reliability in the edit language, then, per
    language of ``languages`` in order, generality, locality and portability (those in ``properties``).
    Locality questions lose their ``LOC_PREFIX`` marker unless ``keep_locality_marker``."""
    edit = item[edit_language]
    request = EditRequest(
        prompt=render(edit["src"]),
        target=edit["alt"],
        subject=edit["subject"],
        language=edit_language,
        record_id=record_id,
        targets=tuple((lang, item[lang]["alt"]) for lang in languages),
    )
    probes: list[Probe] = []
    if "reliability" in properties:
        probes.append(Probe("reliability", edit_language, request.prompt, edit["alt"]))
    for lang in languages:
        side = item[lang]
        if "generality" in properties:
            probes.append(Probe("generality", lang, render(side["rephrase"]), side["alt"]))
        if "locality" in properties:
            probes.append(
                Probe(
                    "locality",
                    lang,
                    render(side["loc"] if keep_locality_marker else side["loc"].removeprefix(LOC_PREFIX)),
                    side["loc_ans"],
                    reference_is_pre_edit=True,
                )
            )
        if "portability" in properties:
            port = side["portability"]
            probes.append(Probe("portability", lang, render(port["New Question"]), port["New Answer"]))
    return Record(id=record_id, request=request, probes=tuple(probes), raw=item)


def training_file(training_set: str, relative_path: str, data_dir: Path | None) -> Path:
    """``data_dir / relative_path``, or an error saying which training set needs which file."""
    if data_dir is None:
        raise FileNotFoundError(
            f"training set {training_set} needs a data directory holding {relative_path} "
            "(--data-dir or HARNESS_DATA_DIR)"
        )
    path = Path(data_dir) / relative_path
    if not path.is_file():
        raise FileNotFoundError(f"training set {training_set}: {path} does not exist")
    return path
