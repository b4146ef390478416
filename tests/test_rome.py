"""ROME's math: the rank-one write hits its key exactly, leaves orthogonal directions alone, restores."""

from __future__ import annotations

import pytest
import torch

from harness import plugins
from harness.api import Edit, EditorContext, EditRequest, RestoreError
from harness.model_text import context_prefixes
from harness.models import architecture, cache_dir
from harness.weight_editing.keys import keys_at, subject_last_token
from harness.weight_editing.updates import rank_one_update
from harness.weight_editing.values import (
    ValueObjective,
    _pack,
    essence_position,
    optimise_values,
    subject_goals,
)
from harness_plugins.methods.rome import ROME, ROMEHparams


def _orthogonal_to(u: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(u.shape, generator=generator, dtype=u.dtype)
    return x - (x @ u) / (u @ u) * u


@pytest.mark.parametrize("use_moment", [False, True])
@pytest.mark.parametrize("transposed", [False, True])
def test_rank_one_update_writes_key_and_spares_orthogonal_directions(use_moment, transposed):
    g = torch.Generator().manual_seed(0)
    d, d_ff = 8, 16
    weight = torch.randn(d, d_ff, generator=g, dtype=torch.float64)
    key, delta = (
        torch.randn(d_ff, generator=g, dtype=torch.float64),
        torch.randn(d, generator=g, dtype=torch.float64),
    )
    direction = None
    if use_moment:
        a = torch.randn(d_ff, d_ff, generator=g, dtype=torch.float64)
        direction = torch.linalg.solve(a @ a.T + torch.eye(d_ff, dtype=torch.float64), key)
    stored = weight.T.clone() if transposed else weight.clone()
    rank_one_update(stored, key, delta, direction, transposed=transposed)
    new = stored.T if transposed else stored
    target = weight @ key + delta  # v* = W k* + delta
    torch.testing.assert_close(new @ key, target, rtol=0, atol=1e-12)
    u = key if direction is None else direction
    for _ in range(3):
        x = _orthogonal_to(u, g)
        torch.testing.assert_close(new @ x, weight @ x, rtol=0, atol=1e-12)
    assert torch.linalg.matrix_rank(new - weight) == 1


def _params(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.fixture
def rome_edit(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    editor = ROME(ROMEHparams(layer=1, steps=5, contexts_per_length=2))
    editor.prepare(model, tokenizer, EditorContext(cache_dir=cache_dir(), seed=0))
    request = EditRequest("Which city is Zorvik Tower in?", "Lisbon", "Zorvik Tower", "en")
    before = _params(model)
    edit = editor.apply(model, tokenizer, [request])
    yield model, tokenizer, editor, request, before, edit
    edit.restore()


def test_rome_touches_one_matrix_with_a_rank_one_change_along_the_subject_key(rome_edit):
    model, tokenizer, editor, request, before, edit = rome_edit
    arch = architecture(model)
    weight_name = arch.mlp_out_weight(1)
    after = _params(model)
    assert edit.touched == [weight_name]
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed == [weight_name]
    # recompute k* independently: the key averaged over the same cached context prefixes
    prefixes = context_prefixes(model, tokenizer, "en", 0, cache_dir(), [(5, 2), (10, 2)])
    texts = [p + request.prompt for p in prefixes]
    positions = [subject_last_token(tokenizer, t, request.subject) for t in texts]
    key = keys_at(model, tokenizer, texts, positions, arch.mlp_out.format(1)).mean(0)
    change = (after[weight_name] - before[weight_name]).double()
    assert torch.linalg.matrix_rank(change, rtol=1e-5) == 1
    g = torch.Generator().manual_seed(1)
    x = _orthogonal_to(key.double(), g)
    assert (change @ x).abs().max() < 1e-6 * change.abs().max()
    delta = change @ key.double()
    assert float(delta.norm()) == pytest.approx(edit.info["delta_norm"], rel=1e-4)
    clamp = editor.hparams.clamp_norm_factor * float((before[weight_name] @ key).norm())
    assert float(delta.norm()) <= clamp * (1 + 1e-5)


@pytest.mark.parametrize("editor_name, update_key", [("r-rome", "averaged"), ("rome", "plain")])
def test_the_write_is_exact_for_its_own_key_and_only_for_it(editor_name, update_key, tiny_llama):
    """r-ROME writes W' k* = W k* + delta for the averaged key k* the value was optimised for; ROME's
    reference write makes the plain prompt's key exact instead (same delta, same direction)."""
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    editor = plugins.editors()[editor_name](
        ROMEHparams(layer=1, steps=5, contexts_per_length=2, update_key=update_key)
    )
    editor.prepare(model, tokenizer, EditorContext(cache_dir=cache_dir(), seed=0))
    request = EditRequest("Which city is Zorvik Tower in?", "Lisbon", "Zorvik Tower", "en")
    name = architecture(model).mlp_out_weight(1)
    before = model.get_parameter(name).detach().double()
    with editor.apply(model, tokenizer, [request]) as edit:
        change = model.get_parameter(name).detach().double() - before
    prefixes = context_prefixes(model, tokenizer, "en", 0, cache_dir(), [(5, 2), (10, 2)])
    texts = [p + request.prompt for p in prefixes]  # the plain prompt first
    positions = [subject_last_token(tokenizer, t, request.subject) for t in texts]
    keys = keys_at(model, tokenizer, texts, positions, architecture(model).mlp_out.format(1)).double()
    averaged, plain = keys.mean(0), keys[0]
    exact, other = (averaged, plain) if update_key == "averaged" else (plain, averaged)
    delta_norm = edit.info["delta_norm"]
    assert float((change @ exact).norm()) == pytest.approx(delta_norm, rel=1e-4)
    assert abs(float((change @ other).norm()) - delta_norm) > 1e-3 * delta_norm
    assert torch.linalg.matrix_rank(change, rtol=1e-5) == 1


def test_r_rome_refuses_the_reference_write():
    with pytest.raises(ValueError, match="r-ROME writes the averaged key"):
        plugins.editors()["r-rome"](ROMEHparams(update_key="plain")).prepare(None, None, EditorContext(None))


def test_restore_is_bit_exact(rome_edit):
    model, _, _, _, before, edit = rome_edit
    edit.restore()
    after = _params(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    edit.restore()  # idempotent
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_restore_fails_loudly_when_weights_do_not_come_back(tiny_llama):
    model = tiny_llama.model
    name = architecture(model).mlp_out_weight(0)
    edit = Edit.snapshot(model, [name])
    original = edit.originals[name].clone()
    edit.originals[name][0, 0] = float("nan")  # NaN != NaN: the copy cannot verify
    with pytest.raises(RestoreError, match=name.replace(".", r"\.")):
        edit.restore()
    with torch.no_grad():
        model.get_parameter(name).copy_(original)


def test_subject_last_token_uses_offsets(tiny_llama):
    tokenizer = tiny_llama.tokenizer  # byte-level: one token per byte, BOS first
    text = "Where is Zorvik Tower?"
    index = subject_last_token(tokenizer, text, "Zorvik Tower")
    assert index == 1 + text.index("Tower") + len("Tower") - 1
    assert subject_last_token(tokenizer, text, "zorvik tower") == index  # case-insensitive fallback
    with pytest.raises(ValueError, match="not found"):
        subject_last_token(tokenizer, text, "Eiffel")


def _goal(tokenizer, request: EditRequest, norm: float = 1.0):
    (goal,) = subject_goals([request], [(request.prompt,)], [norm])
    return goal


def test_kl_is_held_at_the_essence_prompts_end_or_its_subjects_last_token(tiny_llama):
    tokenizer = tiny_llama.tokenizer  # byte-level: one token per byte, BOS first
    goal = _goal(tokenizer, EditRequest("Which city is Zorvik Tower in?", "Lisbon", "Zorvik Tower", "en"))
    assert goal.essence_prompt == "Zorvik Tower is a"
    assert essence_position(tokenizer, goal, "prompt_end") == len("Zorvik Tower is a")  # BOS + 17 - 1
    assert essence_position(tokenizer, goal, "subject_last") == len("Zorvik Tower")  # BOS + 12 - 1
    for where, column in (("prompt_end", 17), ("subject_last", 12)):
        assert _pack(tokenizer, [goal], torch.device("cpu"), where).essence_cols.tolist() == [column]


def test_early_stop_watches_the_nll_or_the_total_loss(tiny_llama):
    """The first Adam step does not depend on the weight decay (its gradient at delta = 0 is 0), so
    the NLL after it is the same with and without decay; a stop_loss just above it ends the NLL rule at
    step 2, while the total (NLL + a large decay) stays above it and runs to the last step."""
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    goal = _goal(tokenizer, EditRequest("Which city is Zorvik Tower in?", "Lisbon", "Zorvik Tower", "en"))
    name = architecture(model).mlp_out.format(1)
    free = dict(lr=0.1, kl_factor=0.0, clamp_norm_factor=1e6)
    (plain,) = optimise_values(
        model, tokenizer, [goal], name, ValueObjective(steps=2, weight_decay=0.0, stop_loss=0.0, **free)
    )
    nll_1, nll_2 = plain.losses
    stop = nll_2 * 1.001
    assert nll_1 > stop
    decayed = dict(steps=3, weight_decay=100.0, stop_loss=stop, **free)
    (by_nll,) = optimise_values(model, tokenizer, [goal], name, ValueObjective(stop_on="nll", **decayed))
    (by_total,) = optimise_values(model, tokenizer, [goal], name, ValueObjective(stop_on="total", **decayed))
    assert by_nll.steps == 2 and by_nll.losses[1] > stop  # its total was above: the NLL stopped it
    assert by_total.steps == 3
    assert by_nll.losses[:2] == by_total.losses[:2]


@pytest.mark.parametrize("value_norm", ["averaged_key", "prompt_output"])
def test_rome_clamp_is_relative_to_the_chosen_value_norm(tiny_llama, value_norm):
    """A tight clamp binds: ||delta|| ends exactly at clamp_norm_factor x ||v0||, v0 = W k* (k* the
    key averaged over contexts) or the MLP output at the plain prompt's subject token."""
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    request = EditRequest("Which city is Zorvik Tower in?", "Lisbon", "Zorvik Tower", "en")
    arch = architecture(model)
    mlp = arch.mlp_out.format(1)
    prefixes = context_prefixes(model, tokenizer, "en", 0, cache_dir(), [(5, 2), (10, 2)])
    texts = [p + request.prompt for p in prefixes]
    positions = [subject_last_token(tokenizer, t, request.subject) for t in texts]
    key = keys_at(model, tokenizer, texts, positions, mlp).mean(0)
    weight = model.get_parameter(arch.mlp_out_weight(1))
    seen = {}
    handle = model.get_submodule(mlp).register_forward_hook(lambda _m, _a, out: seen.setdefault("v", out))
    with torch.no_grad():
        model(torch.tensor([tokenizer(request.prompt).input_ids]))
    handle.remove()
    v0 = {"averaged_key": weight.detach() @ key, "prompt_output": seen["v"][0, positions[0]]}[value_norm]
    hparams = ROMEHparams(
        layer=1, steps=2, contexts_per_length=2, clamp_norm_factor=0.01, value_norm=value_norm
    )
    editor = ROME(hparams)
    editor.prepare(model, tokenizer, EditorContext(cache_dir=cache_dir(), seed=0))
    with editor.apply(model, tokenizer, [request]) as edit:
        assert edit.info["delta_norm"] == pytest.approx(0.01 * float(v0.norm()), rel=1e-5)
