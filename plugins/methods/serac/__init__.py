"""SERAC: edit memory, scope classifier and counterfactual model (see editor.py); needs `harness train`."""

from harness.hookspecs import hookimpl
from harness_plugins.methods.serac.editor import SERAC, SERACHparams

__all__ = ["SERAC", "SERACHparams"]


@hookimpl
def register_editors(register):
    register("serac", SERAC)
