"""WISE: the router sends an edited prompt to the side memory and unrelated text to the main memory
(bit for bit the unedited model), the main weights never change, full shards are TIES-merged, and
the side memory is a memory that restores, clears and survives a resumed sequential run."""

from __future__ import annotations

import pytest
import torch
from sequential_cut import cut_and_resume

from harness.answers import TargetBatch
from harness.api import EditorContext, EditRequest
from harness.models import cache_dir
from harness_plugins.methods.wise import WISE, WISEHparams
from harness_plugins.methods.wise.memory import SideMemory, relative_scores, ties_merge

REQUESTS = [
    EditRequest("Which city is Zorvik Tower in?", "Lisbon", "Zorvik Tower", "en", record_id="0"),
    EditRequest("Who wrote The Amber Kettle?", "Ada Brenner", "The Amber Kettle", "en", record_id="1"),
    EditRequest("What language does Quellan Ostra speak?", "Basque", "Quellan Ostra", "en", record_id="2"),
]
UNRELATED = [("What do bees make?", "honey"), ("The capital of France is", "Paris")]


def test_ties_keeps_the_largest_entries_elects_signs_and_averages_the_agreeing_ones():
    a = torch.tensor([[3.0, -1.0, 0.5, 2.0]])
    b = torch.tensor([[1.0, 4.0, -0.2, -3.0]])
    c = torch.tensor([[-2.0, 2.0, 0.1, -1.0]])
    # density 0.5 keeps two entries of each: a {3, 2}, b {4, -3}, c {-2, 2}
    # sums: 3 - 2 = 1 (+), 4 + 2 = 6 (+), 0 (none kept), 2 - 3 = -1 (-)
    expected = torch.tensor([[3.0, 3.0, 0.0, -3.0]])
    assert torch.equal(ties_merge([a, b, c], 0.5), expected)


def test_a_relative_score_is_the_mean_output_change_over_the_mean_output_size():
    inputs = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    main = torch.tensor([[[3.0, 4.0], [0.0, 10.0], [1.0, 1.0]]])  # sizes 5 and 10; the third is padding
    delta = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # moves the first output by the first input
    mask = torch.tensor([[1, 1, 0]])
    assert relative_scores(inputs, main, mask, delta).tolist() == [pytest.approx((1 + 0) / (5 + 10))]


def test_the_router_sends_each_row_to_the_memory_it_moves_most_or_to_the_main_one():
    working = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    memory = SideMemory(working, (0.5,))  # threshold 0.88 * 0.5 = 0.44
    inputs = torch.tensor([[[4.0, 0.0]], [[0.0, 4.0]]])  # row 0 moves 4 of 5; row 1 not at all
    main = torch.tensor([[[3.0, 4.0]], [[3.0, 4.0]]])
    routed = memory.route(inputs, main, torch.ones(2, 1), 0.88)
    assert torch.equal(routed, torch.tensor([[[7.0, 4.0]], [[3.0, 4.0]]]))
    alone = main[1:]
    assert memory.route(inputs[1:], alone, torch.ones(1, 1), 0.88) is alone  # no row goes: the same tensor


def _editor(model, tokenizer, **settings) -> WISE:
    editor = WISE(WISEHparams(**{"layer": 2, "steps": 30, "lr": 0.1, **settings}))
    editor.prepare(model, tokenizer, EditorContext(cache_dir=cache_dir(), seed=0))
    return editor


def _outputs(model, tokenizer, module, pairs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The MLP's input and (routed) output on each prompt + answer, read by the test's own hook."""
    seen = []
    handle = module.register_forward_hook(lambda _, args, out: seen.append((args[0][0], out[0])))
    try:
        for pair in pairs:
            with torch.no_grad():
                TargetBatch.of(tokenizer, [pair], "cpu").nll_per_pair(model)
    finally:
        handle.remove()
    return seen


def test_an_edited_prompt_goes_to_the_side_memory_and_unrelated_text_to_the_main_one(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    editor = _editor(model, tokenizer)
    edited = (REQUESTS[0].prompt, REQUESTS[0].target)
    before = _outputs(model, tokenizer, editor.module, [edited, *UNRELATED])
    with editor.apply(model, tokenizer, REQUESTS[:1]) as edit:
        assert edit.touched == [] and edit.info["in_scope_score"] > edit.info["out_of_scope_score"]
        after = _outputs(model, tokenizer, editor.module, [edited, *UNRELATED])
        change = editor.memory.working
        (inputs, unedited), (_, routed) = before[0], after[0]
        torch.testing.assert_close(routed, unedited + inputs @ change.T, rtol=1e-5, atol=1e-6)  # side memory
        for (_, main), (_, now) in zip(before[1:], after[1:], strict=True):
            assert torch.equal(now, main)  # main memory, bit for bit
        assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())
    assert not editor.hooks and not editor.module._forward_hooks and not model.base_model._forward_pre_hooks
    assert all(
        torch.equal(a[1], b[1])
        for a, b in zip(before, _outputs(model, tokenizer, editor.module, [edited, *UNRELATED]))
    )


def test_a_full_shard_is_merged_and_a_new_one_with_another_mask_starts(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    editor = _editor(model, tokenizer, shard_size=1, steps=3, density=0.5)
    edits = [editor.apply(model, tokenizer, [request]) for request in REQUESTS]
    memory = editor.memory
    assert [e.info["shard"] for e in edits] == [0, 1, 2]
    assert len(memory.finished) == 2 and memory.edits == 3
    assert torch.equal(memory.merged, ties_merge(list(memory.finished), 0.5))
    masks = [(delta != 0) for delta in (*memory.finished, memory.working)]
    assert not torch.equal(masks[0], masks[1])  # each shard changed its own random entries
    assert all(float(m.float().mean()) <= 0.25 for m in masks)  # about mask_ratio 0.2 of them
    edits[2].restore()
    assert len(editor.memory.finished) == 1 and editor.memory.working is not None
    assert editor.memory.edits == 2
    for edit in reversed(edits[:2]):
        edit.restore()
    assert editor.memory.edits == 0 and not editor.hooks


def test_the_memory_is_saved_put_back_and_cleared(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    editor = _editor(model, tokenizer, shard_size=1, steps=3)
    for request in REQUESTS[:2]:
        editor.apply(model, tokenizer, [request])
    state = editor.memory_state()
    pair = (REQUESTS[0].prompt, REQUESTS[0].target)
    with torch.no_grad():
        edited = TargetBatch.of(tokenizer, [pair], "cpu").nll_per_pair(model)
    editor.clear_memory(model)
    assert editor.memory.edits == 0 and not editor.module._forward_hooks
    other = _editor(model, tokenizer, shard_size=1, steps=3)  # a fresh editor, as in a resumed run
    other.load_memory_state(model, state)
    assert torch.equal(other.memory.merged, ties_merge(list(other.memory.finished), 0.2))
    with torch.no_grad():
        assert torch.equal(TargetBatch.of(tokenizer, [pair], "cpu").nll_per_pair(model), edited)
    other.clear_memory(model)
    assert not other.module._forward_hooks and not model.base_model._forward_pre_hooks


@pytest.mark.parametrize("bad", [{"mask_ratio": 0.0}, {"shard_size": 0}, {"lr": 0.0}, {"act_ratio": 1.5}])
def test_settings_that_cannot_work_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        WISEHparams(**bad)


def test_a_cut_sequential_run_resumes_with_its_side_memory_and_ends_equal(tmp_path, monkeypatch, tiny_llama):
    overrides = {"steps": 3, "lr": 0.1, "shard_size": 2}
    whole, resumed, seen, infos = cut_and_resume(
        tmp_path, monkeypatch, "wise", overrides, lambda editor: editor.memory.edits
    )
    assert seen == [0, 1]
    assert resumed["results"] == whole["results"]
    assert [(i["shard"], i["edits_in_memory"]) for i in infos["split"]] == [(0, 1), (0, 2), (1, 3)]
    assert infos["split"] == infos["whole"]
    assert not tiny_llama.model.base_model._forward_pre_hooks


def test_the_unrelated_texts_are_written_by_the_main_memory_alone(tiny_llama, monkeypatch):
    """With edits in force, texts sampled for a new language must still be the unedited model's: they
    are cached under the weights' fingerprint, which the side memory does not change."""
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    editor = _editor(model, tokenizer, steps=2)
    routing_while_sampling = []

    def sampled(*args, **kwargs):
        routing_while_sampling.append(editor.routing)
        return ["What do bees make?", "Rivers flow into the"]

    monkeypatch.setattr("harness_plugins.methods.wise.editor.model_samples", sampled)
    first = editor.apply(model, tokenizer, [REQUESTS[0]])
    second = editor.apply(model, tokenizer, [REQUESTS[1]])  # the router is on for the first edit
    assert editor.memory.edits == 2 and routing_while_sampling == [False, False]
    second.restore()
    first.restore()
