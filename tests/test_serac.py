"""SERAC on a tiny model trained in seconds: routing by scope, the counterfactual answer, the memory."""

from __future__ import annotations

import pytest
import torch

from harness.answers import read_answers
from harness.api import EditorContext, EditRequest
from harness.runner import train
from harness_plugins.methods.serac.editor import SERAC, SERACHparams, counterfactual_model

SETTINGS = {
    "train_limit": "0",
    "validation_size": "4",
    "classifier_layer": "2",
    "classifier_steps": "300",
    "counterfactual_layers": "3",
    "steps": "20",
    "lr": "1e-3",
    "validate_every": "10",
}


@pytest.fixture
def trained_serac(tiny_llama, synthetic_training_set):
    summary = train(
        "serac", train_data="synthetic_en", model="tiny-llama", overrides=SETTINGS, progress=False
    )
    hparams = SERACHparams(
        **{k: (float(v) if "lr" in k else int(v)) for k, v in SETTINGS.items()}, train_data="synthetic_en"
    )
    editor = SERAC(hparams)
    context = EditorContext(cache_dir=None, model_id=tiny_llama.fingerprint, training_set="synthetic_en")
    editor.prepare(tiny_llama.model, tiny_llama.tokenizer, context)
    return editor, summary


def test_training_reports_the_classifier_and_the_counterfactual_model(trained_serac):
    _, summary = trained_serac
    assert summary["classifier"]["scope_recall"] == 1.0
    assert summary["classifier"]["scope_false_positive_unrelated"] == 0.0
    assert summary["final"]["step"] == 20
    assert summary["final"]["val_nll"] < summary["before"]["val_nll"]
    assert summary["counterfactual_model"] == "first 3 layers of the base model"


def test_in_scope_queries_go_to_the_counterfactual_model_and_others_to_the_base(
    trained_serac, tiny_llama, synthetic_training_set
):
    editor, _ = trained_serac
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    example = synthetic_training_set.examples(None)[0]
    request = EditRequest(example.prompt, example.target, example.subject, "en")
    pairs = [(example.rephrase, example.target), ("What do bees make?", "honey")]
    edit = editor.apply(model, tokenizer, [request])
    answers = edit.answers(model, tokenizer, pairs, "teacher_forced", 16)

    assert edit.info["routed"] == [True, False]
    assert edit.info["scope_scores"][0] >= 0.5 > edit.info["scope_scores"][1]
    (counterfactual,) = read_answers(
        editor.counterfactual,
        tokenizer,
        [(f"New Fact: {example.prompt} {example.target}\nPrompt: {example.rephrase}", example.target)],
        "teacher_forced",
        16,
    )
    (base,) = read_answers(model, tokenizer, [pairs[1]], "teacher_forced", 16)
    assert answers == [counterfactual, base]


def test_restore_empties_the_memory_and_leaves_the_model_untouched(trained_serac, tiny_llama):
    editor, _ = trained_serac
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    before = {n: p.clone() for n, p in model.named_parameters()}
    requests = [
        EditRequest("The capital of Zorbania is", "Lunaris", "Zorbania", "en"),
        EditRequest("The capital of Quellia is", "Ostberg", "Quellia", "en"),
    ]
    edit = editor.apply(model, tokenizer, requests)
    assert editor.memory == requests and editor.memory_embeddings.shape == (2, editor.hparams.classifier_rank)
    edit.restore()
    assert editor.memory == [] and editor.memory_embeddings.shape == (0, editor.hparams.classifier_rank)
    assert edit.touched == []
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    scores, _ = editor.scope(["The capital of Zorbania is"])
    assert scores.tolist() == [0.0]  # nothing in memory: everything goes to the base model


def test_the_counterfactual_model_shares_embeddings_and_copies_the_first_layers(tiny_llama):
    model = tiny_llama.model
    small = counterfactual_model(model, 2)
    assert small.config.num_hidden_layers == 2
    assert small.get_input_embeddings().weight is model.get_input_embeddings().weight
    assert not small.get_input_embeddings().weight.requires_grad
    for name, parameter in small.named_parameters():
        if name.startswith("model.layers."):
            assert torch.equal(parameter, model.get_parameter(name)) and parameter.requires_grad
    with pytest.raises(ValueError, match="counterfactual_layers=9 exceeds the model's 4"):
        counterfactual_model(model, 9)
