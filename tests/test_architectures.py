"""Each supported architecture, as a tiny random model: ROME, MEMIT and FT-M edits land (the new
target's probability rises), KN writes exactly the value columns it chose, and restore gives back
every weight bit for bit; an unknown model type names the missing map and how a plugin adds one.

The tiny models' weights have the usual initial scale (std 0.02), at which every hidden state gives a
near-uniform next-token distribution that no edit can move; the fixture scales the matrices by 8 so
the random model is confident and an edit's effect shows in the target's probability.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from harness import plugins
from harness.answers import TargetBatch, target_ids
from harness.api import EditorContext, EditRequest
from harness.config import build
from harness.hookspecs import hookimpl
from harness.models import ARCHITECTURES, Architecture, architecture, cache_dir, load_model
from harness_plugins.methods.kn.editor import current_answer_token

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3", "gpt2", "gptj"]
MODEL_TYPES = {"gemma3": "gemma3_text"}
REQUEST = EditRequest("The capital of Zorbania is", "Lunaris", "Zorbania", "en", "r0")
# random weights: no clamp, decay or drift term, so the value optimisation can reach the target
VALUE = {
    "steps": 20,
    "contexts_per_length": 0,
    "clamp_norm_factor": 1e6,
    "weight_decay": 0.0,
    "kl_factor": 0.0,
}
EDITORS = {
    "rome": {"layer": 1, **VALUE},
    "memit": {"layers": (1, 2), "second_moments": False, "update_weight": 1e-3, **VALUE},
    "ft-m": {"layers": (1,), "steps": 10, "lr": 1e-2},
    "kn": {"layers": (2, 3), "steps": 4},
}


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, harness_cache):
    lm = load_model(f"tiny-{request.param}", plugins.models())
    with torch.no_grad():
        for parameter in lm.model.parameters():
            if parameter.dim() >= 2:
                parameter.mul_(8)
    return lm


def _target_nll(lm) -> float:
    batch = TargetBatch.of(lm.tokenizer, [(REQUEST.prompt, REQUEST.target)], lm.runtime.device)
    with torch.no_grad():
        return batch.nll_per_pair(lm.model).item()


def _first_token_probability(lm) -> float:
    ids = lm.tokenizer(REQUEST.prompt, return_tensors="pt").input_ids.to(lm.runtime.device)
    first = lm.tokenizer(" " + REQUEST.target, add_special_tokens=False).input_ids[0]
    with torch.no_grad():
        return lm.model(input_ids=ids).logits[0, -1].float().softmax(-1)[first].item()


def test_model_type_has_a_map(tiny):
    assert tiny.model.config.model_type in ARCHITECTURES
    arch = architecture(tiny.model)
    tiny.model.get_parameter(arch.mlp_out_weight(0))  # the map names real modules
    tiny.model.get_submodule(arch.layer(3))


def _editor(name: str):
    editor_class = plugins.lookup("editor", name, plugins.editors())
    editor = editor_class(build(editor_class.hparams_class, EDITORS[name], name))
    return editor


def _prepared(lm, name: str):
    editor = _editor(name)
    editor.prepare(lm.model, lm.tokenizer, EditorContext(cache_dir=cache_dir(), languages=("en",)))
    return editor


@pytest.mark.parametrize("name", ["ft-m", "memit", "rome"])
def test_edit_lands_and_restores_bit_exactly(tiny, name):
    before = {n: p.detach().clone() for n, p in tiny.model.named_parameters()}
    unedited = _target_nll(tiny)
    edit = _prepared(tiny, name).apply(tiny.model, tiny.tokenizer, [REQUEST])
    edited = _target_nll(tiny)
    edit.restore()
    assert edited < unedited - 0.1, f"{name} on {tiny.model.config.model_type}: NLL {unedited} -> {edited}"
    for parameter_name, parameter in tiny.model.named_parameters():
        assert torch.equal(parameter, before[parameter_name]), parameter_name


def test_kn_writes_exactly_its_value_columns(tiny):
    """KN adds enhance x embedding(new) - erase x embedding(old) to the value column of each chosen
    neuron: column j of the output matrix, row j of GPT-2's transposed Conv1D."""
    arch = architecture(tiny.model)
    before = {n: p.detach().clone() for n, p in tiny.model.named_parameters()}
    editor = _prepared(tiny, "kn")
    old = current_answer_token(tiny.model, tiny.tokenizer, REQUEST.prompt)
    edit = editor.apply(tiny.model, tiny.tokenizer, [REQUEST])
    embeddings = tiny.model.get_input_embeddings().weight
    new = target_ids(tiny.tokenizer, REQUEST.target)[0]
    shift = editor.hparams.enhance * embeddings[new] - editor.hparams.erase * embeddings[old]
    chosen = [tuple(n) for n in edit.info["neurons"]]
    assert chosen
    expected = {n: p.clone() for n, p in before.items()}
    for layer, unit in chosen:
        weight = expected[arch.mlp_out_weight(layer)]
        if arch.transposed:
            weight[unit] += shift
        else:
            weight[:, unit] += shift
    for parameter_name, parameter in tiny.model.named_parameters():
        torch.testing.assert_close(parameter, expected[parameter_name], rtol=0, atol=1e-6)
    edit.restore()
    for parameter_name, parameter in tiny.model.named_parameters():
        assert torch.equal(parameter, before[parameter_name]), parameter_name


def test_kn_edit_lands_on_a_plain_gelu_mlp(harness_cache):
    """On GPT-2's ungated MLP the strongly activated neurons are positive, as the KN paper assumes, so
    writing the new answer's embedding into their columns raises its probability. (In gated MLPs a
    neuron's activation can be negative, and the same write can push the answer away.)"""
    lm = load_model("tiny-gpt2", plugins.models())
    with torch.no_grad():
        for parameter in lm.model.parameters():
            if parameter.dim() >= 2:
                parameter.mul_(8)
    unedited = _first_token_probability(lm)
    edit = _prepared(lm, "kn").apply(lm.model, lm.tokenizer, [REQUEST])
    edited = _first_token_probability(lm)
    edit.restore()
    assert edited > 10 * unedited


def test_unknown_model_type_names_the_hook(register_plugin):
    stranger = SimpleNamespace(config=SimpleNamespace(model_type="stranger-lm"))
    with pytest.raises(
        ValueError, match="no architecture map for model_type 'stranger-lm'.*register_architectures"
    ):
        architecture(stranger)

    class Plugin:
        @hookimpl
        def register_architectures(self, register):
            register("stranger-lm", Architecture(layers="body.blocks", mlp_out="body.blocks.{}.ffn.out"))

    register_plugin(Plugin())
    assert architecture(stranger).mlp_out_weight(2) == "body.blocks.2.ffn.out.weight"
