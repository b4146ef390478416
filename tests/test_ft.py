"""FT-L / FT-M on the tiny random models: the L-infinity ball, exact restore, FT-M reliability."""

from __future__ import annotations

import pytest
import torch

from harness import plugins
from harness.answers import teacher_forced
from harness.api import EditorContext, EditRequest
from harness.models import architecture
from harness_plugins.methods.ft import FT, FTM, FTHparams, FTMHparams

REQUEST = EditRequest(prompt="The capital of Zembla is", target="Paris", subject="Zembla", language="en")


def params(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def run(editor, lm, tmp_path, requests=(REQUEST,)):
    editor.prepare(lm.model, lm.tokenizer, EditorContext(cache_dir=tmp_path))
    return editor.apply(lm.model, lm.tokenizer, list(requests))


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])  # GPT-2: transposed Conv1D weights
def test_ft_l_stays_in_linf_ball_and_touches_only_its_weights(request, tmp_path, fixture):
    lm = request.getfixturevalue(fixture)
    before = params(lm.model)
    eps = 5e-4
    hparams = FTHparams(layers=(1, 2), steps=10, lr=1e-2, norm_constraint=eps, stop_loss=0.0)
    edit = run(FT(hparams), lm, tmp_path)
    try:
        touched = [architecture(lm.model).mlp_out_weight(layer) for layer in (1, 2)]
        assert edit.touched == sorted(touched)
        assert edit.info["steps"] == 10
        after = dict(lm.model.named_parameters())
        for weight_name in touched:
            delta = (after[weight_name] - before[weight_name]).abs()
            assert delta.max() <= eps + 1e-7
            assert delta.max() > 0
        unchanged = [n for n in before if n not in touched]
        assert all(torch.equal(after[n], before[n]) for n in unchanged)
        assert not any(p.requires_grad for p in lm.model.parameters())
    finally:
        edit.restore()


@pytest.mark.parametrize("editor_class", [FT, FTM])
def test_restore_is_bit_exact(tiny_llama, tmp_path, editor_class):
    lm = tiny_llama
    before = params(lm.model)
    hparams = editor_class.hparams_class(layers=(0, 3), steps=5, lr=1e-2)
    edit = run(editor_class(hparams), lm, tmp_path, [REQUEST, EditRequest("Snow is", "green", "Snow", "en")])
    assert any(not torch.equal(p, before[n]) for n, p in lm.model.named_parameters())
    edit.restore()
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())


def test_ft_m_makes_teacher_forced_answer_the_target(tiny_llama, tmp_path):
    lm = tiny_llama
    pair = [(REQUEST.prompt, REQUEST.target)]
    assert teacher_forced(lm.model, lm.tokenizer, pair)[0].text.strip() != REQUEST.target
    initial = run(FTM(FTMHparams(layers=(1, 2), steps=0)), lm, tmp_path).info["final_loss"]
    edit = run(FTM(FTMHparams(layers=(1, 2), steps=50, lr=1e-2)), lm, tmp_path)
    try:
        assert edit.info["final_loss"] < initial
        assert teacher_forced(lm.model, lm.tokenizer, pair)[0].text.strip() == REQUEST.target
    finally:
        edit.restore()


def test_both_names_register_with_their_defaults():
    editors = plugins.editors()
    assert editors["ft-l"].hparams_class().objective == "last_position"
    assert editors["ft-l"].hparams_class().norm_constraint == 5e-4
    assert editors["ft-m"].hparams_class().objective == "masked"
    assert editors["ft-m"].hparams_class().norm_constraint == 0.0
    assert editors["ft-l"].capabilities.batch and editors["ft-m"].capabilities.batch


def test_bad_layer_and_bad_objective_are_rejected(tiny_llama, tmp_path):
    lm = tiny_llama
    with pytest.raises(ValueError, match="layers"):
        FT(FTHparams(layers=(4,))).prepare(lm.model, lm.tokenizer, EditorContext(cache_dir=tmp_path))
    with pytest.raises(ValueError, match="objective"):
        FTHparams(objective="sideways")
