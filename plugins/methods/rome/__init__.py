"""ROME (Meng et al., 2022): a rank-one update of one MLP output matrix."""

from harness.hookspecs import hookimpl
from harness_plugins.methods.rome.editor import ROME, ROMEHparams

__all__ = ["ROME", "ROMEHparams"]


@hookimpl
def register_editors(register):
    register("rome", ROME)
