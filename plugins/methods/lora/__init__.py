"""LoRA (Hu et al., 2022) as an editor: a low-rank adapter trained on the new facts, via peft."""

from harness.hookspecs import hookimpl
from harness_plugins.methods.lora.editor import LoRA, LoRAHparams

__all__ = ["LoRA", "LoRAHparams"]

# Per-model defaults: the tiny random test models have 4 layers, so a middle one is adapted.
MODEL_DEFAULTS = {"tiny-llama": {"layers": (1,), "lr": 1e-2, "steps": 60}}


@hookimpl
def register_editors(register):
    register("lora", LoRA)


@hookimpl
def editor_defaults(editor: str, model: str) -> dict | None:
    return MODEL_DEFAULTS.get(model) if editor == "lora" else None
