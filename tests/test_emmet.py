"""EMMET: a batch of facts written at one layer, every key's new value exact."""

from __future__ import annotations

import pytest
import torch

from harness import plugins
from harness.api import EditorContext, EditRequest
from harness.model_text import context_prefixes
from harness.models import architecture, cache_dir
from harness.weight_editing.keys import keys_at, subject_last_token
from harness.weight_editing.updates import equality_constrained_update, rank_one_update
from harness_plugins.methods.rome import ROMEHparams

CITIES = ["Lisbon", "Oslo", "Quito", "Hanoi", "Lima", "Riga", "Doha", "Bern"]
TOWERS = ["Zorvik", "Maltrin", "Opsel", "Karvek", "Dunmor", "Velisk", "Tarquel", "Wendrop"]
REQUESTS = [
    EditRequest(f"Which city is {tower} Tower in?", city, f"{tower} Tower", "en", record_id=str(i))
    for i, (tower, city) in enumerate(zip(TOWERS, CITIES, strict=True))
]


def _random(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("whitened", [False, True])
def test_every_key_gets_its_value_and_one_key_is_the_rank_one_update(whitened):
    weight, keys, residuals = _random((6, 10), 0), _random((4, 10), 1), _random((4, 6), 2)
    a = _random((10, 10), 3)
    inverse = torch.linalg.inv(a @ a.T + torch.eye(10, dtype=torch.float64)) if whitened else None
    new = weight.clone()
    equality_constrained_update(new, keys, residuals, inverse)
    torch.testing.assert_close(new @ keys.T, weight @ keys.T + residuals.T, rtol=0, atol=1e-10)
    # the update is U = L K^T C^-1: outputs of keys orthogonal to every C^-1 k_i do not move
    whitened_keys = keys if inverse is None else keys @ inverse
    x = torch.linalg.svd(whitened_keys).Vh[-1]  # a direction orthogonal to all C^-1 k_i
    torch.testing.assert_close(new @ x, weight @ x, rtol=0, atol=1e-10)
    one, rank_one = weight.clone(), weight.clone()
    equality_constrained_update(one, keys[:1], residuals[:1], inverse)
    direction = keys[0] if inverse is None else inverse @ keys[0]
    rank_one_update(rank_one, keys[0], residuals[0], direction)
    torch.testing.assert_close(one, rank_one, rtol=0, atol=1e-12)


def test_a_batch_of_eight_facts_writes_each_key_exactly(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    hparams = ROMEHparams(layer=1, steps=5, contexts_per_length=2, second_moments=False)
    editor = plugins.editors()["emmet"](hparams)
    editor.prepare(model, tokenizer, EditorContext(cache_dir=cache_dir(), seed=0))
    name = architecture(model).mlp_out_weight(1)
    before = model.get_parameter(name).detach().double()
    with editor.apply(model, tokenizer, REQUESTS) as edit:
        change = model.get_parameter(name).detach().double() - before
    assert torch.equal(model.get_parameter(name).double(), before)  # restored
    prefixes = context_prefixes(model, tokenizer, "en", 0, cache_dir(), [(5, 2), (10, 2)])
    keys = []
    for request in REQUESTS:  # the averaged keys, recomputed independently of the editor
        texts = [p + request.prompt for p in prefixes]
        positions = [subject_last_token(tokenizer, t, request.subject) for t in texts]
        keys.append(
            keys_at(model, tokenizer, texts, positions, architecture(model).mlp_out.format(1)).mean(0)
        )
    written = torch.stack(keys).double() @ change.T  # row i: W' k_i - W k_i, which must be delta_i
    assert written.norm(dim=1).tolist() == pytest.approx(edit.info["delta_norm"], rel=1e-4)
    assert torch.linalg.matrix_rank(change, rtol=1e-6) == len(REQUESTS)


def test_two_edits_of_one_subject_in_a_batch_are_refused_by_name(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    hparams = ROMEHparams(layer=1, steps=2, contexts_per_length=0, second_moments=False)
    editor = plugins.editors()["emmet"](hparams)
    editor.prepare(model, tokenizer, EditorContext(cache_dir=cache_dir(), seed=0))
    twice = [REQUESTS[0], EditRequest(REQUESTS[0].prompt, "Oslo", REQUESTS[0].subject, "en", record_id="9")]
    before = model.get_parameter(architecture(model).mlp_out_weight(1)).detach().clone()
    with pytest.raises(ValueError, match=r"records \['0', '9'\] are linearly dependent"):
        editor.apply(model, tokenizer, twice)
    assert torch.equal(model.get_parameter(architecture(model).mlp_out_weight(1)), before)
