"""LoRA through peft: the adapter writes the fact, and restore leaves neither adapter nor change."""

from __future__ import annotations

import pytest
import torch

from harness import plugins
from harness.answers import TargetBatch
from harness.api import EditorContext, EditRequest
from harness.config import ConfigError, build
from harness.models import cache_dir
from harness.runner import run
from harness.runtime import device_of

REQUEST = EditRequest("Which city is Zorvik Tower in?", "Lisbon", "Zorvik Tower", "en")
WEIGHT = "model.layers.1.mlp.down_proj.weight"


def _lora(**settings):
    editor_class = plugins.editors()["lora"]
    values = {"layers": (1,), "lr": 1e-2, "steps": 60, **settings}
    return editor_class(build(editor_class.hparams_class, values, "lora hparams"))


def _nll(model, tokenizer) -> float:
    batch = TargetBatch.of(tokenizer, [(REQUEST.prompt, REQUEST.target)], device_of(model))
    with torch.no_grad():
        return float(batch.nll_per_pair(model).mean())


def test_the_adapter_writes_the_fact_and_restore_leaves_the_base_model_bit_identical(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    modules = [(name, type(module)) for name, module in model.named_modules()]
    unedited = _nll(model, tokenizer)
    editor = _lora(rank=4)
    editor.prepare(model, tokenizer, EditorContext(cache_dir=cache_dir(), seed=0))
    with editor.apply(model, tokenizer, [REQUEST]) as edit:
        assert [(name, type(module)) for name, module in model.named_modules()] == modules  # merged, unloaded
        edited = _nll(model, tokenizer)
        change = (model.get_parameter(WEIGHT) - before[WEIGHT]).double()
        changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert edit.touched == [WEIGHT] and changed == [WEIGHT]
    # a random 4-layer model has a floor: full fine-tuning of the same matrix reaches 4.28 nats from 5.56
    assert edited < unedited - 0.9 and edit.info["steps"] >= 1, (unedited, edited)
    assert 1 <= int(torch.linalg.matrix_rank(change, rtol=1e-6)) <= 4  # (alpha / rank) B A: rank <= 4
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not any(p.requires_grad for p in model.parameters())


def test_sequential_edits_accumulate_and_are_all_undone(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    results = run(
        "lora",
        "bizsre_en_zh",
        model="tiny-llama",
        limit=3,
        mode="sequential",
        output_dir=str(tmp_path),
        overrides={"steps": 20},
        progress=False,
    )  # the harness checks the whole model against its unedited fingerprint at the end
    assert results["editing"]["edits_in_force_when_probed"] == 3
    assert results["hparams"]["layers"] == (1,) and results["hparams_sources"]["plugin_defaults"]


def test_bad_targets_and_settings_are_named():
    with pytest.raises(ConfigError, match="rank must be >= 1"):
        build(plugins.editors()["lora"].hparams_class, {"rank": "0"}, "lora hparams")


def test_a_target_that_is_not_a_linear_module_is_refused_before_any_edit(tiny_llama):
    editor = _lora(target_modules=("model.layers.1.mlp",))
    with pytest.raises(ValueError, match=r"target_modules \['model.layers.1.mlp'\] are not linear"):
        editor.prepare(tiny_llama.model, tiny_llama.tokenizer, EditorContext(cache_dir=cache_dir()))
