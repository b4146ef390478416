"""The built-in Jinja templates, registered through the same hook third-party template dirs use."""

from pathlib import Path

from harness.hookspecs import hookimpl


@hookimpl
def template_dirs() -> list[str]:
    return [str(Path(__file__).parent)]
