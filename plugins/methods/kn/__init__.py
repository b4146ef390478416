"""Knowledge neurons (Dai et al., 2022): attribute the answer to MLP neurons, rewrite their value columns."""

from harness.hookspecs import hookimpl
from harness_plugins.methods.kn.editor import KN, KNHparams, neuron_attributions

__all__ = ["KN", "KNHparams", "neuron_attributions"]

# No per-model defaults: on gemma3-270m no swept setting kept locality without writing nothing, so KN
# runs with the paper's settings (tuning/README.md).


@hookimpl
def register_editors(register):
    register("kn", KN)
