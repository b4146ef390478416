"""IKE (Zheng et al., 2023): in-context editing with retrieved demonstrations."""

from harness.hookspecs import hookimpl
from harness_plugins.methods.ike.editor import IKE, IKEHparams

__all__ = ["IKE", "IKEHparams"]


@hookimpl
def register_editors(register):
    register("ike", IKE)
