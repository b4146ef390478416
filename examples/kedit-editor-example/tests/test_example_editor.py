"""example-ft on the tiny random Llama: the edit writes the fact, touches one matrix, restores exactly."""

from __future__ import annotations

import importlib.metadata

import kedit_editor_example
import pluggy
import pytest
import torch
from kedit_editor_example import ExampleFT, ExampleFTHparams

from harness import hookspecs
from harness.answers import TargetBatch, teacher_forced
from harness.api import EditorContext, EditRequest
from harness.config import ConfigError, build

REQUEST = EditRequest("What is the capital of Norway?", "Bergen", "Norway", "en")
TINY = ExampleFTHparams(lr=1e-2, steps=200)  # a random 64-wide model needs more than a real one


def editor(lm, hparams: ExampleFTHparams = TINY) -> ExampleFT:
    made = ExampleFT(hparams)
    made.prepare(lm.model, lm.tokenizer, EditorContext(cache_dir=None))
    return made


def target_nll(lm) -> float:
    with torch.no_grad():
        return (
            TargetBatch.of(lm.tokenizer, [(REQUEST.prompt, REQUEST.target)], lm.runtime.device)
            .nll_per_pair(lm.model)
            .item()
        )


def answer(lm) -> str:
    """The model's teacher-forced answer to the edited prompt, as the harness scores it."""
    return teacher_forced(lm.model, lm.tokenizer, [(REQUEST.prompt, REQUEST.target)])[0].text.strip()


def test_registers_with_a_fresh_plugin_manager():
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(hookspecs)
    manager.register(kedit_editor_example)
    found = {}
    manager.hook.register_editors(register=lambda name, cls: found.setdefault(name, cls))
    assert found == {"example-ft": ExampleFT}


def test_installed_distribution_advertises_the_entry_point():
    try:
        dist = importlib.metadata.distribution("kedit-editor-example")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("kedit-editor-example is not installed (run from a source checkout)")
    (entry,) = [e for e in dist.entry_points if e.group == "harness"]
    assert entry.load() is kedit_editor_example


def test_edit_writes_the_fact_and_restore_is_bit_exact(tiny_llama):
    lm = tiny_llama
    before = {name: p.detach().clone() for name, p in lm.model.named_parameters()}
    nll_before = target_nll(lm)
    assert answer(lm) != "Bergen"
    edit = editor(lm).apply(lm.model, lm.tokenizer, [REQUEST])
    try:
        assert edit.touched == ["model.layers.2.mlp.down_proj.weight"]  # int(0.6 * 4 layers)
        assert target_nll(lm) < nll_before - 0.5
        assert edit.info["written"] and 0 < edit.info["steps"] <= TINY.steps
        assert answer(lm) == "Bergen"
        changed = [n for n, p in lm.model.named_parameters() if not torch.equal(p, before[n])]
        assert changed == edit.touched
    finally:
        edit.restore()
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())
    assert target_nll(lm) == nll_before


def test_batch_edit_writes_every_fact(tiny_llama):
    lm = tiny_llama
    second = EditRequest("What is the capital of Japan?", "Osaka", "Japan", "en")
    with editor(lm).apply(lm.model, lm.tokenizer, [REQUEST, second]) as edit:
        assert edit.info["written"]
        answers = teacher_forced(lm.model, lm.tokenizer, [(r.prompt, r.target) for r in (REQUEST, second)])
        assert [a.text.strip() for a in answers] == ["Bergen", "Osaka"]
    assert edit.restored


def test_settings_are_checked_before_any_edit(tiny_llama):
    with pytest.raises(ValueError, match="layer=4 is outside the model's 4 layers"):
        editor(tiny_llama, ExampleFTHparams(layer=4))
    assert editor(tiny_llama, ExampleFTHparams(layer=-1)).weight_name == "model.layers.3.mlp.down_proj.weight"
    with pytest.raises(ValueError, match="steps must be >= 1"):
        ExampleFTHparams(steps=0)
    with pytest.raises(RuntimeError, match="prepare"):
        ExampleFT(TINY).apply(tiny_llama.model, tiny_llama.tokenizer, [REQUEST])


def test_harness_builds_the_hparams_from_set_strings():
    params = build(ExampleFTHparams, {"layer": "none", "lr": "1e-2", "steps": "7"}, "example-ft hparams")
    assert params == ExampleFTHparams(layer=None, lr=0.01, steps=7)
    with pytest.raises(ConfigError, match="lr"):
        build(ExampleFTHparams, {"lr": "fast"}, "example-ft hparams")
