"""MEND on a tiny model: the untrained hypernetwork is plain fine-tuning, training helps, restore is exact."""

from __future__ import annotations

import math

import pytest
import torch

from harness.answers import TargetBatch
from harness.api import EditorContext, EditRequest
from harness.runner import train
from harness_plugins.methods.mend.editor import MEND, MENDHparams, token_gradients

REQUEST = EditRequest("The capital of Zorbania is", "Ostberg", "Zorbania", "en")
OTHER = EditRequest("The capital of Quellia is", "Parvel", "Quellia", "en")


def _fine_tuning_gradients(model, tokenizer, mend: MEND, requests) -> dict[str, torch.Tensor]:
    batch = TargetBatch.of(tokenizer, [(r.prompt, r.target) for r in requests], "cpu")
    weights = [model.get_parameter(name) for name in mend.modules]
    with torch.enable_grad():
        for weight in weights:
            weight.requires_grad_(True)
        loss = batch.nll_per_pair(model).sum()
        grads = torch.autograd.grad(loss, weights)
    for weight in weights:
        weight.requires_grad_(False)
    return dict(zip(mend.modules, grads))


@pytest.fixture
def fresh_mend(tiny_llama, synthetic_training_set):
    mend = MEND(MENDHparams(step_size=1e-3))
    mend._build(tiny_llama.model)
    mend._standardise(tiny_llama.model, tiny_llama.tokenizer, synthetic_training_set.examples(None)[:8])
    return mend


def test_fresh_hypernetwork_gives_the_fine_tuning_direction_times_the_step_size(fresh_mend, tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    assert list(fresh_mend.modules) == [f"model.layers.{i}.mlp.down_proj.weight" for i in (1, 2, 3)]
    transform = fresh_mend.transforms["0"]
    assert not torch.equal(transform.x_std, torch.ones_like(transform.x_std))  # real statistics in use
    changes = fresh_mend.weight_changes(
        token_gradients(model, tokenizer, [(REQUEST.prompt, REQUEST.target)], fresh_mend.modules)
    )
    gradients = _fine_tuning_gradients(model, tokenizer, fresh_mend, [REQUEST])
    for name, change in changes.items():
        expected = -1e-3 * gradients[name]
        assert change.shape == model.get_parameter(name).shape
        assert torch.allclose(change, expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())


def test_a_batch_edit_of_a_fresh_hypernetwork_is_the_sum_of_single_edits(fresh_mend, tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer

    def change(requests):
        pairs = [(r.prompt, r.target) for r in requests]
        return fresh_mend.weight_changes(token_gradients(model, tokenizer, pairs, fresh_mend.modules))

    both, first, second = change([REQUEST, OTHER]), change([REQUEST]), change([OTHER])
    for name in both:
        summed = first[name] + second[name]
        assert torch.allclose(both[name], summed, rtol=1e-4, atol=1e-6 * summed.abs().max().item())


def test_apply_writes_the_change_and_restore_is_bit_exact(fresh_mend, tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    before = {n: p.clone() for n, p in model.named_parameters()}
    fresh_mend.log_step_sizes["0"].data.fill_(math.log(0.5))
    edit = fresh_mend.edit(model, tokenizer, [REQUEST])
    assert edit.touched == sorted(fresh_mend.modules)
    moved = (
        model.get_parameter("model.layers.1.mlp.down_proj.weight")
        - before["model.layers.1.mlp.down_proj.weight"]
    )
    assert moved.abs().max() > 0
    assert set(edit.info["change_norms"]) == set(fresh_mend.modules)
    edit.restore()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_short_training_lowers_the_edit_loss_on_held_out_records(tiny_llama, synthetic_training_set):
    settings = {
        "train_limit": "0",
        "validation_size": "4",
        "steps": "60",
        "validate_every": "30",
        "lr": "1e-3",
        "step_size_lr": "1e-1",
        "step_size": "1e-1",
        "norm_examples": "10",
    }
    summary = train("mend", train_data="synthetic_en", model="tiny-llama", overrides=settings, progress=False)
    before, after = summary["before"], summary["final"]
    assert before["step"] == 0 and after["step"] == 60
    assert after["val_edit_nll"] < before["val_edit_nll"] - 0.05, (before, after)
    assert summary["train_examples"] == 20 and summary["checkpoint_parameters"] > 0

    mend = MEND(
        MENDHparams(
            **{k: (float(v) if k.startswith(("lr", "step_size")) else int(v)) for k, v in settings.items()},
            train_data="synthetic_en",
        )
    )
    context = EditorContext(cache_dir=None, model_id=tiny_llama.fingerprint, training_set="synthetic_en")
    mend.prepare(tiny_llama.model, tiny_llama.tokenizer, context)
    selected = summary["selected"]  # the best validation loss, step 0 included
    assert selected["val_loss"] == min(m["val_loss"] for m in (before, after, selected))
    assert mend.log_step_sizes["0"].exp().item() == pytest.approx(selected["step_size_0"])
