"""KN: integrated gradients find a neuron planted to carry the answer, add up to the probability
change, select by threshold, and the value-column edit is exact and restores bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch

from harness.answers import final_hidden, output_logits, prompt_ids, target_ids
from harness.api import EditorContext, EditRequest
from harness.models import architecture, cache_dir
from harness.weight_editing.keys import keys_at
from harness_plugins.methods.kn import KN, KNHparams, neuron_attributions
from harness_plugins.methods.kn.editor import answer_tokens, embedding_sum, select_neurons

PROMPT = "The capital of Vandoria is"


def _next_token_probabilities(model, tokenizer, prompt: str) -> torch.Tensor:
    ids = torch.tensor([prompt_ids(tokenizer, prompt)])
    with torch.no_grad():
        return output_logits(model, final_hidden(model, ids, torch.ones_like(ids))[0, -1]).softmax(-1)


def _last_key(model, tokenizer, layer: int) -> torch.Tensor:
    position = len(prompt_ids(tokenizer, PROMPT)) - 1
    return keys_at(model, tokenizer, [PROMPT], [position], architecture(model).mlp_out.format(layer))[0]


@pytest.fixture
def planted(tiny_llama):
    """Layer 2, unit j (the most active one) writes a large multiple of token t's output embedding."""
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    layer, token = 2, tokenizer.convert_tokens_to_ids("Z")
    key = _last_key(model, tokenizer, layer)
    unit = int(key.abs().argmax())
    weight = model.get_parameter(architecture(model).mlp_out_weight(layer))
    original = weight.detach().clone()
    direction = model.get_output_embeddings().weight[token]
    with torch.no_grad():
        weight[:, unit] = torch.sign(key[unit]) * 40.0 * direction / direction.norm()
    yield model, tokenizer, layer, unit, token
    with torch.no_grad():
        weight.copy_(original)


def test_a_neuron_forced_to_carry_the_answer_is_ranked_first(planted):
    model, tokenizer, layer, unit, token = planted
    assert int(_next_token_probabilities(model, tokenizer, PROMPT).argmax()) == token  # the planted answer
    names = [architecture(model).mlp_out.format(i) for i in range(model.config.num_hidden_layers)]
    scores = neuron_attributions(model, tokenizer, PROMPT, token, names, steps=20)
    assert scores.shape == (4, model.config.intermediate_size)
    best = divmod(int(scores.argmax()), scores.shape[1])
    assert best == (layer, unit)
    assert select_neurons(scores, 0.2, 1) == [(layer, unit)]


def test_attributions_add_up_to_the_probability_change(tiny_llama):
    """Completeness of integrated gradients: summed over a layer's units, the attributions equal
    p(token) with the layer's activation as is minus p(token) with it zeroed (up to the Riemann sum)."""
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    name = architecture(model).mlp_out.format(1)
    token = int(_next_token_probabilities(model, tokenizer, PROMPT).argmax())
    total = float(neuron_attributions(model, tokenizer, PROMPT, token, [name], steps=200).sum())
    last = len(prompt_ids(tokenizer, PROMPT)) - 1

    def zero_last(_module, args):
        inputs = args[0].clone()
        inputs[:, last] = 0
        return (inputs, *args[1:])

    handle = model.get_submodule(name).register_forward_pre_hook(zero_last)
    try:
        zeroed = float(_next_token_probabilities(model, tokenizer, PROMPT)[token])
    finally:
        handle.remove()
    full = float(_next_token_probabilities(model, tokenizer, PROMPT)[token])
    assert total == pytest.approx(full - zeroed, rel=0.05, abs=1e-6)


def test_selection_keeps_units_above_the_threshold_strongest_first():
    scores = torch.tensor([[0.1, 1.0, -3.0], [0.25, 0.15, 0.5]])
    assert select_neurons(scores, 0.2, 0) == [(0, 1), (1, 2), (1, 0)]
    assert select_neurons(scores, 0.2, 2) == [(0, 1), (1, 2)]
    assert select_neurons(-scores.abs(), 0.2, 0) == []  # nothing pushes the answer up: no edit


def test_kn_edit_shifts_exactly_the_chosen_value_columns_and_restores(planted):
    model, tokenizer, layer, unit, token = planted
    request = EditRequest(PROMPT, "Quito", "Vandoria", "en")
    editor = KN(KNHparams(layers=(1, 2, 3), max_neurons=3, steps=10))
    editor.prepare(model, tokenizer, EditorContext(cache_dir=cache_dir(), seed=0))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    edit = editor.apply(model, tokenizer, [request])
    chosen = [tuple(n) for n in edit.info["neurons"]]
    assert chosen[0] == (layer, unit) and len(chosen) <= 3
    assert edit.info["old_token"] == "Z"
    arch = architecture(model)
    embeddings = model.get_input_embeddings().weight
    new = target_ids(tokenizer, "Quito")[0]
    shift = 8.0 * embeddings[new] - 1.0 * embeddings[token]
    for name, param in model.named_parameters():
        expected = params[name].clone()
        for chosen_layer, chosen_unit in chosen:
            if name == arch.mlp_out_weight(chosen_layer):
                expected[:, chosen_unit] += shift
        torch.testing.assert_close(param, expected, rtol=0, atol=0)
    assert edit.touched == sorted({arch.mlp_out_weight(layer) for layer, _ in chosen})
    edit.restore()
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())


def test_kn_rejects_layers_outside_the_model(tiny_llama):
    editor = KN(KNHparams(layers=(1, 9)))
    with pytest.raises(ValueError, match=r"kn: layers=\(1, 9\) has \[9\] outside the model's 0\.\.3"):
        editor.prepare(tiny_llama.model, tiny_llama.tokenizer, EditorContext(cache_dir=cache_dir()))


def test_easyedit_attribution_with_one_step_is_the_gradient_at_a_zeroed_gate(tiny_llama):
    """EasyEdit's grid is linspace(0, 1, steps): with steps=1 the gate output at the last position is
    replaced by zeros, and the attribution is the clean activation times the gradient there."""
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    name = "model.layers.1.mlp.gate_proj"
    token = int(_next_token_probabilities(model, tokenizer, PROMPT).argmax())
    scores = neuron_attributions(model, tokenizer, PROMPT, token, [name], 1, "output", "linspace")
    ids = torch.tensor([prompt_ids(tokenizer, PROMPT)])
    clean = {}
    gate = model.get_submodule(name)
    handle = gate.register_forward_hook(lambda _m, _a, out: clean.setdefault("a", out[0, -1].detach()))
    with torch.no_grad():
        model(ids)
    handle.remove()
    zero = torch.zeros_like(clean["a"], requires_grad=True)

    def put_zero(_module, _args, output):
        output = output.clone()
        output[0, -1] = zero
        return output

    handle = gate.register_forward_hook(put_zero)
    try:
        probability = output_logits(model, final_hidden(model, ids, torch.ones_like(ids))[0, -1]).softmax(-1)
    finally:
        handle.remove()
    (gradient,) = torch.autograd.grad(probability[token], zero)
    torch.testing.assert_close(scores[0], clean["a"] * gradient, rtol=1e-5, atol=1e-9)


def test_easyedit_embedding_term_is_doubled_for_one_token_and_summed_for_several():
    embeddings = torch.tensor([[1.0, 2.0], [10.0, 20.0], [100.0, 200.0]])
    assert embedding_sum(embeddings, [1]).tolist() == [20.0, 40.0]
    assert embedding_sum(embeddings, [0, 2]).tolist() == [101.0, 202.0]
    assert embedding_sum(embeddings, [2, 2]).tolist() == [200.0, 400.0]


def test_kn_easyedit_shifts_the_chosen_gate_units_columns_by_target_minus_greedy_and_restores(tiny_llama):
    """Neurons: units of the gate output above 0.2 x the peak of the attributions to "<|endoftext|>"'s
    tokens (BOS first), token i after the prompt plus i greedy tokens. Shift: the target's tokens
    (special tokens included) minus as many greedy tokens, each embedding once (several tokens)."""
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    request = EditRequest(PROMPT, "Quito", "Vandoria", "en")
    editor = KN(KNHparams(variant="easyedit", layers=(1, 2)))
    assert editor.hparams.integration_steps == 1
    editor.prepare(model, tokenizer, EditorContext(cache_dir=cache_dir(), seed=0))
    assert editor.unit_modules(model) == ["model.layers.1.mlp.gate_proj", "model.layers.2.mlp.gate_proj"]
    attributed = prompt_ids(tokenizer, "<|endoftext|>")
    new = prompt_ids(tokenizer, "Quito")
    assert attributed[0] == new[0] == tokenizer.bos_token_id and len(new) == 6  # bytes, BOS first
    ids = torch.tensor([prompt_ids(tokenizer, PROMPT)])
    steps = max(len(attributed), len(new))
    greedy = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=steps)
    greedy = greedy[0, ids.shape[1] :].tolist()
    texts = [PROMPT + tokenizer.decode(greedy[:i]) for i in range(len(attributed))]
    names = editor.unit_modules(model)
    scores = torch.stack(
        [
            neuron_attributions(model, tokenizer, text, token, names, 1, "output", "linspace")
            for text, token in zip(texts, attributed, strict=True)
        ]
    ).mean(0)
    expected_neurons = {(1 + row, unit) for row, unit in select_neurons(scores, 0.2, 0)}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    edit = editor.apply(model, tokenizer, [request])
    chosen = {tuple(n) for n in edit.info["neurons"]}
    assert chosen == expected_neurons and chosen
    embeddings = params["model.embed_tokens.weight"]
    shift = embeddings[new].sum(0) - embeddings[greedy[: len(new)]].sum(0)
    arch = architecture(model)
    for name, param in model.named_parameters():
        expected = params[name].clone()
        for layer, unit in chosen:
            if name == arch.mlp_out_weight(layer):
                expected[:, unit] += shift
        torch.testing.assert_close(param, expected, rtol=0, atol=0)
    edit.restore()
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())


def test_kn_easyedit_refuses_paper_only_settings():
    with pytest.raises(ValueError, match="belong to variant=paper"):
        KNHparams(variant="easyedit", enhance=2.0)
    with pytest.raises(ValueError, match="variant must be one of"):
        KNHparams(variant="rome")


def test_the_current_answer_is_never_an_added_control_token(tiny_llama):
    """Gemma 3 ranks its unflagged ``<start_of_image>`` first after some questions; KN then edited
    the neurons of an image marker and wrecked locality (0 F1 on the demo model)."""
    tokenizer = copy.deepcopy(tiny_llama.tokenizer)
    tokenizer.add_tokens(["<start_of_image>"])  # added, not special, as in Gemma 3's tokenizer
    (marker,) = tokenizer.convert_tokens_to_ids(["<start_of_image>"])
    word = tokenizer("Paris", add_special_tokens=False).input_ids[0]
    space = tokenizer(" ", add_special_tokens=False).input_ids[-1]
    special = tokenizer.eos_token_id
    assert answer_tokens(tokenizer, [marker, special, space, word]) == [word]
