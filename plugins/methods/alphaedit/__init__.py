"""AlphaEdit (Fang et al., 2025): MEMIT with every update projected onto the null space of the keys
whose answers must stay, and a memory of the earlier edits' keys in sequential runs."""

from harness.hookspecs import hookimpl
from harness_plugins.methods.alphaedit.editor import AlphaEdit, AlphaEditHparams

__all__ = ["AlphaEdit", "AlphaEditHparams"]

# Per-model defaults, shipped the way a third-party editor ships them (the editor_defaults hook).
# gemma3-270m: MEMIT's layers and contexts; the null space and l2 chosen on validation records, never
# the test file (tuning/README.md). The tiny random test models have 4 layers.
MODEL_DEFAULTS = {
    "gemma3-270m": {
        "layers": (2, 3, 4),
        "contexts_per_length": 5,
        "null_space_threshold": 1e-3,  # about 1,700 of 2,048 directions; 1e-4 wrote fewer rephrases
        "l2": 1.0,  # 10 left every edit unwritten with the smaller null space
    },
    "tiny-llama": {"layers": (1, 2)},
}


@hookimpl
def register_editors(register):
    register("alphaedit", AlphaEdit)


@hookimpl
def editor_defaults(editor: str, model: str) -> dict | None:
    return MODEL_DEFAULTS.get(model) if editor == "alphaedit" else None
