"""Ability tasks in the core: option scoring and generation after a cached few-shot context equal the
plain computation, prediction files, `--editor none` runs with a cached baseline, and `--then` on the
model that holds every edit of a sequential run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from harness import abilities
from harness.abilities import PredictionFileError, read_predictions
from harness.answers import SharedPrefix, output_logits
from harness.api import AbilityQuery
from harness.config import ConfigError
from harness.hookspecs import hookimpl
from harness.report import table
from harness.runner import run
from harness.uncertainty import bootstrap_stderr

CONTEXT = "Question: Is the sky blue?\nAnswer: yes\n\n"
QUESTIONS = ["Is fire cold?", "Is water wet?", "Do fish swim?"]
GOLD = [" no", " yes", " yes"]


@dataclass(frozen=True)
class YesNo:
    """A three-example yes/no ability task (choices), or with ``generate`` a free-text one."""

    generate: bool = False
    kind: str = "ability"
    description: str = "test yes/no questions"
    metric: str = "accuracy"
    default_limit: int = 2
    template: str = ""

    @property
    def name(self) -> str:
        return "test_yes_no_generate" if self.generate else "test_yes_no"

    def data_files(self, data_dir):
        return [Path(__file__)]

    def examples(self, data_dir):
        return [{"id": f"q{i}", "question": q, "answer": a} for i, (q, a) in enumerate(zip(QUESTIONS, GOLD))]

    def context(self, data_dir, render):
        return CONTEXT

    def queries(self, examples, render):
        if self.generate:
            return [
                AbilityQuery(e["id"], f"Question: {e['question']}\nAnswer:", max_new_tokens=4)
                for e in examples
            ]
        return [
            AbilityQuery(e["id"], f"Question: {e['question']}\nAnswer:", options=(" yes", " no"))
            for e in examples
        ]

    def score(self, examples, predictions):
        right = [p.strip() == e["answer"].strip() for e, p in zip(examples, predictions)]
        return {"accuracy": 100.0 * sum(right) / len(right)}


class TestTasks:
    @hookimpl
    def register_tasks(self, register):
        register(YesNo())
        register(YesNo(generate=True))


@pytest.fixture
def yes_no(register_plugin, monkeypatch):
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    register_plugin(TestTasks())
    return YesNo()


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special).input_ids


def test_option_scores_after_a_cached_context_equal_the_plain_computation(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    context = _ids(tokenizer, CONTEXT, True)
    prompt = _ids(tokenizer, "Question: Is fire cold?\nAnswer:", False)
    options = (" yes", " no", " maybe not")
    cached = abilities.option_log_probs(
        model, tokenizer, SharedPrefix.encode(model, context), prompt, options
    )
    for option, score in zip(options, cached):
        option_ids = _ids(tokenizer, option, False)
        full = torch.tensor([context + prompt + option_ids])
        with torch.no_grad():
            hidden = model.base_model(input_ids=full).last_hidden_state[0]
        start = len(context) + len(prompt)
        log_probs = torch.log_softmax(output_logits(model, hidden[start - 1 : -1]).float(), dim=-1)
        expected = log_probs[torch.arange(len(option_ids)), torch.tensor(option_ids)].mean().item()
        assert score == pytest.approx(expected, abs=1e-5)


def test_generation_after_a_cached_context_equals_greedy_generate_cut_at_the_stop(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    context = _ids(tokenizer, CONTEXT, True)
    query = AbilityQuery("q", "Question: Is fire cold?\nAnswer:", max_new_tokens=6, stop=("\n",))
    line = abilities.answer_query(model, tokenizer, SharedPrefix.encode(model, context), query)
    prompt = torch.tensor([context + _ids(tokenizer, query.prompt, False)])
    out = model.generate(
        input_ids=prompt, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    greedy = tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True)
    assert greedy.startswith(line["generated"])
    assert line["prediction"] == greedy.split("\n")[0].strip()


def test_an_empty_context_asks_as_the_plain_computation(tiny_llama):
    """A zero-shot task under a tokenizer that adds no BOS has no context ids at all."""
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    prompt = _ids(tokenizer, "Question: Is fire cold?\nAnswer:", False)
    empty = abilities.encode_context(model, [])
    query = AbilityQuery("q", "Question: Is fire cold?\nAnswer:", max_new_tokens=5, stop=())
    line = abilities.answer_query(model, tokenizer, empty, query)
    out = model.generate(
        input_ids=torch.tensor([prompt]),
        max_new_tokens=5,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    assert line["generated"] == tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True)
    cached = abilities.option_log_probs(
        model, tokenizer, abilities.encode_context(model, []), prompt, (" no",)
    )
    option = _ids(tokenizer, " no", False)
    with torch.no_grad():
        hidden = model.base_model(input_ids=torch.tensor([prompt + option])).last_hidden_state[0]
    log_probs = torch.log_softmax(output_logits(model, hidden[len(prompt) - 1 : -1]).float(), dim=-1)
    expected = log_probs[torch.arange(len(option)), torch.tensor(option)].mean().item()
    assert cached[0] == pytest.approx(expected, abs=1e-5)


def test_cut_at_stop_takes_the_earliest_stop():
    assert abilities.cut_at_stop(" 42\n\nQuestion: next", ("Question:", "\n\n")) == "42"
    assert abilities.cut_at_stop("no stop here ", ("\n",)) == "no stop here"


def test_prediction_files_need_one_prediction_per_example(tmp_path):
    examples = [{"id": "a"}, {"id": "b"}]
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"id": "b", "prediction": "2"}\n{"id": "a", "prediction": "1"}\n')
    assert read_predictions(path, examples) == ["1", "2"]
    for text, problem in [
        ('{"id": "a", "prediction": "1"}\n', "no prediction for 1 example"),
        ('{"id": "a", "prediction": "1"}\n{"id": "a", "prediction": "1"}\n', "line 2: a second prediction"),
        ('{"id": "z", "prediction": "1"}\n', "line 1: id 'z' is not an example"),
        ('{"id": "a", "answer": "1"}\n', "line 1: needs"),
        ("not json\n", "line 1: not JSON"),
    ]:
        path.write_text(text)
        with pytest.raises(PredictionFileError, match=problem):
            read_predictions(path, examples)


def test_an_ability_task_runs_alone_with_editor_none_and_its_result_is_cached(tmp_path, yes_no, monkeypatch):
    first = run(
        editor="none", task="test_yes_no", model="tiny-llama", output_dir=str(tmp_path / "a"), progress=False
    )
    predictions = [
        json.loads(line) for line in (tmp_path / "a" / "predictions.jsonl").read_text().splitlines()
    ]
    assert [p["id"] for p in predictions] == ["q0", "q1"]  # default_limit examples
    assert all(p["prediction"] in (" yes", " no") and len(p["option_scores"]) == 2 for p in predictions)
    right = [p["prediction"] == g for p, g in zip(predictions, GOLD)]
    assert first["results"]["test_yes_no"] == {
        "accuracy": 100.0 * sum(right) / 2,
        # a mean over examples: its resampled stderr is the plain bootstrap of the per-example scores
        "accuracy_stderr": pytest.approx(bootstrap_stderr([100.0 * r for r in right])),
    }
    assert first["task"]["kind"] == "ability" and first["n-samples"] == {"test_yes_no": 2}
    row = next(line for line in table(first).splitlines() if line.startswith("test_yes_no"))
    scores = first["results"]["test_yes_no"]
    assert row.split() == [
        "test_yes_no",
        "none",
        "accuracy",
        f"{scores['accuracy']:.2f}",
        "±",
        f"{scores['accuracy_stderr']:.2f}",
    ]

    def refuse(*args, **kwargs):
        raise AssertionError("the cached baseline should have been used")

    monkeypatch.setattr(abilities, "answer_query", refuse)
    again = run(
        editor="none", task="test_yes_no", model="tiny-llama", output_dir=str(tmp_path / "b"), progress=False
    )
    assert again["results"] == first["results"]
    with pytest.raises(AssertionError, match="cached baseline"):  # --limit 0: all three, not cached
        run(
            editor="none",
            task="test_yes_no",
            model="tiny-llama",
            limit=0,
            output_dir=str(tmp_path / "c"),
            progress=False,
        )


def test_an_interrupted_ability_run_resumes_from_its_predictions(tmp_path, yes_no, monkeypatch):
    asked = []
    original = abilities.answer_query

    def interrupting(model, tokenizer, prefix, query):
        if len(asked) == 1:
            raise KeyboardInterrupt
        asked.append(query.example_id)
        return original(model, tokenizer, prefix, query)

    monkeypatch.setattr(abilities, "answer_query", interrupting)
    settings = dict(editor="none", task="test_yes_no_generate", model="tiny-llama", limit=3, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run(output_dir=str(tmp_path / "a"), **settings)
    monkeypatch.setattr(abilities, "answer_query", lambda *a: asked.append(a[3].example_id) or original(*a))
    resumed = run(output_dir=str(tmp_path / "a"), **settings)
    assert asked == ["q0", "q1", "q2"]  # q0 was not asked again
    lines = [json.loads(line) for line in (tmp_path / "a" / "predictions.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == ["q0", "q1", "q2"]
    right = [line["prediction"] == gold.strip() for line, gold in zip(lines, GOLD)]
    assert resumed["results"]["test_yes_no_generate"]["accuracy"] == 100.0 * sum(right) / 3


def test_then_measures_the_model_holding_every_edit_beside_the_cached_unedited_result(
    tmp_path, yes_no, monkeypatch, tiny_llama
):
    unedited = run(
        editor="none", task="test_yes_no", model="tiny-llama", output_dir=str(tmp_path / "u"), progress=False
    )
    weights_seen = []
    original = abilities.answer_query

    def watching(model, tokenizer, prefix, query):
        weights_seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return original(model, tokenizer, prefix, query)

    monkeypatch.setattr(abilities, "answer_query", watching)
    out = tmp_path / "edited"
    results = run(
        editor="ft-m",
        task="bizsre_en_zh",
        model="tiny-llama",
        overrides={"steps": 3},
        limit=2,
        mode="sequential",
        then="test_yes_no",
        output_dir=str(out),
        progress=False,
    )
    entry = results["then"]["test_yes_no"]
    assert entry["unedited"] == unedited["results"]["test_yes_no"]  # cached: not asked again
    assert len(weights_seen) == 2  # the two examples, asked once, after the edits
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    touched = {name for sample in samples for name in sample["touched"]}
    params = dict(tiny_llama.model.named_parameters())
    assert touched and all(not torch.equal(weights_seen[0][name], params[name]) for name in touched)
    assert all(torch.equal(weights_seen[0][n], p) for n, p in params.items() if n not in touched)
    lines = [
        json.loads(line)
        for line in (out / "then" / "test_yes_no" / "predictions.jsonl").read_text().splitlines()
    ]
    right = [line["prediction"] == gold for line, gold in zip(lines, GOLD)]
    assert entry["edited"]["accuracy"] == 100.0 * sum(right) / 2
    assert entry["change"] == {"accuracy": entry["edited"]["accuracy"] - entry["unedited"]["accuracy"]}
    (low, high), change = entry["change_ci95"]["accuracy"], entry["change"]["accuracy"]
    assert low <= change <= high and set(entry["change_ci95"]) == {"accuracy"}
    before = [json.loads(line)["prediction"] for line in (tmp_path / "u" / "predictions.jsonl").open()]
    if [line["prediction"] for line in lines] == before:  # the same answers: no change in any resample
        assert entry["change_ci95"]["accuracy"] == [0.0, 0.0]
    assert "ability task" in table(results) and f"{entry['change']['accuracy']:+.2f}" in table(results)


def test_then_and_ability_tasks_are_refused_where_they_cannot_mean_anything(tmp_path, yes_no):
    common = dict(model="tiny-llama", output_dir=str(tmp_path), progress=False)
    with pytest.raises(ConfigError, match="needs an accumulating mode"):
        run(editor="ft-m", task="bizsre_en_zh", then="test_yes_no", **common)
    with pytest.raises(ConfigError, match="not an ability task"):
        run(editor="ft-m", task="bizsre_en_zh", mode="sequential", then="bizsre_zh_en", **common)
    with pytest.raises(ConfigError, match="measures a model, not an edit"):
        run(editor="ft-m", task="test_yes_no", **common)
