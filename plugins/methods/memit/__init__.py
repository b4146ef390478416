"""MEMIT (Meng et al., 2023): many facts at once, spread over a range of MLP layers."""

from harness.hookspecs import hookimpl
from harness_plugins.methods.memit.editor import MEMIT, MEMITHparams

__all__ = ["MEMIT", "MEMITHparams"]

# Per-model defaults, shipped the way a third-party editor ships them (the editor_defaults hook).
# gemma3-270m: chosen on validation records (ZsRE train en / Bi-ZsRE validation zh), never the test
# file; the sweeps, their numbers and the selection rule are in tuning/README.md. The tiny random test
# models have 4 layers: editing a middle one keeps tests meaningful.
MODEL_DEFAULTS = {
    "gemma3-270m": {
        "layers": (2, 3, 4),
        "update_weight": 500.0,  # lambda; 5000 and more left most edits unwritten on this model (d_ff 2048)
        "contexts_per_length": 5,
    },
    "tiny-llama": {"layers": (1, 2)},
}


@hookimpl
def register_editors(register):
    register("memit", MEMIT)


@hookimpl
def editor_defaults(editor: str, model: str) -> dict | None:
    return MODEL_DEFAULTS.get(model) if editor == "memit" else None
