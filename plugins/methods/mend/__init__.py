"""MEND: a gradient-decomposition hypernetwork over the last MLP layers; needs `harness train`."""

from harness.hookspecs import hookimpl
from harness_plugins.methods.mend.editor import MEND, MENDHparams

__all__ = ["MEND", "MENDHparams"]


@hookimpl
def register_editors(register):
    register("mend", MEND)
