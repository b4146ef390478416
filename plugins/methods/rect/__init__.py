"""RECT (Gu et al., 2024): a weight editor's update kept only where it changes a weight most, relative
to its value. Registered as ``rect-<editor>`` for the built-in weight editors; a third-party plugin
wraps its own with ``with_rect``."""

from harness import plugins
from harness.hookspecs import hookimpl
from harness_plugins.methods.ft import FT, FTM
from harness_plugins.methods.memit import MEMIT
from harness_plugins.methods.rect.editor import hparams_with_rect, with_rect
from harness_plugins.methods.rome import ROME

__all__ = ["hparams_with_rect", "with_rect"]

WRAPPED = {"rome": ROME, "memit": MEMIT, "ft-l": FT, "ft-m": FTM}
PREFIX = "rect-"


@hookimpl
def register_editors(register):
    for name, editor_class in WRAPPED.items():
        register(PREFIX + name, with_rect(editor_class))


@hookimpl
def editor_defaults(editor: str, model: str) -> dict | None:
    """The wrapped editor's per-model defaults: RECT changes what is kept, not where it edits."""
    base = editor.removeprefix(PREFIX)
    return plugins.editor_defaults(base, model) if editor.startswith(PREFIX) and base in WRAPPED else None
