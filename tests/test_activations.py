"""Resuming a forward pass from frozen states: the same hidden states and the same optimised values as
recomputing everything, on every built-in family (tiny models) and on a real edit of the demo model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from harness import plugins
from harness.activations import FrozenPrefix, _resume_at, decoder_layers, layer_of
from harness.answers import TargetBatch, final_hidden, pad_batch
from harness.api import EditorContext, EditRequest
from harness.config import resolve
from harness.models import architecture, cache_dir, load_model
from harness.runner import load_task_records
from harness.templates import Templates
from harness.weight_editing.keys import subject_keys
from harness.weight_editing.values import ValueObjective, optimise_values, subject_goals

FAMILIES = ("tiny-llama", "tiny-gemma3", "tiny-gpt2")


@pytest.fixture(scope="module")
def tiny(harness_cache):
    sources = plugins.models()
    return {name: load_model(name, sources) for name in FAMILIES}


def _rows(tokenizer) -> list[list[int]]:
    texts = [
        "Which city is Zorvik Tower in?",
        "The weather was mild. Which city is Zorvik Tower in? Lisbon",
        "Zorvik Tower is a",
        "Context " * 40 + "Which city is Zorvik Tower in?",  # longer than tiny-gemma3's sliding window
    ]
    return [tokenizer(t).input_ids for t in texts]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layer", [0, 2])
def test_resumed_pass_gives_the_full_passes_hidden_states(tiny, family, layer):
    """Live column j of row i is original column anchor_i + j: the hidden states there equal a
    right-padded full pass's, for rows of different lengths and anchors (one at column 0)."""
    model, tokenizer = tiny[family].model, tiny[family].tokenizer
    rows = _rows(tokenizer)
    anchors = [3, 9, 0, len(rows[3]) - 5]
    frozen = FrozenPrefix.encode(model, rows, anchors, layer, tokenizer.pad_token_id)
    ids, mask = pad_batch(rows, tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        full = final_hidden(model, ids, mask)
        live = frozen.final_hidden(model, torch.arange(len(rows)))
        two = frozen.final_hidden(model, torch.tensor([3, 1]))  # a subset of rows, in another order
    for i, (row, anchor) in enumerate(zip(rows, anchors, strict=True)):
        span = len(row) - anchor
        torch.testing.assert_close(live[i, :span], full[i, anchor : len(row)], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(two[0], live[3], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(two[1, : two.shape[1]], live[1, : two.shape[1]], atol=1e-6, rtol=1e-6)


def test_layers_below_are_skipped_and_their_own_forward_comes_back(tiny):
    """While resuming, layers below the resume layer do not run; afterwards each layer's forward is
    what it was, including a wrapper set on the instance (as accelerate's dispatch does)."""
    model = tiny["tiny-llama"].model
    layers = decoder_layers(model)
    calls = []
    wrapped = layers[0].forward

    def wrapper(*args, **kwargs):
        calls.append("wrapper")
        return wrapped(*args, **kwargs)

    layers[0].forward = wrapper
    try:
        ids = torch.tensor([[1, 5, 6, 7]])
        with torch.no_grad(), _resume_at(model, 2, torch.zeros(1, 4, model.config.hidden_size)):
            model.base_model(input_ids=ids)
        assert calls == []
        with torch.no_grad():
            model.base_model(input_ids=ids)
        assert calls == ["wrapper"]
    finally:
        del layers[0].forward
    assert "forward" not in layers[1].__dict__
    assert layer_of(model, model.get_submodule(architecture(model).mlp_out.format(2))) == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_value_optimisation_skipping_frozen_work_finds_the_same_deltas(tiny, family):
    """Two goals in one batch (a context-prefixed prompt among them), several Adam steps: the deltas
    and every recorded loss agree with the whole-prompt recomputation."""
    model, tokenizer = tiny[family].model, tiny[family].tokenizer
    requests = [
        EditRequest("Which city is Zorvik Tower in?", "Lisbon", "Zorvik Tower", "en"),
        EditRequest("Who founded Quill Labs?", "Ada Byron", "Quill Labs", "en"),
    ]
    prompt_sets = [(r.prompt, "It was late. " + r.prompt) for r in requests]
    goals = subject_goals(requests, prompt_sets, [1.0, 1.0])
    name = architecture(model).mlp_out.format(1)
    objective = ValueObjective(steps=4, lr=0.1, stop_loss=0.0, clamp_norm_factor=1e6)
    full = optimise_values(model, tokenizer, goals, name, dataclasses.replace(objective, skip_frozen=False))
    fast = optimise_values(model, tokenizer, goals, name, objective)
    for a, b in zip(full, fast, strict=True):
        assert a.steps == b.steps == 4
        assert b.delta.norm() > 0
        assert float((b.delta - a.delta).norm() / a.delta.norm()) < 1e-5
        assert b.losses == pytest.approx(a.losses, rel=1e-5)


@pytest.mark.slow
def test_a_real_rome_edit_finds_the_same_delta_either_way(gemma, data_dir):
    """The demo model's configured ROME value optimisation on the first Bi-ZsRE record that converges
    (11 context-prefixed prompts, second moments aside): same step count, delta within 1e-5."""
    model, tokenizer = gemma.model, gemma.tokenizer
    task = plugins.tasks()["bizsre_en_zh"]
    (record,) = load_task_records(task, data_dir, task.template, Templates(), 2)[1:]
    editor_class = plugins.editors()["rome"]
    hparams = resolve(editor_class.hparams_class, "rome", {"model": "gemma3-270m"}, {}).hparams
    context = EditorContext(cache_dir=cache_dir(), seed=0, data_dir=Path(data_dir))
    request = record.request
    name = architecture(model).mlp_out.format(hparams.layer)
    prompt_sets = hparams.prompt_sets(model, tokenizer, [request], context)
    key = subject_keys(model, tokenizer, prompt_sets, [request.subject], name)[0]
    norm = editor_class(hparams).reference_norm(model, tokenizer, request, key)
    goals = subject_goals([request], prompt_sets, [norm])
    objective = hparams.objective()
    whole = dataclasses.replace(objective, skip_frozen=False)
    (full,) = optimise_values(model, tokenizer, goals, name, whole)
    (fast,) = optimise_values(model, tokenizer, goals, name, objective)
    assert full.steps == fast.steps < objective.steps  # converged, the same way
    assert float((fast.delta - full.delta).norm() / full.delta.norm()) < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_fine_tuning_loss_and_gradient_are_the_same_from_the_trained_layer_up(tiny, family):
    """FT's teacher-forced loss resumed at the lowest trained layer: the same loss and the same
    gradient on that layer's MLP output matrix as the full pass."""
    model, tokenizer = tiny[family].model, tiny[family].tokenizer
    pairs = [("Which city is Zorvik Tower in?", "Lisbon"), ("Who founded Quill Labs?", "Ada Byron")]
    batch = TargetBatch.of(tokenizer, pairs, "cpu")
    frozen = FrozenPrefix.encode(model, batch.sequences(), [0, 0], 2, tokenizer.pad_token_id)
    weight = model.get_parameter(architecture(model).mlp_out_weight(2))
    weight.requires_grad_(True)
    try:
        found = []
        for resume in (None, frozen):
            loss = batch.nll_per_pair(model, resume).mean()
            (gradient,) = torch.autograd.grad(loss, weight)
            found.append((loss.detach(), gradient))
    finally:
        weight.requires_grad_(False)
    (full_loss, full_grad), (fast_loss, fast_grad) = found
    torch.testing.assert_close(fast_loss, full_loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(fast_grad, full_grad, atol=1e-6, rtol=1e-5)
    assert full_grad.abs().sum() > 0
