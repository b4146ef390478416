"""Every tensor the harness creates follows the model's runtime.

With ``torch.set_default_device("meta")`` in force while the model lives on the CPU, a tensor made
without naming its device lands on the meta device and the first operation mixing it with the model's
CPU tensors fails. So each editor's prepare, one edit, its probes and its restore, the ability tasks,
and one training step of SERAC and MEND run here under that default: on a GPU the same tensors would
have been a crash or a silent copy. Every editor also runs so on the model in bfloat16, the dtype path
(on the demo model that path is tests/test_bfloat16.py, most of it opt-in: bfloat16 matmuls are
about 15 times slower than float32 ones on a CPU without native bfloat16).
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from harness import abilities, plugins, training
from harness.api import EditorContext, EditRequest
from harness.config import build
from harness.models import cache_dir

REQUEST = EditRequest("The capital of Zorbania is", "Lunaris", "Zorbania", "en", "r0")
PROBES = [("The capital of Zorbania is", "Lunaris"), ("What do bees make?", "honey")]

# small hparams so each editor runs in seconds on the tiny model
SETTINGS = {
    "rome": {
        "layer": 1,
        "steps": 3,
        "context_lengths": (3,),
        "contexts_per_length": 1,
        "second_moments": True,
        "second_moment_tokens": 200,
    },
    "memit": {
        "layers": (1, 2),
        "steps": 3,
        "context_lengths": (3,),
        "contexts_per_length": 1,
        "second_moment_tokens": 200,
    },
    "ft-l": {"layers": (1,), "steps": 2},
    "rect-ft-m": {"layers": (1,), "steps": 2, "rect": 0.3},
    "lora": {"layers": (1,), "steps": 2},
    "grace": {"layer": 1, "steps": 2},
    "wise": {"layer": 1, "steps": 2, "shard_size": 1},
    "ft-m": {"layers": (1,), "steps": 2},
    "kn": {"layers": (1, 2), "steps": 3},
    "ike": {"k": 3, "encoder": "char-ngram", "train_data": "synthetic_en"},
}
SETTINGS |= {name: SETTINGS["rome"] for name in ("r-rome", "emmet")}
SETTINGS["rect-rome"] = {**SETTINGS["rome"], "rect": 0.3}
SETTINGS["alphaedit"] = {**SETTINGS["memit"], "null_space_threshold": 0.1}
TRAINED = {
    "serac": {
        "train_limit": 0,
        "classifier_layer": 2,
        "classifier_steps": 2,
        "counterfactual_layers": 2,
        "steps": 1,
        "batch_size": 2,
        "validate_every": 1,
        "validation_size": 4,
        "train_data": "synthetic_en",
    },
    "mend": {
        "train_limit": 0,
        "steps": 1,
        "norm_examples": 2,
        "validate_every": 1,
        "validation_size": 4,
        "validation_examples": 2,
        "train_data": "synthetic_en",
        "layers": (2, 3),
    },
}


@contextlib.contextmanager
def meta_default():
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def _editor(name: str, settings: dict):
    editor_class = plugins.lookup("editor", name, plugins.editors())
    return editor_class(build(editor_class.hparams_class, settings, f"{name} hparams"))


def _context(lm) -> EditorContext:
    return EditorContext(
        cache_dir=cache_dir(),
        model_id=lm.fingerprint,
        model_name="tiny-llama",
        languages=("en",),
        training_set="synthetic_en",
    )


def _prepare_edit_probe_restore(editor, lm, context: EditorContext) -> torch.Tensor:
    """The first edit's change to the weights (float32, flattened), after checking that the editor
    prepares, edits, answers and restores bit for bit with the meta device as the default."""
    before = {name: p.detach().clone() for name, p in lm.model.named_parameters()}
    with meta_default():
        editor.prepare(lm.model, lm.tokenizer, context)
        edit = editor.apply(lm.model, lm.tokenizer, [REQUEST])
        change = torch.cat(
            [(p.detach().float() - before[n].float()).flatten() for n, p in lm.model.named_parameters()]
        )
        if editor.capabilities.memory:  # a second edit on top of the first: the memory grows (merges)
            second = editor.apply(lm.model, lm.tokenizer, [REQUEST])
            state = editor.memory_state()
            editor.clear_memory(lm.model)
            editor.load_memory_state(lm.model, state)
        answers = edit.answers(lm.model, lm.tokenizer, PROBES, "teacher_forced", 16)
        generated = edit.answers(lm.model, lm.tokenizer, PROBES, "generate", 16)
        if editor.capabilities.memory:
            second.restore()
        edit.restore()
    assert len(answers) == len(generated) == len(PROBES)
    assert all(p.device.type == "cpu" for p in lm.model.parameters())
    assert {p.dtype for p in lm.model.parameters()} == {lm.model.dtype}
    for name, parameter in lm.model.named_parameters():
        assert torch.equal(parameter, before[name]), name
    return change


def _settings(name: str) -> dict:
    settings = dict(SETTINGS[name])
    if name in ("rome", "memit", "r-rome", "emmet", "rect-rome", "alphaedit"):
        settings["second_moment_corpus"] = ("zsre_train/train_en_10000.tsv",)
    return settings


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_editor_creates_every_tensor_on_the_model_device(name, tiny_llama, synthetic_training_set, data_dir):
    context = dataclasses.replace(_context(tiny_llama), data_dir=data_dir)
    _prepare_edit_probe_restore(_editor(name, _settings(name)), tiny_llama, context)


# AlphaEdit's size penalty (l2 = 10, tuned for real models) shrinks the tiny model's update below
# bfloat16's resolution (about half of it survives the rounding); a small penalty lets it through
BF16_SETTINGS = {"alphaedit": {"l2": 1e-2}}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_editor_in_bfloat16_writes_the_float32_change(
    name, tiny_llama, tiny_llama_bf16, synthetic_training_set, data_dir
):
    """The dtype path for every editor: in bfloat16 the model stays bfloat16, every tensor follows the
    runtime, the restore is bit for bit, and a weight editor's change points where float32's does."""
    settings = _settings(name) | BF16_SETTINGS.get(name, {})
    changes = [
        _prepare_edit_probe_restore(
            _editor(name, settings), lm, dataclasses.replace(_context(lm), data_dir=data_dir)
        )
        for lm in (tiny_llama, tiny_llama_bf16)
    ]
    full, half = changes
    if name in ("grace", "wise", "ike"):  # memories and prompts: the weights never change
        assert not full.any() and not half.any()
        return
    cosine = torch.nn.functional.cosine_similarity(full, half, dim=0).item()
    assert cosine >= 0.99, f"{name}: the bfloat16 change has cosine {cosine:.4f} with float32's"
    assert half.norm() == pytest.approx(full.norm().item(), rel=0.05)


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_llama_bf16"])  # SERAC and MEND train in bf16 too
@pytest.mark.parametrize("name", sorted(TRAINED))
def test_training_step_and_edit_follow_the_model_device(name, model, request, synthetic_training_set):
    lm = request.getfixturevalue(model)
    editor = _editor(name, TRAINED[name])
    hparams = editor.hparams
    data = training.load_training_set("synthetic_en", None, name)
    train_examples, validation = training.split(data, hparams)
    extra = editor.checkpoint_extra()
    directory = training.checkpoint_dir(name, hparams, lm.fingerprint, data, extra)
    directory.mkdir(parents=True, exist_ok=True)
    session = training.TrainingSession(directory, train_examples, validation, 0, False, {})
    with meta_default():
        summary = editor.train(lm.model, lm.tokenizer, session, _context(lm))
    assert summary["final"]["step"] == 1
    _prepare_edit_probe_restore(_editor(name, TRAINED[name]), lm, _context(lm))


@pytest.mark.parametrize("task_name", ["general_nli", "general_open_qa"])
def test_ability_tasks_follow_the_model_device(task_name, tiny_llama, data_dir, tmp_path):
    task = plugins.lookup("task", task_name, plugins.tasks(data_dir))
    setup = abilities.AbilitySetup.of(task, data_dir, 2)
    with meta_default():
        result = setup.evaluate(tiny_llama.model, tiny_llama.tokenizer, tmp_path / task_name, progress=False)
    assert task.metric in result["metrics"]
