"""RECT: an edit kept only on the entries whose change is largest relative to their value."""

from __future__ import annotations

import json
import math

import pytest
import torch

from harness import plugins
from harness.api import EditorContext, EditRequest
from harness.config import ConfigError, build
from harness.models import cache_dir
from harness.runner import run
from harness.weight_editing.updates import keep_largest_relative_change
from harness_plugins.methods.rome import ROME, ROMEHparams

REQUEST = EditRequest("Which city is Zorvik Tower in?", "Lisbon", "Zorvik Tower", "en")
WEIGHT = "model.layers.1.mlp.down_proj.weight"


def test_the_largest_relative_changes_are_kept_exactly_and_the_rest_put_back():
    original = torch.tensor([[1.0, 2.0, 0.0], [-4.0, 0.5, 8.0]])
    edited = original + torch.tensor([[0.1, 1.0, 0.01], [-0.4, 0.5, 0.4]])
    # relative changes: 0.1, 0.5, inf (a zero that moved), 0.1, 1.0, 0.05 -> the top half: inf, 1.0, 0.5
    weight = edited.clone()
    assert keep_largest_relative_change(weight, original, 0.5) == 3
    expected = torch.tensor([[1.0, 3.0, 0.01], [-4.0, 1.0, 8.0]])
    assert torch.equal(weight, torch.where(expected != original, edited, original))
    assert torch.equal(weight, expected)
    weight = edited.clone()
    assert keep_largest_relative_change(weight, original, 1.0) == 6 and torch.equal(weight, edited)


def test_in_bfloat16_kept_entries_are_the_edited_values_and_the_others_the_original_bit_for_bit():
    torch.manual_seed(0)
    original = torch.randn(64, 32).to(torch.bfloat16)
    edited = (original.float() + 0.05 * torch.randn(64, 32)).to(torch.bfloat16)
    weight = edited.clone()
    kept = keep_largest_relative_change(weight, original, 0.25)
    assert kept == 512 and weight.dtype == torch.bfloat16
    moved = weight != original
    assert torch.equal(weight[moved], edited[moved]) and int(moved.sum()) <= kept


def _rome_update(editor_class, hparams, tiny_llama) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The weight before and after one edit by ``editor_class``, restored afterwards."""
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    editor = editor_class(hparams)
    editor.prepare(model, tokenizer, EditorContext(cache_dir=cache_dir(), seed=0))
    before = model.get_parameter(WEIGHT).detach().clone()
    with editor.apply(model, tokenizer, [REQUEST]) as edit:
        after = model.get_parameter(WEIGHT).detach().clone()
        info = edit.info
    assert torch.equal(model.get_parameter(WEIGHT), before)  # restored bit for bit
    return before, after, info


def test_rect_rome_keeps_the_chosen_share_of_romes_own_update(tiny_llama):
    """An independent oracle: plain ROME's update, cut by hand to its top 30% relative changes."""
    rect_rome = plugins.editors()["rect-rome"]
    settings = {"layer": 1, "steps": 5, "second_moments": False}
    before, plain, _ = _rome_update(ROME, ROMEHparams(**settings), tiny_llama)
    _, cut, info = _rome_update(rect_rome, rect_rome.hparams_class(**settings, rect=0.3), tiny_llama)
    relative = ((plain.float() - before.float()).abs() / before.float().abs()).flatten()
    count = math.ceil(0.3 * relative.numel())
    top = torch.zeros_like(relative, dtype=torch.bool)
    top[torch.topk(relative, count).indices] = True
    top = top.view_as(before)
    assert torch.equal(cut[top], plain[top]) and torch.equal(cut[~top], before[~top])
    assert int((cut != before).sum()) == count  # a rank-one update moves every entry
    assert info["rect"] == {"share": 0.3, "entries_kept": {WEIGHT: count}}
    assert info["value_steps"] >= 1  # ROME's own record of the edit is kept


def test_rect_editors_take_the_wrapped_editors_settings_and_defaults():
    rect_rome = plugins.editors()["rect-rome"]
    names = {f.name for f in __import__("dataclasses").fields(rect_rome.hparams_class)}
    assert names == {f.name for f in __import__("dataclasses").fields(ROMEHparams)} | {"rect"}
    assert rect_rome.hparams_class().rect == 0.2
    assert rect_rome.capabilities == ROME.capabilities
    tuned = plugins.editor_defaults("rome", "gemma3-270m")
    assert plugins.editor_defaults("rect-rome", "gemma3-270m") == tuned and tuned["layer"] == 4
    assert plugins.editor_defaults("rect-memit", "tiny-llama") == {"layers": (1, 2)}
    for bad in ("0", "1.5"):
        with pytest.raises(ConfigError, match="rect must be in"):
            build(rect_rome.hparams_class, {"rect": bad}, "rect-rome hparams")


def test_rect_memit_runs_end_to_end_on_a_tiny_model(tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    results = run(
        "rect-memit",
        "bizsre_en_zh",
        model="tiny-llama",
        limit=2,
        output_dir=str(tmp_path),
        overrides={"steps": 3, "rect": 0.1},
        progress=False,
    )
    assert results["hparams"]["rect"] == 0.1 and results["hparams"]["layers"] == (1, 2)
    assert results["hparams_sources"]["plugin_defaults"] == ["layers"]
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    size = 64 * 128  # the tiny model's down-projection: hidden 64, intermediate 128
    kept = {f"model.layers.{layer}.mlp.down_proj.weight": math.ceil(0.1 * size) for layer in (1, 2)}
    assert [s["edit_info"]["rect"] for s in samples] == [{"share": 0.1, "entries_kept": kept}] * 2
