"""``harness new editor|task NAME``: write a plugin package that installs, registers and passes its test.

The package is rendered from the Jinja templates under ``harness/scaffold/<kind>/``: every
``*.jinja`` file there becomes the same path without the suffix, with ``__module__`` in a path
replaced by the module name. The generated code is a small working plugin to change, not a stub.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import jinja2

KINDS = ("editor", "task")
TEMPLATES = Path(__file__).parent / "scaffold"
MODULE_PLACEHOLDER = "__module__"
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")


class ScaffoldError(ValueError):
    """A name or target directory ``harness new`` refuses; the message names the argument."""


@dataclass(frozen=True)
class Names:
    """Every spelling of one plugin name the templates need."""

    name: str  # as given on the command line
    package: str  # distribution: kedit-<name>
    module: str  # import name and entry-point name: kedit_<name with underscores>
    registered: str  # what `harness ls` shows: the name for an editor, underscored for a task
    class_name: str  # CamelCase, for the editor or task class


def plugin_names(kind: str, name: str) -> Names:
    """The spellings of ``name`` for a plugin of ``kind``, or a ScaffoldError saying what is wrong."""
    if kind not in KINDS:
        raise ScaffoldError(f"kind {kind!r}: choose one of {', '.join(KINDS)}")
    if not NAME_PATTERN.fullmatch(name):
        raise ScaffoldError(
            f"NAME {name!r} is not a valid plugin name: use lowercase letters and digits, starting with a "
            "letter, with single '-' or '_' between words (e.g. my-editor)"
        )
    underscored = name.replace("-", "_")
    return Names(
        name=name,
        package=f"kedit-{name.replace('_', '-')}",
        module=f"kedit_{underscored}",
        registered=name if kind == "editor" else underscored,
        class_name="".join(part.capitalize() for part in re.split(r"[-_]", name)),
    )


def _check_target(directory: Path) -> None:
    """Refuse a target that is a file or a directory with something in it (nothing is overwritten)."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ScaffoldError(f"{directory} exists and is not an empty directory; choose another with --dir")


def _output_path(template: Path, module: str) -> Path:
    parts = [part.replace(MODULE_PLACEHOLDER, module) for part in template.with_suffix("").parts]
    return Path(*parts)


def scaffold(kind: str, name: str, directory: Path | None = None) -> list[Path]:
    """Write the ``kind`` package for ``name`` into ``directory`` (default ``./kedit-<name>``).

    Returns the files written, in order. Nothing is written when the name or directory is refused.
    """
    names = plugin_names(kind, name)
    target = Path(directory) if directory is not None else Path.cwd() / names.package
    _check_target(target)
    source = TEMPLATES / kind
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(source)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    written = []
    for template in sorted(source.rglob("*.jinja")):
        relative = template.relative_to(source)
        text = environment.get_template(relative.as_posix()).render(kind=kind, **asdict(names))
        path = target / _output_path(relative, names.module)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
