"""MEMIT: the least-squares write solves its normal equations, reduces to ROME for one request and one
layer, moves every edited key toward its target, and restores bit for bit."""

from __future__ import annotations

import pytest
import torch

from harness.api import EditorContext, EditRequest
from harness.models import architecture, cache_dir
from harness.weight_editing.keys import keys_at, representations, subject_keys, subject_last_token
from harness.weight_editing.updates import least_squares_update, rank_one_update, value_change
from harness.weight_editing.values import ValueResult, add_to_output
from harness_plugins.methods.memit import MEMIT, MEMITHparams
from harness_plugins.methods.memit import editor as memit_editor
from harness_plugins.methods.rome import ROME, ROMEHparams

REQUESTS = [
    EditRequest("Which city is Zorvik Tower in?", "Lisbon", "Zorvik Tower", "en"),
    EditRequest("Who wrote The Amber Kettle?", "Ada Brenner", "The Amber Kettle", "en"),
    EditRequest("What language does Quellan Ostra speak?", "Basque", "Quellan Ostra", "en"),
    EditRequest("Qui a fondé Marlow Ironworks?", "Henri Duval", "Marlow Ironworks", "en"),
]


def _problem(n: int, d: int = 6, d_ff: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(d, d_ff, generator=g, dtype=torch.float64)
    keys = torch.randn(n, d_ff, generator=g, dtype=torch.float64)
    residuals = torch.randn(n, d, generator=g, dtype=torch.float64)
    a = torch.randn(d_ff, d_ff, generator=g, dtype=torch.float64)
    moment = a @ a.T / d_ff + 0.1 * torch.eye(d_ff, dtype=torch.float64)
    return weight, keys, residuals, moment


@pytest.mark.parametrize("transposed", [False, True])
def test_least_squares_update_solves_its_normal_equations(transposed):
    weight, keys, residuals, moment = _problem(n=5)
    preservation = 3.0 * moment
    stored = weight.T.clone() if transposed else weight.clone()
    update = least_squares_update(stored, keys, residuals, preservation, transposed=transposed)
    new = stored.T if transposed else stored
    torch.testing.assert_close(new - weight, update, rtol=0, atol=1e-12)
    k = keys.T
    # U (P + K K^T) = R K^T
    torch.testing.assert_close(update @ (preservation + k @ k.T), residuals.T @ k.T, rtol=0, atol=1e-10)


def test_many_keys_each_move_closer_to_their_targets():
    weight, keys, residuals, moment = _problem(n=8)
    targets = keys @ weight.T + residuals  # v*_i = W k_i + r_i
    new = weight.clone()
    least_squares_update(new, keys, residuals, 0.5 * moment)
    before = (keys @ weight.T - targets).norm(dim=-1)
    after = (keys @ new.T - targets).norm(dim=-1)
    assert bool((after < before).all()), (before, after)
    # with no preservation term and fewer keys than dimensions, every target is met exactly
    exact = weight.clone()
    least_squares_update(exact, keys, residuals, torch.zeros_like(moment))
    torch.testing.assert_close(keys @ exact.T, targets, rtol=0, atol=1e-9)


def test_one_request_is_rome_scaled_by_the_preservation_weight():
    weight, keys, residuals, moment = _problem(n=1)
    lam = 2.0
    memit, rome = weight.clone(), weight.clone()
    least_squares_update(memit, keys, residuals, lam * moment)
    key, delta = keys[0], residuals[0]
    direction = torch.linalg.solve(moment, key)
    rank_one_update(rome, key, delta, direction)
    spread = float(direction @ key)  # k^T C^-1 k
    torch.testing.assert_close(
        memit - weight, (rome - weight) * spread / (lam + spread), rtol=1e-10, atol=1e-12
    )


SHARED = dict(
    steps=12,
    contexts_per_length=2,
    second_moments=True,
    second_moment_tokens=3000,
    weight_decay=0.0,
    clamp_norm_factor=1e6,
)


def test_memit_with_one_request_and_one_layer_matches_rome_with_second_moments(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    context = EditorContext(cache_dir=cache_dir(), seed=0, languages=("en",))
    name = architecture(model).mlp_out_weight(1)
    original = model.get_parameter(name).detach().clone()
    changes = {}
    for editor in (
        ROME(ROMEHparams(layer=1, **SHARED)),
        MEMIT(MEMITHparams(layers=(1,), update_weight=1e-6, **SHARED)),
    ):
        editor.prepare(model, tokenizer, context)
        with editor.apply(model, tokenizer, REQUESTS[:1]) as edit:
            assert edit.touched == [name]
            changes[type(editor).__name__] = model.get_parameter(name).detach().double() - original.double()
    rome, memit = changes["ROME"], changes["MEMIT"]
    assert float(rome.norm()) > 0
    assert float((memit - rome).norm() / rome.norm()) < 1e-3
    assert torch.equal(model.get_parameter(name), original)


def test_memit_batch_moves_every_request_toward_its_target_and_restores(tiny_llama, monkeypatch):
    """With the value step replaced by known changes, the targets z can be computed independently:
    the residual after the last layer when each change is added at that layer's MLP output."""
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    arch = architecture(model)
    deltas = 0.5 * torch.randn(
        len(REQUESTS), model.config.hidden_size, generator=torch.Generator().manual_seed(0)
    )

    def known_values(model, tokenizer, goals, module_name, objective, chunk):
        assert module_name == arch.mlp_out.format(2) and len(goals) == len(REQUESTS)
        return [ValueResult(delta=deltas[i], losses=[0.0], steps=1) for i in range(len(goals))]

    monkeypatch.setattr(memit_editor, "optimise_values", known_values)
    prompts = [r.prompt for r in REQUESTS]
    positions = [subject_last_token(tokenizer, r.prompt, r.subject) for r in REQUESTS]

    def residual():
        return representations(model, tokenizer, prompts, positions, arch.layer(2), "output", len(prompts))

    with add_to_output(
        model.get_submodule(arch.mlp_out.format(2)), torch.arange(4), torch.tensor(positions), deltas
    ):
        targets = residual()
    start = residual()

    editor = MEMIT(MEMITHparams(layers=(1, 2), update_weight=10.0, **SHARED))
    editor.prepare(model, tokenizer, EditorContext(cache_dir=cache_dir(), seed=0, languages=("en",)))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    edit = editor.apply(model, tokenizer, REQUESTS)
    gap_before, gap_after = (targets - start).norm(dim=-1), (targets - residual()).norm(dim=-1)
    assert bool((gap_after < 0.5 * gap_before).all()), (gap_before, gap_after)
    torch.testing.assert_close(
        torch.tensor(edit.info["residual_gap"]), gap_after / gap_before, rtol=1e-4, atol=1e-5
    )
    assert edit.touched == sorted(arch.mlp_out_weight(layer) for layer in (1, 2))
    changed = sorted(n for n, p in model.named_parameters() if not torch.equal(p, params[n]))
    assert changed == edit.touched
    edit.restore()
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())


def test_value_change_through_a_post_mlp_norm_reaches_a_reachable_target(harness_cache):
    from harness import plugins
    from harness.models import load_model

    model = load_model("tiny-gemma3", plugins.models()).model
    post = model.get_submodule(architecture(model).mlp_post.format(1))
    g = torch.Generator().manual_seed(0)
    values = torch.randn(3, 64, generator=g)
    moved = values + 0.3 * torch.randn(3, 64, generator=g)
    with torch.no_grad():
        wanted = post(moved) - post(values)
    change = value_change(post, values, wanted)
    with torch.no_grad():
        torch.testing.assert_close(post(values + change) - post(values), wanted, rtol=0, atol=1e-4)
    assert value_change(None, values, wanted) is wanted  # no post-MLP module: the change is the wish


def test_per_length_keys_are_the_mean_of_each_runs_mean(tiny_llama):
    """MEMIT's reference averages keys within the plain prompt and each prefix length, then over
    those: with runs (1, 2, 2) the plain prompt weighs 1/3, not 1/5."""
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    request = REQUESTS[0]
    texts = (request.prompt, *(f"Some text {i}. {request.prompt}" for i in range(4)))
    name = architecture(model).mlp_out.format(1)
    positions = [subject_last_token(tokenizer, t, request.subject) for t in texts]
    k = keys_at(model, tokenizer, texts, positions, name)
    expected = (k[0] + k[1:3].mean(0) + k[3:5].mean(0)) / 3
    per_length = subject_keys(model, tokenizer, [texts], [request.subject], name, (1, 2, 2))[0]
    torch.testing.assert_close(per_length, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(subject_keys(model, tokenizer, [texts], [request.subject], name)[0], k.mean(0))
    assert MEMITHparams(context_lengths=(5, 10), contexts_per_length=2).prompt_groups() == (1, 2, 2)
    assert MEMITHparams(contexts_per_length=0).prompt_groups() == (1,)


@pytest.mark.parametrize("key_average, groups", [("flat", ()), ("per_length", (1, 2, 2))])
def test_memit_passes_its_key_average_to_every_layers_keys(tiny_llama, monkeypatch, key_average, groups):
    seen = []

    def recording(*args):
        seen.append(args[-1])
        return subject_keys(*args)

    monkeypatch.setattr(memit_editor, "subject_keys", recording)
    hparams = MEMITHparams(layers=(1, 2), key_average=key_average, **{**SHARED, "steps": 1})
    editor = MEMIT(hparams)
    editor.prepare(tiny_llama.model, tiny_llama.tokenizer, EditorContext(cache_dir=cache_dir(), seed=0))
    with editor.apply(tiny_llama.model, tiny_llama.tokenizer, REQUESTS[:1]):
        assert seen == [groups, groups]


def test_memit_clamp_is_relative_to_the_residual_when_asked(tiny_llama):
    """value_norm=residual: ||delta|| of a binding clamp is clamp_norm_factor x the norm of the residual
    after the last layer at the plain prompt's subject token (MEMIT's reference target_init)."""
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    requests = REQUESTS[:2]
    residuals = []
    for request in requests:
        ids = torch.tensor([tokenizer(request.prompt).input_ids])
        with torch.no_grad():
            hidden = model(ids, output_hidden_states=True).hidden_states[3][0]  # after layer 2 of 4
        residuals.append(float(hidden[subject_last_token(tokenizer, request.prompt, request.subject)].norm()))
    hparams = {**SHARED, "steps": 2, "clamp_norm_factor": 0.01}
    editor = MEMIT(MEMITHparams(layers=(1, 2), value_norm="residual", **hparams))
    editor.prepare(model, tokenizer, EditorContext(cache_dir=cache_dir(), seed=0))
    with editor.apply(model, tokenizer, requests) as edit:
        assert edit.info["delta_norm"] == pytest.approx([0.01 * r for r in residuals], rel=1e-5)
