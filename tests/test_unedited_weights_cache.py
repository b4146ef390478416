"""What editors compute from the unedited weights (value vectors, KN's neurons) is cached only while
the model holds the verified unedited weights, and what is read back is bit-identical to computing it
again."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from harness.api import Edit, EditorContext, EditRequest, holding_unedited_weights, unedited_weights
from harness.models import architecture
from harness.runner import run
from harness.weight_editing.values import ValueObjective, optimise_values, subject_goals
from harness_plugins.methods.kn import KN, KNHparams

REQUEST = EditRequest("Which city is Zorvik Tower in?", "Lisbon", "Zorvik Tower", "en")
OBJECTIVE = ValueObjective(steps=4)


def _values(tiny_llama, objective: ValueObjective = OBJECTIVE, target: str = "Lisbon"):
    goals = subject_goals([dataclasses.replace(REQUEST, target=target)], [(REQUEST.prompt,)], [1.0])
    name = architecture(tiny_llama.model).mlp_out.format(1)
    (result,) = optimise_values(tiny_llama.model, tiny_llama.tokenizer, goals, name, objective)
    return result


def test_a_value_is_reused_only_for_the_same_unedited_weights_goal_and_settings(
    tiny_llama, tmp_path, monkeypatch
):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    fresh = _values(tiny_llama)
    assert not fresh.reused and not (tmp_path / "values").exists()  # no verified weights: no cache
    with holding_unedited_weights("weights-a"):
        first, again = _values(tiny_llama), _values(tiny_llama)
        assert not first.reused and again.reused
        assert torch.equal(again.delta, fresh.delta) and again.losses == fresh.losses
        assert again.steps == fresh.steps == 4
        assert not _values(tiny_llama, dataclasses.replace(OBJECTIVE, lr=0.25)).reused
        assert not _values(tiny_llama, target="Porto").reused
    with holding_unedited_weights("weights-b"):
        assert not _values(tiny_llama).reused
    assert len(list((tmp_path / "values").glob("*.pt"))) == 4


def test_snapshotting_a_tensor_to_write_ends_the_reuse_until_the_call_is_over(
    tiny_llama, tmp_path, monkeypatch
):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    weight = architecture(tiny_llama.model).mlp_out_weight(1)
    with holding_unedited_weights("weights-a"):
        assert not _values(tiny_llama).reused
        Edit.snapshot(tiny_llama.model, [weight])
        assert unedited_weights() is None and not _values(tiny_llama).reused
    assert unedited_weights() is None
    with holding_unedited_weights("weights-a"):
        assert _values(tiny_llama).reused


@pytest.mark.parametrize("variant", ["paper", "easyedit"])
def test_kn_reads_its_neurons_back_and_writes_the_same_weights(tiny_llama, tmp_path, monkeypatch, variant):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path))
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    editor = KN(KNHparams(variant=variant, layers=(1, 2), contexts_per_length=0))
    editor.prepare(model, tokenizer, EditorContext(cache_dir=tmp_path, seed=0))
    edited = []
    for reused in (False, True, False):
        weights = "weights-a" if reused or not edited else "weights-b"
        with holding_unedited_weights(weights), editor.apply(model, tokenizer, [REQUEST]) as edit:
            assert edit.info["from_cache"] is reused
            edited.append((edit.info["neurons"], {n: model.get_parameter(n).clone() for n in edit.originals}))
    (neurons, weights), (again, weights_again) = edited[:2]
    assert neurons and again == neurons and weights_again.keys() == weights.keys()
    assert all(torch.equal(weights_again[name], weights[name]) for name in weights)


def _samples(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def test_rect_rome_after_rome_reuses_its_values_one_edit_at_a_time_but_never_in_sequence(tmp_path):
    # a learning rate no other test uses: the session's shared cache holds no values for it yet
    common = dict(model="tiny-llama", limit=2, overrides={"steps": 3, "lr": 0.375}, progress=False)
    rome = run("rome", "bizsre_en_zh", output_dir=str(tmp_path / "rome"), **common)
    rect = run("rect-rome", "bizsre_en_zh", output_dir=str(tmp_path / "rect"), **common)
    assert rect["timings"]["edits_from_cache"] == 2
    assert "edits_from_cache" not in rome["timings"]
    by_rome = {s["record_id"]: s["edit_info"] for s in _samples(tmp_path / "rome")}
    for sample in _samples(tmp_path / "rect"):
        info = sample["edit_info"]
        assert info["from_cache"] and not by_rome[sample["record_id"]]["from_cache"]
        for key in ("delta_norm", "final_loss", "value_steps"):
            assert info[key] == by_rome[sample["record_id"]][key]
    sequential = run(
        "rect-rome", "bizsre_en_zh", output_dir=str(tmp_path / "seq"), **common, mode="sequential"
    )
    assert "edits_from_cache" not in sequential["timings"]
    assert not any(s["edit_info"].get("from_cache") for s in _samples(tmp_path / "seq"))
