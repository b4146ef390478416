"""GRACE: outside every deferral radius the model is the unedited one bit for bit, inside the stored
value replaces the MLP output; the add / expand / split rules; the codebook is a memory that
restores, clears and survives a resumed sequential run."""

from __future__ import annotations

import pytest
import torch
from sequential_cut import cut_and_resume

from harness.activations import run_until
from harness.answers import TargetBatch, pad_batch, prompt_ids
from harness.api import EditorContext, EditRequest
from harness.models import cache_dir
from harness_plugins.methods.grace import GRACE, GRACEHparams
from harness_plugins.methods.grace.codebook import Codebook

EDITED = EditRequest("Which city is Zorvik Tower in?", "Lisbon", "Zorvik Tower", "en", record_id="0")
UNRELATED = ["What do bees make?", "The capital of France is", "Rivers flow into the"]


def _editor(model, tokenizer, **settings) -> GRACE:
    editor = GRACE(GRACEHparams(**{"layer": 2, "steps": 40, "lr": 0.5, **settings}))
    editor.prepare(model, tokenizer, EditorContext(cache_dir=cache_dir(), seed=0))
    return editor


def _logits(model, tokenizer, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(prompt, return_tensors="pt")).logits


def _keys(model, tokenizer, module, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The MLP's input and output at every token of ``prompt``, read with the test's own hook."""
    ids, mask = pad_batch([prompt_ids(tokenizer, prompt)], tokenizer.pad_token_id, "cpu")
    seen = {}
    handle = module.register_forward_hook(lambda _, args, out: seen.update(key=args[0][0], out=out[0]))
    try:
        with torch.no_grad():
            run_until(model, ids, mask, [module], "output")
    finally:
        handle.remove()
    return seen["key"], seen["out"]


def test_the_codebook_replaces_exactly_the_positions_inside_a_radius():
    book = Codebook.empty(3, 2, torch.device("cpu"))
    book = book.with_entry(torch.tensor([1.0, 0, 0]), torch.tensor([7.0, 7.0]), 0.5, "a")
    book = book.with_entry(torch.tensor([0, 5.0, 0]), torch.tensor([-1.0, 2.0]), 1.0, "b")
    keys = torch.tensor([[[1.2, 0, 0], [0, 5.9, 0], [0, 0, 9.0], [1.0, 0.6, 0]]])
    outputs = torch.arange(8, dtype=torch.float32).reshape(1, 4, 2)
    replaced = book.replace(keys, outputs)
    expected = torch.tensor([[[7.0, 7.0], [-1.0, 2.0], [4.0, 5.0], [6.0, 7.0]]])
    assert torch.equal(replaced, expected)  # the last key is 0.6 from the first one: outside 0.5
    far = torch.tensor([[[0, 0, 9.0]]])
    alone = outputs[:, :1]
    assert book.replace(far, alone) is alone  # nothing inside: the very same tensor


def test_outside_every_radius_the_logits_are_the_unedited_models_and_inside_the_value_is_used(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    before = {prompt: _logits(model, tokenizer, prompt) for prompt in UNRELATED}
    edited_before = _logits(model, tokenizer, EDITED.prompt)
    editor = _editor(model, tokenizer, radius=0.05)
    batch = TargetBatch.of(tokenizer, [(EDITED.prompt, EDITED.target)], "cpu")
    with torch.no_grad():
        unedited_loss = float(batch.nll_per_pair(model))
    with editor.apply(model, tokenizer, [EDITED]) as edit:
        book = editor.codebook
        assert edit.info["action"] == "add" and len(book) == 1 and edit.touched == []
        for prompt in UNRELATED:
            keys, _ = _keys(model, tokenizer, editor.module, prompt)
            assert bool((torch.cdist(keys, book.keys) > book.radii).all())  # every token outside
            assert torch.equal(_logits(model, tokenizer, prompt), before[prompt])
        keys, outputs = _keys(model, tokenizer, editor.module, EDITED.prompt)
        assert torch.equal(outputs[-1], book.values[0])  # the last token's output is the stored value
        assert torch.equal(keys[-1], book.keys[0])
        with torch.no_grad():
            # what the value was trained for holds through the codebook
            assert float(batch.nll_per_pair(model)) == pytest.approx(edit.info["final_loss"], rel=1e-5)
        assert edit.info["final_loss"] < unedited_loss - 0.1  # one token of a random model moves it little
    assert editor.hook is None and not editor.module._forward_hooks  # restored: nothing left on the model
    assert torch.equal(_logits(model, tokenizer, EDITED.prompt), edited_before)


def _distance(model, tokenizer, editor, a: str, b: str) -> float:
    keys = [_keys(model, tokenizer, editor.module, prompt)[0][-1] for prompt in (a, b)]
    return float((keys[0] - keys[1]).norm())


def test_a_near_key_with_the_same_answer_widens_its_entry_and_with_another_answer_splits(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    near = EditRequest("Which town is Zorvik Tower in?", "Lisbon", "Zorvik Tower", "en", record_id="1")
    editor = _editor(model, tokenizer, radius=0.3, steps=2)  # radii that reach the near key only together
    d = _distance(model, tokenizer, editor, EDITED.prompt, near.prompt)
    first = editor.apply(model, tokenizer, [EDITED])
    wide = float(editor.codebook.radii[0])
    widened = editor.apply(model, tokenizer, [near])
    assert widened.info["action"] == "expand" and len(editor.codebook) == 1
    assert d > wide  # the new key lay outside the entry, which now reaches it
    assert float(editor.codebook.radii[0]) == pytest.approx(d, rel=1e-5)
    widened.restore()
    other = EditRequest(near.prompt, "Oslo", "Zorvik Tower", "en", record_id="2")
    split = editor.apply(model, tokenizer, [other])
    assert split.info["action"] == "split" and editor.codebook.labels == ("Lisbon", "Oslo")
    new_key = _keys(model, tokenizer, editor.module, near.prompt)[0][-1]
    halves = torch.tensor([min(wide, d / 2), min(0.3 * float(new_key.norm()), d / 2)])  # never wider
    torch.testing.assert_close(editor.codebook.radii, halves, rtol=1e-5, atol=0)
    split.restore()
    assert len(editor.codebook) == 1 and float(editor.codebook.radii[0]) == wide
    first.restore()
    assert len(editor.codebook) == 0 and editor.hook is None


def test_the_same_prompt_edited_with_another_answer_overwrites_its_entry(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    editor = _editor(model, tokenizer, radius=0.05)
    first = editor.apply(model, tokenizer, [EDITED])
    held, lisbon = float(editor.codebook.radii[0]), editor.codebook.values[0]
    again = EditRequest(EDITED.prompt, "Oslo", EDITED.subject, "en", record_id="1")
    second = editor.apply(model, tokenizer, [again])
    assert second.info["action"] == "overwrite" and second.info["nearest"] == 0.0
    assert editor.codebook.labels == ("Oslo",) and float(editor.codebook.radii[0]) == held
    _, outputs = _keys(model, tokenizer, editor.module, EDITED.prompt)
    assert torch.equal(outputs[-1], editor.codebook.values[0]) and not torch.equal(outputs[-1], lisbon)
    batch = TargetBatch.of(tokenizer, [(EDITED.prompt, "Oslo")], "cpu")
    with torch.no_grad():  # the value answering is the one trained for the new answer
        assert float(batch.nll_per_pair(model)) == pytest.approx(second.info["final_loss"], rel=1e-5)
    second.restore()
    assert editor.codebook.labels == ("Lisbon",) and torch.equal(editor.codebook.values[0], lisbon)
    first.restore()


def test_the_memory_is_saved_put_back_and_cleared(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    editor = _editor(model, tokenizer, radius=0.05, steps=2)
    editor.apply(model, tokenizer, [EDITED])
    state = editor.memory_state()
    edited = _logits(model, tokenizer, EDITED.prompt)
    editor.clear_memory(model)
    assert len(editor.codebook) == 0 and not editor.module._forward_hooks
    other = _editor(model, tokenizer, radius=0.05, steps=2)  # a fresh editor, as in a resumed run
    other.load_memory_state(model, state)
    assert torch.equal(_logits(model, tokenizer, EDITED.prompt), edited)
    other.clear_memory(model)
    assert not other.module._forward_hooks


@pytest.mark.parametrize("bad", [{"radius": 0.0}, {"lr": 0.0}, {"steps": -1}])
def test_settings_that_cannot_work_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        GRACEHparams(**bad)


def test_a_cut_sequential_run_resumes_with_its_codebook_and_ends_equal(tmp_path, monkeypatch, tiny_llama):
    whole, resumed, seen, infos = cut_and_resume(
        tmp_path, monkeypatch, "grace", {"steps": 5, "radius": 0.05}, lambda editor: len(editor.codebook)
    )
    assert seen == [0, 1]
    assert resumed["results"] == whole["results"]
    assert [info["entries"] for info in infos["split"]] == [1, 2, 3]  # the third edit saw both earlier
    assert infos["split"] == infos["whole"]
    mlp = tiny_llama.model.get_submodule("model.layers.2.mlp.down_proj")
    assert not mlp._forward_hooks  # the runs ended with the codebook taken off the model
