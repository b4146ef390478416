"""FT-L and FT-M: constrained and masked fine-tuning of MLP output matrices."""

from harness.hookspecs import hookimpl
from harness_plugins.methods.ft.editor import FT, FTM, FTHparams, FTMHparams

__all__ = ["FT", "FTM", "FTHparams", "FTMHparams"]

# Per-model defaults, shipped the way a third-party editor ships them (the editor_defaults hook).
# gemma3-270m: chosen on validation records (ZsRE train en / Bi-ZsRE validation zh), never the test
# file; the sweeps, their numbers and the selection rule are in tuning/README.md. The tiny random test
# models have 4 layers: editing a middle one keeps tests meaningful.
MODEL_DEFAULTS = {
    "gemma3-270m": {"layers": (11,)},
    "tiny-llama": {"layers": (1,)},
}


@hookimpl
def register_editors(register):
    register("ft-l", FT)
    register("ft-m", FTM)


@hookimpl
def editor_defaults(editor: str, model: str) -> dict | None:
    return MODEL_DEFAULTS.get(model) if editor in ("ft-l", "ft-m") else None
