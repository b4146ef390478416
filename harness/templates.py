"""The Jinja environment (StrictUndefined) over every template directory plugins provide."""

from __future__ import annotations

import hashlib
from functools import cached_property

import jinja2

from harness import plugins


class Templates:
    """Renders named templates and remembers the hash of each one used, for results.json."""

    def __init__(self, directories: list[str] | None = None):
        self.directories = directories if directories is not None else plugins.template_dirs()
        self.used: dict[str, str] = {}

    @cached_property
    def environment(self) -> jinja2.Environment:
        return jinja2.Environment(
            loader=jinja2.FileSystemLoader(self.directories),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
            autoescape=False,
        )

    def _template(self, name: str) -> jinja2.Template:
        try:
            template = self.environment.get_template(name)
        except jinja2.TemplateNotFound:
            raise ValueError(f"template {name!r} not found in {self.directories}") from None
        if name not in self.used:
            source, _, _ = self.environment.loader.get_source(self.environment, name)
            self.used[name] = hashlib.sha256(source.encode()).hexdigest()
        return template

    def hash(self, name: str) -> str:
        """SHA-256 of a template's source, recorded as used (before anything is rendered with it)."""
        self._template(name)
        return self.used[name]

    def render(self, name: str, **fields) -> str:
        return self._template(name).render(**fields)
