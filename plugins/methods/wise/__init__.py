"""WISE (Wang et al., 2024): edits in a routed side memory, a copy of one MLP output matrix, written
in shards that are TIES-merged; the model's own weights are never changed."""

from harness.hookspecs import hookimpl
from harness_plugins.methods.wise.editor import WISE, WISEHparams

__all__ = ["WISE", "WISEHparams"]

# Per-model defaults, shipped the way a third-party editor ships them (the editor_defaults hook).
# gemma3-270m: chosen on validation records (tuning/README.md). The tiny random test models have 4
# layers: the side memory copies a middle one.
MODEL_DEFAULTS: dict[str, dict] = {
    "gemma3-270m": {"layer": 12},  # layers 4 and 8 generalised less, at the same locality
    "tiny-llama": {"layer": 2},
}


@hookimpl
def register_editors(register):
    register("wise", WISE)


@hookimpl
def editor_defaults(editor: str, model: str) -> dict | None:
    return MODEL_DEFAULTS.get(model) if editor == "wise" else None
