"""AlphaEdit: the projected write is the minimiser of its objective among updates in the null space,
leaves the preserved keys' outputs alone while the edit lands, remembers earlier edits' keys, and a
cut sequential run resumes from that memory to the same numbers."""

from __future__ import annotations

import pytest
import torch
from sequential_cut import cut_and_resume

from harness.api import EditorContext, EditRequest
from harness.models import architecture, cache_dir
from harness.weight_editing.keys import representations, subject_last_token
from harness.weight_editing.updates import null_space_projector, projected_update
from harness.weight_editing.values import ValueResult, add_to_output
from harness_plugins.methods.alphaedit import AlphaEdit, AlphaEditHparams
from harness_plugins.methods.memit import editor as memit_editor

REQUESTS = [
    EditRequest("Which city is Zorvik Tower in?", "Lisbon", "Zorvik Tower", "en", record_id="0"),
    EditRequest("Who wrote The Amber Kettle?", "Ada Brenner", "The Amber Kettle", "en", record_id="1"),
    EditRequest("What language does Quellan Ostra speak?", "Basque", "Quellan Ostra", "en", record_id="2"),
]
CORPUS = "The river runs past the old mill and the bridge. Children play near the water in summer."


def _random(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _preserved(d_in=16, rank=6, n=40, seed=0):
    """Keys that span only ``rank`` of ``d_in`` directions, and their second moment."""
    keys = _random((n, rank), seed) @ _random((rank, d_in), seed + 1)
    return keys, keys.T @ keys / n


def test_the_projector_spans_exactly_the_directions_the_preserved_keys_never_take():
    keys, moment = _preserved()
    projector = null_space_projector(moment, 1e-10)
    assert round(float(torch.trace(projector))) == 16 - 6
    torch.testing.assert_close(projector @ projector, projector, rtol=0, atol=1e-12)
    torch.testing.assert_close(keys @ projector, torch.zeros_like(keys), rtol=0, atol=1e-10)


@pytest.mark.parametrize("transposed", [False, True])
def test_the_write_minimises_its_objective_among_null_space_updates(transposed):
    """Oracle: with V an orthonormal basis of P's range, the minimiser of ||D K - R||^2 + ||D K_p||^2 +
    l2 ||D||^2 over D = X V^T is X = R K^T V (V^T (K K^T + K_p K_p^T) V + l2 I)^-1."""
    _, moment = _preserved()
    projector = null_space_projector(moment, 1e-10)
    eigenvalues, vectors = torch.linalg.eigh(moment)
    basis = vectors[:, eigenvalues <= 1e-10 * eigenvalues[-1]]
    weight, keys, residuals, earlier = (
        _random((5, 16), 2),
        _random((3, 16), 3),
        _random((3, 5), 4),
        _random((2, 16), 5),
    )
    l2 = 0.3
    k, kp = keys.T, earlier.T
    x = (
        residuals.T
        @ k.T
        @ basis
        @ torch.linalg.inv(basis.T @ (k @ k.T + kp @ kp.T) @ basis + l2 * torch.eye(10, dtype=torch.float64))
    )
    new = weight.T.clone() if transposed else weight.clone()
    update = projected_update(new, keys, residuals, projector, kp @ kp.T, l2, transposed)
    torch.testing.assert_close(update, x @ basis.T, rtol=0, atol=1e-10)
    torch.testing.assert_close((new.T if transposed else new) - weight, update, rtol=0, atol=1e-12)


def _relative(moved: torch.Tensor, size: torch.Tensor) -> float:
    return float(moved.norm() / size.norm())


def test_preserved_keys_keep_their_outputs_while_keys_in_the_null_space_get_their_values():
    preserved, moment = _preserved()
    projector = null_space_projector(moment, 1e-10)
    weight = _random((5, 16), 6)
    first = _random((2, 16), 7) @ projector  # keys the preserved ones never span
    wanted = _random((2, 5), 8)
    new = weight.clone()
    projected_update(new, first, wanted, projector, torch.zeros(16, 16, dtype=torch.float64), 1e-6)
    assert _relative((new - weight) @ preserved.T, weight @ preserved.T) < 1e-9
    assert _relative((new - weight) @ first.T - wanted.T, wanted) < 1e-5
    # a second edit that remembers the first keys writes its own and leaves the first ones' outputs
    second, again = _random((2, 16), 9) @ projector, _random((2, 5), 10)
    newer = new.clone()
    projected_update(newer, second, again, projector, first.T @ first, 1e-6)
    assert _relative((newer - new) @ second.T - again.T, again) < 1e-5
    assert _relative((newer - new) @ first.T, wanted) < 1e-5
    assert _relative((newer - new) @ preserved.T, weight @ preserved.T) < 1e-9
    # forgetting the first keys, the second write overwrites some of what the first one wrote
    forgetful = new.clone()
    projected_update(forgetful, second, again, projector, torch.zeros(16, 16, dtype=torch.float64), 1e-6)
    assert _relative((forgetful - new) @ first.T, wanted) > 0.05


@pytest.mark.parametrize("bad", [{"second_moments": False}, {"null_space_threshold": 0.0}, {"l2": 0.0}])
def test_settings_that_cannot_work_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        AlphaEditHparams(**bad)


def _per_key(outputs: torch.Tensor) -> float:
    """Root mean square over keys (columns) of the output change."""
    return float(outputs.norm() / outputs.shape[1] ** 0.5)


def _corpus_keys(model, tokenizer, module) -> torch.Tensor:
    """The MLP output module's input at every corpus token, read by a hook of the test's own."""
    seen = []
    handle = module.register_forward_pre_hook(lambda _, args: seen.append(args[0][0].detach().double()))
    try:
        with torch.no_grad():
            model(**tokenizer(CORPUS, return_tensors="pt"))
    finally:
        handle.remove()
    return seen[0]


def _editor(model, tokenizer, tmp_path) -> AlphaEdit:
    (tmp_path / "corpus.txt").write_text(CORPUS + "\n", encoding="utf-8")
    hparams = AlphaEditHparams(
        layers=(1, 2),
        steps=3,
        contexts_per_length=0,
        second_moment_corpus=("corpus.txt",),
        null_space_threshold=1e-7,
        l2=1e-3,
    )
    editor = AlphaEdit(hparams)
    context = EditorContext(cache_dir=cache_dir(), seed=0, data_dir=tmp_path, languages=("en",))
    editor.prepare(model, tokenizer, context)
    return editor


def test_on_a_model_the_corpus_keys_keep_their_outputs_and_the_residuals_move_to_their_targets(
    tiny_llama, tmp_path, monkeypatch
):
    """The corpus has fewer tokens than the MLP is wide, so C has an exact null space: the corpus keys'
    outputs must move less than 1e-4 of what the edited keys' outputs move (root mean square per
    key), while known value changes (MEMIT's targets, computed here independently) are mostly
    reached."""
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    arch = architecture(model)
    deltas = 0.5 * torch.randn(
        len(REQUESTS), model.config.hidden_size, generator=torch.Generator().manual_seed(0)
    )
    monkeypatch.setattr(
        memit_editor,
        "optimise_values",
        lambda model, tokenizer, goals, module, objective, chunk: [
            ValueResult(delta=deltas[i], losses=[0.0], steps=1) for i in range(len(goals))
        ],
    )
    prompts = [r.prompt for r in REQUESTS]
    positions = [subject_last_token(tokenizer, r.prompt, r.subject) for r in REQUESTS]

    def residual():
        return representations(model, tokenizer, prompts, positions, arch.layer(2), "output", len(prompts))

    with add_to_output(
        model.get_submodule(arch.mlp_out.format(2)), torch.arange(3), torch.tensor(positions), deltas
    ):
        targets = residual()
    start = residual()
    editor = _editor(model, tokenizer, tmp_path)
    modules = [model.get_submodule(arch.mlp_out.format(layer)) for layer in (1, 2)]
    preserved = [_corpus_keys(model, tokenizer, m) for m in modules]
    assert len(preserved[0]) < 128  # fewer corpus tokens than the MLP's width: a null space exists
    weights = [m.weight.detach().double().clone() for m in modules]
    with editor.apply(model, tokenizer, REQUESTS) as edit:
        for module, weight, keys in zip(modules, weights, preserved, strict=True):
            change = module.weight.double() - weight
            edited = editor.earlier[arch.mlp_out.format(modules.index(module) + 1)]
            assert _per_key(change @ keys.T) < 1e-4 * _per_key(change @ edited.T)
        gap = (targets - residual()).norm(dim=-1) / (targets - start).norm(dim=-1)
        assert bool((gap < 0.5).all()), gap
        assert edit.info["null_space_dims"] == {
            m: 128 - len(preserved[0]) for m in edit.info["null_space_dims"]
        }
    assert all(torch.equal(m.weight.double(), w) for m, w in zip(modules, weights, strict=True))


def test_the_memory_holds_the_keys_of_the_edits_in_force(tiny_llama, tmp_path):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    editor = _editor(model, tokenizer, tmp_path)
    first = editor.apply(model, tokenizer, REQUESTS[:2])
    assert {name: len(keys) for name, keys in editor.earlier.items()} == {
        architecture(model).mlp_out.format(layer): 2 for layer in (1, 2)
    }
    saved = editor.memory_state()
    second = editor.apply(model, tokenizer, REQUESTS[2:])
    assert second.info["earlier_keys"] == {name: 2 for name in editor.earlier}
    assert all(len(keys) == 3 for keys in editor.earlier.values())
    second.restore()  # a restored edit takes its keys out of the memory
    assert all(torch.equal(editor.earlier[n], saved["earlier_keys"][n]) for n in saved["earlier_keys"])
    editor.clear_memory(model)
    assert editor.earlier == {}
    editor.load_memory_state(model, saved)
    assert all(torch.equal(editor.earlier[n], saved["earlier_keys"][n]) for n in saved["earlier_keys"])
    first.restore()
    assert editor.earlier == {}


def test_a_cut_sequential_run_resumes_with_its_memory_and_ends_equal(tmp_path, monkeypatch):
    """Without the saved keys the resumed third edit would be written as if it were the first."""
    load, loaded = AlphaEdit.load_memory_state, []

    def watched_load(editor, model, state):
        loaded.append({name: len(keys) for name, keys in state["earlier_keys"].items()})
        load(editor, model, state)

    monkeypatch.setattr(AlphaEdit, "load_memory_state", watched_load)
    overrides = {"steps": 3, "contexts_per_length": 0, "second_moment_tokens": 400}
    whole, resumed, seen, infos = cut_and_resume(
        tmp_path, monkeypatch, "alphaedit", overrides, lambda e: sum(len(k) for k in e.earlier.values())
    )
    assert seen == [0, 2]  # two edits; the second remembered the first one's key at both layers
    assert [set(n.values()) for n in loaded] == [{2}]  # the resumed run began from both edits' keys
    assert resumed["results"] == whole["results"]
    # what each write did depends on the keys remembered: equal only if the memory came back
    assert [set(info["earlier_keys"].values()) for info in infos["split"]] == [set(), {1}, {2}]
    assert infos["split"] == infos["whole"]
