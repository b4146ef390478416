"""The training core: held-out split, checkpoint keys, resumable sessions, the untrained-editor error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness import training
from harness.api import EditorContext
from harness.runner import run, train
from harness.training import TrainingData, TrainingRequired, TrainingSettings, split
from harness_plugins.methods.mend.editor import MEND, MENDHparams
from harness_plugins.methods.serac.editor import SERACHparams

TINY_MEND = {
    "train_limit": "0",
    "validation_size": "4",
    "steps": "12",
    "validate_every": "4",
    "norm_examples": "6",
}


def _data(training_set) -> TrainingData:
    return TrainingData("synthetic_en", "en", training_set.examples(None), {"f": "0"})


def test_split_holds_out_the_tail_and_growing_the_limit_only_adds_examples(synthetic_training_set):
    data = _data(synthetic_training_set)
    small, held_out = split(data, TrainingSettings(train_limit=5, validation_size=4))
    large, held_out_again = split(data, TrainingSettings(train_limit=10, validation_size=4))
    assert held_out == held_out_again == data.examples[-4:]
    assert small == data.examples[:5] and large[:5] == small and len(large) == 10
    assert split(data, TrainingSettings(train_limit=0, validation_size=4))[0] == data.examples[:20]
    with pytest.raises(ValueError, match="train_limit=21, but training set synthetic_en has only 20"):
        split(data, TrainingSettings(train_limit=21, validation_size=4))


def test_checkpoint_key_ignores_runtime_only_settings_and_the_spelling_of_the_data_name(
    synthetic_training_set,
):
    data = _data(synthetic_training_set)
    base = training.checkpoint_dir("serac", SERACHparams(), "model", data)
    assert training.checkpoint_dir("serac", SERACHparams(threshold=0.9), "model", data) == base
    assert training.checkpoint_dir("serac", SERACHparams(train_data="synthetic_en"), "model", data) == base
    assert training.checkpoint_dir("serac", SERACHparams(lr=1.0), "model", data) != base
    assert training.checkpoint_dir("serac", SERACHparams(), "other-model", data) != base
    assert training.checkpoint_dir("serac", SERACHparams(train_limit=5), "model", data) != base


def test_editing_with_an_untrained_editor_says_how_to_train_it(tiny_llama, synthetic_training_set):
    context = EditorContext(
        cache_dir=None,
        model_id=tiny_llama.fingerprint,
        model_name="tiny-llama",
        training_set="synthetic_en",
    )
    with pytest.raises(TrainingRequired) as error:
        MEND(MENDHparams(train_limit=7)).prepare(tiny_llama.model, tiny_llama.tokenizer, context)
    assert "harness train --editor mend --model tiny-llama --train-data synthetic_en --train-limit 7" in str(
        error.value
    )


def test_the_suggested_training_command_carries_the_hparams_the_checkpoint_depends_on(
    tiny_llama, synthetic_training_set
):
    context = EditorContext(
        cache_dir=None,
        model_id=tiny_llama.fingerprint,
        model_name="tiny-llama",
        training_set="synthetic_en",
    )
    hparams = MENDHparams(train_limit=7, validation_size=4, layers=(0, 1), steps=2, norm_examples=2)
    with pytest.raises(TrainingRequired) as error:
        MEND(hparams).prepare(tiny_llama.model, tiny_llama.tokenizer, context)
    command = str(error.value).splitlines()[-1].strip()
    assert command == (
        "harness train --editor mend --model tiny-llama --train-data synthetic_en --train-limit 7 "
        "--set layers=0,1 --set norm_examples=2 --set steps=2 --set validation_size=4"
    )
    # run as printed, it trains exactly the checkpoint the editor looks for
    overrides = dict(pair.split("=") for pair in command.split(" --set ")[1:])
    train(
        "mend",
        train_data="synthetic_en",
        train_limit=7,
        model="tiny-llama",
        overrides=overrides,
        progress=False,
    )
    MEND(hparams).prepare(tiny_llama.model, tiny_llama.tokenizer, context)


def test_editors_that_need_no_training_are_refused_by_train():
    with pytest.raises(
        ValueError, match=r"editor 'rome' needs no training; editors that train: \['mend', 'serac'\]"
    ):
        train("rome", train_data="zsre_en")


def _checkpoint(summary) -> dict:
    return torch.load(summary["checkpoint"], weights_only=True)


def test_a_killed_training_resumes_to_the_same_checkpoint(
    synthetic_training_set, tmp_path, monkeypatch, harness_cache
):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "straight"))
    (tmp_path / "straight").mkdir()
    (tmp_path / "straight" / "models").symlink_to(harness_cache / "models")
    straight = train(
        "mend", train_data="synthetic_en", model="tiny-llama", overrides=TINY_MEND, progress=False
    )

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "killed"))
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / "models").symlink_to(harness_cache / "models")
    original = training.TrainingSession.save_progress
    saves = []

    def save_then_die(self, step, state):
        original(self, step, state)
        saves.append(step)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.TrainingSession, "save_progress", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train("mend", train_data="synthetic_en", model="tiny-llama", overrides=TINY_MEND, progress=False)
    monkeypatch.setattr(training.TrainingSession, "save_progress", original)
    resumed = train(
        "mend", train_data="synthetic_en", model="tiny-llama", overrides=TINY_MEND, progress=False
    )

    assert saves == [4, 8]
    first, second = _checkpoint(straight), _checkpoint(resumed)
    for part in ("transforms", "log_step_sizes"):
        assert first[part].keys() == second[part].keys()
        assert all(torch.equal(first[part][k], second[part][k]) for k in first[part])
    log = (Path(resumed["checkpoint"]).parent / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in log]
    assert [m["step"] for m in metrics] == [0, 4, 8, 12]
    assert resumed["train_examples"] == 20 and resumed["validation_examples"] == 4
    again = train("mend", train_data="synthetic_en", model="tiny-llama", overrides=TINY_MEND, progress=False)
    # already trained: found, not retrained, with the same summary and provenance
    assert again == json.loads(json.dumps(resumed))
    assert again["data"]["name"] == "synthetic_en" and again["editor"] == "mend"


def test_a_run_reports_the_checkpoint_its_editor_loaded(synthetic_training_set, tmp_path):
    summary = train(
        "mend", train_data="synthetic_en", model="tiny-llama", overrides=TINY_MEND, progress=False
    )
    results = run(
        editor="mend",
        task="bizsre_en_zh",
        model="tiny-llama",
        limit=1,
        overrides={**TINY_MEND, "train_data": "synthetic_en"},
        output_dir=str(tmp_path / "run"),
        progress=False,
    )
    key = Path(summary["checkpoint"]).parent.name
    assert results["training"] == {
        "checkpoint": key,
        "data": summary["data"],
        "train_examples": 20,
        "validation_examples": 4,
        "selected": summary["selected"],
        "training_seconds": summary["training_seconds"],
    }
    stored = json.loads((tmp_path / "run" / "results.json").read_text())
    assert stored["training"]["checkpoint"] == key
    assert "training" not in run(
        editor="ft-m",
        task="bizsre_en_zh",
        model="tiny-llama",
        limit=1,
        output_dir=str(tmp_path / "plain"),
        progress=False,
    )


def _scalar_loop(session, steps: int) -> tuple[dict, torch.nn.Parameter]:
    """A one-parameter run whose validation loss |x - 3| is best at step 3 and worse after."""
    x = torch.nn.Parameter(torch.zeros(()))
    optimiser = torch.optim.SGD([x], lr=1.0)

    def step(index: int) -> dict[str, float]:
        optimiser.zero_grad()
        (-x).backward()  # gradient -1: x grows by exactly 1 per step
        optimiser.step()
        return {"x": x.item()}

    lines = training.train_loop(
        session,
        steps,
        1,
        step,
        lambda: {"distance": abs(x.item() - 3.0)},
        lambda: {"x": x.detach()},
        lambda state: x.data.copy_(state["x"]),
        optimiser,
        "scalar",
        select="distance",
    )
    return lines, x


def test_train_loop_keeps_the_best_validation_state_across_a_resume(tmp_path, monkeypatch):
    (tmp_path / "straight").mkdir()

    def session() -> training.TrainingSession:
        return training.TrainingSession(tmp_path, train=[], validation=[], progress=False)

    straight, x = _scalar_loop(training.TrainingSession(tmp_path / "straight", [], [], progress=False), 6)
    assert x.item() == 3.0  # the state of step 3, not of step 6
    assert straight["selected"]["step"] == 3 and straight["final"]["step"] == 6

    original = training.TrainingSession.save_progress

    def die_after_step_5(self, step, state):
        original(self, step, state)
        if step == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.TrainingSession, "save_progress", die_after_step_5)
    with pytest.raises(KeyboardInterrupt):
        _scalar_loop(session(), 6)
    monkeypatch.setattr(training.TrainingSession, "save_progress", original)
    resumed, x = _scalar_loop(session(), 6)
    assert x.item() == 3.0
    assert resumed["selected"]["step"] == 3 and [m["step"] for m in session().metrics()] == list(range(7))
