"""MEMIT (Meng et al., 2023): many facts at once, spread over a range of MLP layers."""

from harness.hookspecs import hookimpl
from harness_plugins.methods.memit.editor import MEMIT, MEMITHparams

__all__ = ["MEMIT", "MEMITHparams"]


@hookimpl
def register_editors(register):
    register("memit", MEMIT)
