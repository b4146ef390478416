"""FT-L and FT-M: constrained and masked fine-tuning of MLP output matrices."""

from harness.hookspecs import hookimpl
from harness_plugins.methods.ft.editor import FT, FTM, FTHparams, FTMHparams

__all__ = ["FT", "FTM", "FTHparams", "FTMHparams"]


@hookimpl
def register_editors(register):
    register("ft-l", FT)
    register("ft-m", FTM)
