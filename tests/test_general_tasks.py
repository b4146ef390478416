"""The general-ability tasks: real data read as documented, hand-made prediction files scored
exactly, and the scoring functions (GSM8K numbers, SQuAD normalisation, entity spans and F1, ROUGE)
on crafted cases."""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from harness import plugins
from harness.abilities import score_prediction_file
from harness.templates import Templates
from harness_plugins.tasks.general.scoring import (
    answer_matches,
    entity_scores,
    entity_spans,
    final_number,
    normalise_answer,
    parse_entities,
    rouge_scores,
)

ROOT = Path(__file__).resolve().parents[1]
NAMES = (
    "general_reasoning",
    "general_nli",
    "general_open_qa",
    "general_closed_qa",
    "general_dialogue",
    "general_summarization",
    "general_ner",
    "general_sentiment",
)
# The first evaluation example of each file, right after the demonstrations.
FIRST_IDS = {
    "general_reasoning": "3",
    "general_nli": "4",
    "general_open_qa": "5",
    "general_closed_qa": "2",
    "general_dialogue": "dev_5",  # dev_2-4 continue the demonstration's conversation
    "general_summarization": "13716628",
    "general_ner": "3",
    "general_sentiment": "6",
}
RECORDS = {  # records in each file (NER: sentences)
    "general_reasoning": 1319,
    "general_nli": 2489,
    "general_open_qa": 3610,
    "general_closed_qa": 3267,
    "general_dialogue": 886,
    "general_summarization": 818,
    "general_ner": 3250,
    "general_sentiment": 872,
}
SAME_SOURCE = {"general_dialogue": 3}  # evaluation examples left out: they share a demonstration's source
CHOICES = {
    "general_nli": (" yes", " no"),
    "general_closed_qa": (" yes", " no"),
    "general_sentiment": (" positive", " negative"),
}
LIMIT = 20


@pytest.fixture(scope="module")
def tasks():
    return plugins.tasks()


@pytest.fixture(scope="module")
def render():
    return Templates([str(ROOT / "templates")]).render


@pytest.fixture(scope="module")
def examples(tasks, data_dir):
    return {name: tasks[name].examples(data_dir) for name in NAMES}


def test_registers_all_eight_ability_tasks(tasks):
    assert set(NAMES) <= set(tasks)
    for name in NAMES:
        task = tasks[name]
        assert (task.name, task.kind) == (name, "ability")
        assert task.template == f"general/{name.removeprefix('general_')}.jinja"
        assert task.default_limit > 0 and task.description


# --- hand-made prediction files for the first 20 real examples ---------------------------------


def reasoning_predictions(examples, right):
    """A model's solution: GSM8K's own (ends "#### N") or a sentence "The answer is N." with the
    number as the file writes it (thousands commas); wrong ones are off by one."""
    predictions = []
    for index, example in enumerate(examples):
        written = example["solution"].rsplit("####", 1)[1].strip()
        if not right:
            predictions.append(f" So the total is {Decimal(written.replace(',', '')) + 1}.")
        elif index % 2:
            predictions.append(f" Working it out step by step. The answer is {written}.")
        else:
            predictions.append(" " + example["solution"])
    return predictions


def nli_predictions(examples, right):
    return [" yes" if (e["label"] == "entailment") == right else " no" for e in examples]


def closed_qa_predictions(examples, right):
    return [" yes" if e["label"] == right else " no" for e in examples]


def sentiment_predictions(examples, right):
    return [" positive" if (e["label"] == "1") == right else " negative" for e in examples]


def open_qa_predictions(examples, right):
    return [" " + e["answers"][0] if right else " Napoleon Bonaparte" for e in examples]


def dialogue_predictions(examples, right):
    """The chosen candidate's text as the option string (leading space); wrong: the next candidate."""
    index = "ABCD".index
    return [" " + e["candidates"][(index(e["letter"]) + (0 if right else 1)) % 4] for e in examples]


def summarization_predictions(examples, right):
    return [" " + e["summary"] if right else " zzzz qqqq" for e in examples]


def ner_predictions(examples, right):
    if not right:
        return ["none"] * len(examples)
    return [" " + ("; ".join(f"{text} ({kind})" for kind, text in e["entities"]) or "none") for e in examples]


PREDICTIONS = {
    "general_reasoning": reasoning_predictions,
    "general_nli": nli_predictions,
    "general_open_qa": open_qa_predictions,
    "general_closed_qa": closed_qa_predictions,
    "general_dialogue": dialogue_predictions,
    "general_summarization": summarization_predictions,
    "general_ner": ner_predictions,
    "general_sentiment": sentiment_predictions,
}
ALL_KEYS = {
    "general_summarization": {"rouge1", "rouge2", "rougeL", "rouge_mean"},
    "general_ner": {"precision", "recall", "f1"},
}


def write_predictions(path: Path, examples, predictions) -> Path:
    lines = [json.dumps({"id": e["id"], "prediction": p}) for e, p in zip(examples, predictions)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("name", NAMES)
def test_prediction_files_score_exactly(name, tasks, examples, data_dir, tmp_path):
    task, first = tasks[name], examples[name][:LIMIT]
    perfect = write_predictions(tmp_path / "perfect.jsonl", first, PREDICTIONS[name](first, right=True))
    wrong = write_predictions(tmp_path / "wrong.jsonl", first, PREDICTIONS[name](first, right=False))
    keys = ALL_KEYS.get(name, {task.metric})
    assert score_prediction_file(task, data_dir, perfect, limit=LIMIT) == dict.fromkeys(keys, 100.0)
    assert score_prediction_file(task, data_dir, wrong, limit=LIMIT) == dict.fromkeys(keys, 0.0)


def test_the_first_examples_have_both_labels(examples):
    """So that the "wrong" files above are not one constant answer that happens to be wrong."""
    assert {e["label"] for e in examples["general_nli"][:LIMIT]} == {"entailment", "not_entailment"}
    assert {e["label"] for e in examples["general_closed_qa"][:LIMIT]} == {True, False}
    assert {e["label"] for e in examples["general_sentiment"][:LIMIT]} == {"0", "1"}
    assert len({e["letter"] for e in examples["general_dialogue"][:LIMIT]}) == 4


def test_dialogue_accepts_the_gold_letter(tasks, examples):
    first = examples["general_dialogue"][:LIMIT]
    task = tasks["general_dialogue"]
    assert task.score(first, [e["letter"] for e in first]) == {"accuracy": 100.0}
    half = [e["letter"] if i % 2 else "E" for i, e in enumerate(first)]
    assert task.score(first, half) == {"accuracy": 50.0}


def test_known_examples_of_the_real_files(examples):
    james = examples["general_reasoning"][0]
    assert james["question"].startswith("James decides to run 3 sprints") and james["answer"] == "540"
    assert examples["general_ner"][0]["entities"] == [
        ["ORG", "Essex"],
        ["ORG", "Derbyshire"],
        ["ORG", "Surrey"],
        ["ORG", "Kent"],
        ["ORG", "Nottinghamshire"],
    ]
    assert examples["general_dialogue"][0]["letter"] == "C"
    assert examples["general_open_qa"][0]["answers"] == ["Cyrus"]
    assert examples["general_summarization"][1]["summary"] == (
        "Madison is pregnant but she doesn't want to talk about it. Patricia Stevens got married and "
        "she thought she was pregnant."
    )


# --- demonstrations, context and queries ------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_context_holds_only_the_demonstrations(name, tasks, examples, data_dir, render):
    task, evaluated = tasks[name], examples[name]
    context = task.context(data_dir, render)
    assert [e["id"] for e in evaluated[:1]] == [FIRST_IDS[name]]
    assert len(evaluated) == RECORDS[name] - task.shots - SAME_SOURCE.get(name, 0)
    assert not {task.source(e) for e in evaluated} & {
        task.source(e) for e in task._all_examples(data_dir)[: task.shots]
    }
    assert len({e["id"] for e in evaluated}) == len(evaluated)
    assert context.endswith("\n\n") and context.count("\n\n") >= task.shots
    assert len(context.split()) < 450  # a short context for a 270M model on CPU
    (query,) = task.queries(evaluated[:1], render)
    assert query.prompt not in context


def test_context_renders_the_first_records_with_their_answers(tasks, data_dir, render):
    nli = tasks["general_nli"].context(data_dir, render)
    assert nli.startswith(
        "Premise: No Weapons of Mass Destruction Found in Iraq Yet.\n"
        "Hypothesis: Weapons of Mass Destruction Found in Iraq.\n"
        "Question: Does the premise entail the hypothesis? Answer yes or no.\n"
        "Answer: no\n\n"
        "Premise: A place of sorrow,"
    )
    sentiment = tasks["general_sentiment"].context(data_dir, render)
    assert sentiment.startswith(
        "Review: it 's a charming and often affecting journey .\nSentiment: positive\n\n"
        "Review: unflinchingly bleak and desperate\nSentiment: negative\n\n"
    )
    ner = tasks["general_ner"].context(data_dir, render)
    assert "Entities (PER, ORG, LOC, MISC): LONDON (LOC)\n\n" in ner
    assert "West Indian (MISC); Phil Simmons (PER); Leicestershire (ORG); Somerset (ORG)\n\n" in ner
    reasoning = tasks["general_reasoning"].context(data_dir, render)
    assert "She makes 9 * 2 = $18 every day at the farmer’s market.\n#### 18\n\n" in reasoning
    assert "<<" not in reasoning  # GSM8K's calculator annotations are dropped from demonstrations
    closed_qa = tasks["general_closed_qa"].context(data_dir, render)
    assert "(or ``energy returned on ...\nQuestion: does ethanol take more energy make that produces?\n" in (
        closed_qa
    )


@pytest.mark.parametrize("name", NAMES)
def test_one_query_per_example_with_the_right_options(name, tasks, examples, render):
    task, first = tasks[name], examples[name][:LIMIT]
    queries = task.queries(first, render)
    assert [q.example_id for q in queries] == [e["id"] for e in first]
    for query, example in zip(queries, first):
        if name in CHOICES:
            assert query.options == CHOICES[name]
        elif name == "general_dialogue":
            assert query.options == tuple(" " + c for c in example["candidates"])
        else:
            assert query.options == ()
    assert all(not q.prompt.endswith((" ", "\n")) for q in queries)


def test_generation_settings(tasks, examples, render):
    def first_query(name):
        return tasks[name].queries(examples[name][:1], render)[0]

    assert (first_query("general_reasoning").max_new_tokens, first_query("general_reasoning").stop) == (
        160,
        ("\n\n", "Question:"),
    )
    assert first_query("general_open_qa").max_new_tokens == 16
    assert first_query("general_summarization").max_new_tokens == 64
    assert first_query("general_ner").stop == ("\n",)
    assert (
        first_query("general_open_qa").prompt
        == "Question: who wrote the first declaration of human rights?\nAnswer:"
    )


# --- data location and malformed data -----------------------------------------------------------


def test_missing_data_names_the_task_and_the_file(tasks, tmp_path):
    task = tasks["general_nli"]
    with pytest.raises(FileNotFoundError, match="general_nli.*general/test-NLI.tsv"):
        task.examples(None)
    with pytest.raises(FileNotFoundError, match=f"general_nli.*{tmp_path}/general/test-NLI.tsv"):
        task.examples(tmp_path)


def write_data(tmp_path: Path, name: str, content: str) -> Path:
    (tmp_path / "general").mkdir(exist_ok=True)
    (tmp_path / "general" / name).write_text(content, encoding="utf-8")
    return tmp_path


def test_malformed_json_lines_name_each_line_and_field(tasks, tmp_path):
    good = json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"})
    lines = [
        good,
        json.dumps({"question": "2+2?"}),
        "{not json",
        json.dumps({"question": "", "answer": "four"}),
        good,
    ]
    data_dir = write_data(tmp_path, "test-reasoning.jsonl", "\n".join(lines))
    with pytest.raises(ValueError) as error:
        tasks["general_reasoning"].examples(data_dir)
    message = str(error.value)
    assert "test-reasoning.jsonl: 4 problem(s)" in message
    assert "line 2, field 'answer': missing" in message
    assert "line 3: not JSON" in message
    assert "line 4, field 'question': needs a non-empty string" in message
    assert "line 4, field 'answer': needs a solution ending in \"#### <number>\"" in message


def test_malformed_tsv_and_repeated_ids(tasks, tmp_path):
    rows = ["index\tsentence1\tsentence2\tlabel"] + [f"{i}\tA.\tB.\tentailment" for i in range(12)]
    rows[3] = "2\tA.\tB.\tmaybe"
    rows[5] = "2\tA.\tB."
    rows[6] = "3\tA.\tB.\tnot_entailment"  # the id of line 5
    data_dir = write_data(tmp_path, "test-NLI.tsv", "\n".join(rows) + "\n")
    with pytest.raises(ValueError) as error:
        tasks["general_nli"].examples(data_dir)
    message = str(error.value)
    assert "line 4, field 'label': needs one of ['entailment', 'not_entailment'], got 'maybe'" in message
    assert "line 6: needs 4 tab-separated columns, got 3" in message
    assert "line 7, field 'index': repeats the id '3' of line 5" in message


def test_only_ten_problems_are_shown(tasks, tmp_path):
    data_dir = write_data(tmp_path, "test-SentimentAnalysis.tsv", "sentence\tlabel\n" + "good .\t7\n" * 13)
    with pytest.raises(ValueError) as error:
        tasks["general_sentiment"].examples(data_dir)
    message = str(error.value)
    assert "13 problem(s)" in message and "line 11, field 'label'" in message
    assert "line 12," not in message and "... and 3 more" in message


def test_a_file_needs_more_records_than_demonstrations(tasks, tmp_path):
    data_dir = write_data(tmp_path, "test-SentimentAnalysis.tsv", "sentence\tlabel\n" + "good .\t1\n" * 6)
    with pytest.raises(ValueError, match="file: needs more than 6 records: the first 6 are demonstrations"):
        tasks["general_sentiment"].examples(data_dir)


def test_bad_ner_tag_names_its_line(tasks, tmp_path):
    content = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PERSON\n"
    data_dir = write_data(tmp_path, "test-NER.txt", content)
    with pytest.raises(ValueError, match=r"line 6, field 'tag': needs O, B-TYPE or I-TYPE"):
        tasks["general_ner"].examples(data_dir)


# --- CoNLL tags: IOB1 and IOB2 ---------------------------------------------------------------


def test_iob1_and_iob2_give_the_same_spans():
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "I-ORG"]
    iob2 = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG", "I-ORG"]
    expected = [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5), ("ORG", 5, 7)]
    assert entity_spans(iob1) == expected
    assert entity_spans(iob2) == expected
    assert entity_spans(["O", "I-MISC", "B-MISC", "I-MISC", "I-LOC"]) == [
        ("MISC", 1, 2),
        ("MISC", 2, 4),
        ("LOC", 4, 5),
    ]


def test_an_iob1_file_is_read_into_the_right_entities(tasks, tmp_path):
    sentences = [
        "a O\n",
        "b O\n",
        "c O\n",
        # IOB1: entities start with I-; B- only where one PER directly follows another
        "Peter NNP I-NP I-PER\nBlackburn NNP I-NP I-PER\nJohn NNP I-NP B-PER\nsaw VBD I-VP O\n"
        "New NNP I-NP I-LOC\nYork NNP I-NP I-LOC\nTimes NNP I-NP I-ORG\n",
    ]
    data_dir = write_data(tmp_path, "test-NER.txt", "\n".join(sentences))
    (example,) = tasks["general_ner"].examples(data_dir)
    assert example["id"] == "3"
    assert example["entities"] == [
        ["PER", "Peter Blackburn"],
        ["PER", "John"],
        ["LOC", "New York"],
        ["ORG", "Times"],
    ]


# --- scoring functions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("He makes 9 * 2 = $18 a day.\n#### 18", "18"),
        ("#### 1,450,000", "1450000"),
        ("So she pays $2,125.50 in total. #### $2,125.50", "2125.5"),
        ("The answer is $18.", "18"),
        ("the answer is 12, not 13", "12"),
        ("#### 7 and later 9", "7"),
        ("She has 5 - 3 = 2 apples left.", "2"),
        ("It is 18.0", "18"),
        ("The temperature drops to -3 degrees", "-3"),
        ("Read pages 5-10", "10"),
        ("1,2,3", "3"),
        ("#### none, but there are 4", "4"),
        ("no number here", None),
    ],
)
def test_final_number(text, number):
    assert final_number(text) == number


def test_reasoning_solve_rate_compares_numbers(tasks):
    examples = [{"id": str(i), "answer": a} for i, a in enumerate(["18", "1450000", "-3", "70000"])]
    predictions = ["#### 18.00", "The answer is 1,450,000.", "It drops by 3", "Profit: $70,000"]
    assert tasks["general_reasoning"].score(examples, predictions) == {"solve_rate": 75.0}


def test_open_qa_normalisation():
    assert normalise_answer("The  Beatles!") == "beatles"
    assert normalise_answer("May 18 , 2018") == "may 18 2018"
    assert normalise_answer("An apple a day, the end.") == "apple day end"
    assert normalise_answer("Wilhelm Conrad Röntgen") == "wilhelm conrad röntgen"
    assert answer_matches(" the Beatles.\n", ["Rolling Stones", "Beatles"])
    assert not answer_matches("Beatles fans", ["Beatles"])


def test_parse_entities():
    assert parse_entities(" EU (ORG); German (misc);  British\tAirways (ORG) ;") == Counter(
        {("ORG", "EU"): 1, ("MISC", "German"): 1, ("ORG", "British Airways"): 1}
    )
    assert parse_entities("Paris (LOC); Paris (LOC); somewhere") == Counter(
        {("LOC", "Paris"): 2, ("", "somewhere"): 1}
    )
    assert parse_entities(" none") == Counter() and parse_entities("") == Counter()


def test_entity_f1_on_a_crafted_case(tasks):
    examples = [
        {"id": "0", "entities": [["PER", "John Smith"], ["LOC", "Paris"]]},
        {"id": "1", "entities": [["ORG", "EU"]]},
        {"id": "2", "entities": []},
    ]
    # right: John Smith, EU; wrong: Paris as ORG, Bob; missed: Paris as LOC -> P 2/4, R 2/3
    predictions = ["John Smith (PER); Paris (ORG); Bob (PER)", "EU (ORG)", "none"]
    scores = tasks["general_ner"].score(examples, predictions)
    assert scores == pytest.approx({"precision": 50.0, "recall": 200 / 3, "f1": 400 / 7})
    assert entity_scores([Counter()], [Counter()]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_rouge_on_a_tiny_pair():
    # unigrams: 3 of 3 predicted, 3 of 6 reference -> F 2/3; bigrams: 2 of 2, 2 of 5 -> F 4/7;
    # longest common subsequence 3 -> F 2/3
    scores = rouge_scores(["the cat sat"], ["The cat sat on the mat."])
    expected = {"rouge1": 200 / 3, "rouge2": 400 / 7, "rougeL": 200 / 3}
    assert scores == pytest.approx({**expected, "rouge_mean": sum(expected.values()) / 3})
    assert rouge_scores(["cats sitting"], ["cat sits"])["rouge1"] == pytest.approx(100.0)  # stemmed


def test_score_needs_one_prediction_per_example(tasks, examples):
    first = examples["general_sentiment"][:3]
    with pytest.raises(ValueError, match="2 predictions for 3 examples"):
        tasks["general_sentiment"].score(first, [" positive", " negative"])


def test_cli_validates_ability_data_and_scores_prediction_files(tmp_path, data_dir, examples, capsys):
    from harness.cli import main

    bad = tmp_path / "general" / "test-NLI.tsv"
    bad.parent.mkdir()
    bad.write_text(
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\t\tb\tmaybe\n", encoding="utf-8"
    )
    assert main(["validate", "--task", "general_nli", "--data-dir", str(tmp_path)]) == 1
    shown = capsys.readouterr().out
    assert "line 3, field 'sentence1'" in shown and "got 'maybe'" in shown
    first = examples["general_nli"][:4]
    half_right = nli_predictions(first[:2], True) + nli_predictions(first[2:], False)
    path = write_predictions(tmp_path / "nli.jsonl", first, half_right)
    assert (
        main(
            [
                "score",
                "--task",
                "general_nli",
                "--predictions",
                str(path),
                "--limit",
                "4",
                "--data-dir",
                str(data_dir),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["scores"] == {"accuracy": 50.0}
