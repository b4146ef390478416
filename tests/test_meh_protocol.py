"""The ``meh`` scoring profile of the eight ability tasks: MEH's prompts rebuilt here from the raw
data rows, and MEH's rules (Model-Editing-Hurt test-task scripts) scored on hand-made answers whose
figures are worked out by hand in the comments."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_general_tasks import NAMES, ROOT  # the eight tasks, as the few-shot tests name them

from harness import plugins, protocols
from harness.abilities import AbilitySetup, baseline_dir, score_prediction_file
from harness.config import ConfigError
from harness.templates import Templates
from harness_plugins.tasks.general import meh_scoring as rules

NEW_TOKENS = {  # MEH's max_new_tokens per script
    "general_reasoning": 5,
    "general_nli": 1,
    "general_open_qa": 20,
    "general_closed_qa": 1,
    "general_dialogue": 1,
    "general_summarization": 25,
    "general_ner": 10,
    "general_sentiment": 1,
}


@pytest.fixture(scope="module")
def meh():
    return {name: protocols.select(plugins.tasks()[name], "meh") for name in NAMES}


@pytest.fixture(scope="module")
def render():
    return Templates([str(ROOT / "templates")]).render


def general(data_dir: Path, name: str) -> Path:
    return data_dir / "general" / name


def json_lines(path: Path, n: int) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:n]]


def csv_rows(path: Path, n: int) -> list[list[str]]:
    """Rows after the header, read as MEH read them (the csv module's default quoting)."""
    with path.open(encoding="utf-8") as file:
        return list(csv.reader(file, delimiter="\t"))[1 : n + 1]


def expected_prompts(name: str, data_dir: Path) -> list[str]:
    """The first two prompts of each task, written from the raw files as MEH's scripts build them."""
    if name == "general_reasoning":
        return [
            f"Q: {r['question']} A:Let's think step by step. {r['answer'].split('#### ')[0]} "
            "Therefore, the answer (arabic numerals) is:"
            for r in json_lines(general(data_dir, "test-reasoning.jsonl"), 2)
        ]
    if name == "general_nli":
        return [
            f"{s1} entails the {s2}. True or False? answer:"
            for _, s1, s2, _ in csv_rows(general(data_dir, "test-NLI.tsv"), 2)
        ]
    if name == "general_open_qa":
        return [
            "Refer to the passage below and answer the following question. "
            f"Passage: {r['output'][0]} Question: {r['question']}"
            for r in json_lines(general(data_dir, "test-OpenDomainQA.jsonl"), 2)
        ]
    if name == "general_closed_qa":
        return [
            "Please answer the given question based on the passage. The answer should be exact 'yes' or "
            f"'no'. passage: {r['passage']} question: {r['question']}. answer:"
            for r in json_lines(general(data_dir, "test-ClosedDomainQA.jsonl"), 2)
        ]
    if name == "general_dialogue":
        return [
            f"Q: {r['article']} Which choice is correct? Answer Chioces: (A){r['options'][0]}"
            f"(B){r['options'][1]}(C){r['options'][2]}(D){r['options'][3]} "
            "A: Among A through D, the answer is"
            for r in json_lines(general(data_dir, "test-dialogue.jsonl"), 2)
        ]
    if name == "general_summarization":
        records = json.loads(general(data_dir, "test-summarization.json").read_text(encoding="utf-8"))
        return [f"{r['dialogue']}\nTL;DR:" for r in records[:2]]
    if name == "general_ner":  # the first sentence is the file's "-DOCSTART-" line
        text = "Text: -DOCSTART- Entity:"
        return [
            f"Please identify {kind} Entity from the given text. {text}" for kind in ("Person", "Location")
        ]
    return [
        "For each snippet of text,label the sentiment of the text as positive or negative.The answer "
        f"should be exact 'positive' or 'negative'. text: {sentence} answer:"
        for sentence, _ in csv_rows(general(data_dir, "test-SentimentAnalysis.tsv"), 2)
    ]


@pytest.mark.parametrize("name", NAMES)
def test_the_first_queries_are_meh_prompts_asked_zero_shot(name, meh, data_dir, render):
    task = meh[name]
    queries = task.queries(task.examples(data_dir)[:2], render)
    assert [q.prompt for q in queries] == expected_prompts(name, data_dir)
    assert task.context(data_dir, render) == ""
    assert {(q.max_new_tokens, q.stop, q.options) for q in queries} == {(NEW_TOKENS[name], (), ())}


def test_meh_asks_every_record_and_ner_once_per_sentence_and_type(meh, data_dir, render):
    counts = {name: len(meh[name].examples(data_dir)) for name in NAMES}
    assert counts == {
        "general_reasoning": 1319,
        "general_nli": 2489,
        "general_open_qa": 3610,
        "general_closed_qa": 3267,
        "general_dialogue": 886,
        "general_summarization": 818,
        "general_ner": 4 * 3466,  # 3,250 sentences and 216 "-DOCSTART-" lines
        "general_sentiment": 872,
    }
    ner = meh["general_ner"].examples(data_dir)[4:8]  # the file's first real sentence
    sentence = "CRICKET - LEICESTERSHIRE TAKE OVER AT TOP AFTER INNINGS VICTORY."
    assert [(e["id"], e["kind"], e["entities"]) for e in ner] == [
        ("1-PER", "PER", []),
        ("1-LOC", "LOC", []),
        ("1-ORG", "ORG", ["LEICESTERSHIRE"]),
        ("1-MISC", "MISC", []),
    ]
    assert meh["general_ner"].queries(ner[:1], render)[0].prompt == (
        f"Please identify Person Entity from the given text. Text: {sentence} Entity:"
    )


def test_profiles_are_offered_named_and_kept_apart(meh, data_dir):
    task = plugins.tasks()["general_nli"]
    assert protocols.offered(task) == ("fewshot", "meh")
    assert protocols.name_of(protocols.select(task, "")) == "fewshot"
    assert protocols.name_of(meh["general_nli"]) == "meh"
    assert protocols.name_of(protocols.select(meh["general_nli"], "fewshot")) == "fewshot"
    with pytest.raises(ConfigError, match=r"'zero' is not a scoring profile of task general_nli"):
        protocols.select(task, "zero")
    fewshot, zero_shot = (AbilitySetup.of(t, data_dir, 3) for t in (task, meh["general_nli"]))
    assert (fewshot.identity("m")["protocol"], zero_shot.identity("m")["protocol"]) == ("fewshot", "meh")
    assert baseline_dir(fewshot, "m") != baseline_dir(zero_shot, "m")


# --- MEH's rules on hand-made answers ---------------------------------------------------------


def test_nli_accuracy_is_over_the_answered_items(meh):
    examples = [
        {"label": label} for label in ("entailment", "not_entailment", "entailment", "not_entailment")
    ]
    # right, right, wrong, unanswered: 2 of 3 answered; 2 of 4 in all
    scores = meh["general_nli"].metrics(examples, ["True", "false", "False", "maybe"])
    assert scores == pytest.approx({"accuracy": 200 / 3, "accuracy_all": 50.0, "answered": 75.0})
    # an answer holding both words counts once right and once wrong, as MEH's two tests do
    assert rules.nli_counts(["TRUE or false"], [True]) == (1, 1, 0)


def test_closed_qa_needs_exactly_yes_or_no(meh):
    examples = [{"label": gold} for gold in (True, False, True, False, True)]
    # right, right, right, wrong, unanswered ("yes." is not exactly yes)
    scores = meh["general_closed_qa"].metrics(examples, ["Yes", "no", "YES", "yes", "yes."])
    assert scores == {"exact_match": 75.0, "exact_match_all": 60.0, "answered": 80.0}


def test_sentiment_reads_either_word_and_both_count_right(meh):
    examples = [{"label": label} for label in ("1", "0", "1", "0", "1")]
    answers = ["positive", "Negative", "negative", "positive and negative", "neutral"]
    # right, right, wrong, right (both words: MEH tests "negative" for label 0 first), unanswered
    assert meh["general_sentiment"].metrics(examples, answers) == {
        "accuracy": 75.0,
        "accuracy_all": 60.0,
        "answered": 80.0,
    }


def test_dialogue_letter_choice_over_every_item(meh):
    examples = [{"letter": letter} for letter in ("A", "C", "C", "D", "A")]
    # right; "Chi" is unanswered (it holds C); "(C" right; lowercase "b" unanswered; "B" wrong
    scores = meh["general_dialogue"].metrics(examples, ["A", "Chi", "(C", "b", "B"])
    assert scores == {"accuracy": 40.0, "answered": 60.0}
    # MEH reads after the last "the answer is"
    assert meh["general_dialogue"].metrics(examples[:1], ["B, no, the answer is A"])["accuracy"] == 100.0


def test_reasoning_finds_the_gold_answer_as_a_substring_before_a_repeated_marker(meh):
    examples = [{"final": final} for final in ("18", "3", "70000", "540")]
    marker = "Therefore, the answer (arabic numerals) is:"
    answers = ["18.", "13 bolts", f"{marker} 70000", "540,000"]
    # "18" found; "3" inside "13" counts; the text before the repeated marker is empty; "540" found
    assert meh["general_reasoning"].metrics(examples, answers) == {"solve_rate": 75.0}


def test_open_qa_span_match_counts_as_meh_does():
    readings = [
        "Paris",
        "it is in france or france",
        "x paris y paris z",
        "he was born in new york city",
        "x y lisbon z",
    ]
    golds = [["Paris"], ["France"], ["paris"], ["New York"], ["Lisbon"]]
    # first word; last word; "paris" twice as a single word (2); the span "new york", which sets MEH's
    # flag; after it the last item stops at its first word "x" (0): 5 hits for 5 items
    assert rules.open_qa_scores(readings, golds) == {"exact_match": 100.0}
    assert rules.open_qa_scores(readings[-1:], golds[-1:]) == {"exact_match": 100.0}  # alone it is found
    assert rules.open_qa_scores(readings[:2], golds[:2]) == {"exact_match": 100.0}


def test_open_qa_reads_the_prompt_when_the_answer_has_no_answer_marker(meh):
    example = {"question": "capital of portugal?", "passage": "The capital is Lisbon.", "answers": ["Lisbon"]}
    task = meh["general_open_qa"]
    # no "Answer:": MEH's reading is the whole prompt and the answer, and "lisbon" is in the passage
    assert task.metrics([example], ["I do not know"]) == {"exact_match": 100.0}
    assert task.metrics([example], ["Answer: Porto"]) == {"exact_match": 0.0}
    assert task.metrics([example], ["x Answer: Lisbon"]) == {"exact_match": 100.0}


def test_ner_entities_follow_meh_spans():
    tokens = ["Paris", "Hilton", "said", "Lyon", "Berlin"]
    tags = ["B-LOC", "B-PER", "O", "B-LOC", "B-LOC"]
    # a span runs to the next O whatever the tags; with no O after it the last token is left out
    assert rules.ner_entities(tokens, tags, "LOC") == ["Paris Hilton", "Lyon"]
    assert rules.ner_entities(tokens, tags, "PER") == ["Hilton"]
    assert rules.ner_entities(["Peter"], ["B-PER"], "PER") == [""]
    assert rules.ner_sentence(["Hi", ",", "Bob", "Smith", "."]) == "Hi, Bob Smith."


def test_ner_per_type_recall_macro_average(meh):
    cases = [  # (type, gold entities, answer) for three sentences
        ("PER", [], ""),  # empty answer, nothing to find: 1 of 1
        ("LOC", [], "none"),  # nothing counted
        ("ORG", [], ""),  # 1 of 1
        ("MISC", [], "nothing"),  # MISC alone: 0 of 1
        ("PER", ["John Smith"], "John Smith and Mary"),  # 1 of 1
        ("LOC", ["New York"], "New"),  # 0 of 1
        ("ORG", [], "Smith"),  # nothing counted
        ("MISC", [], ""),  # 1 of 1
        ("LOC", ["Paris Hilton", "Lyon"], "Lyon, Paris Entity: Paris Hilton"),  # read up to "Entity:": 1 of 2
        ("MISC", ["German"], "German"),  # 1 of 1
    ]
    examples = [{"kind": kind, "entities": gold} for kind, gold, _ in cases]
    scores = meh["general_ner"].metrics(examples, [answer for _, _, answer in cases])
    # PER 2/2, LOC 1/3, ORG 1/1, MISC 2/3
    expected = {"recall_per": 100.0, "recall_loc": 100 / 3, "recall_org": 100.0, "recall_misc": 200 / 3}
    assert scores == pytest.approx({"macro_recall": 75.0, **expected})
    with pytest.raises(ValueError, match=r"nothing of type\(s\) \['LOC', 'ORG', 'MISC'\] to find"):
        meh["general_ner"].metrics(examples[:1], [""])


def test_rouge_is_the_rouge_package_s():
    # prediction words {the, cat, sat, on, mat} (5), reference {The, cat, sat, on, a, mat} (6): case
    # kept, so 4 shared: F = 2 (4/5)(4/6) / (4/5 + 4/6) = 8/11; bigrams 2 of 5 each: 2/5; the LCS
    # "cat sat on mat": 8/11 (rouge_score, which lowercases, would give more)
    scores = rules.rouge_f("the cat sat on the mat", "The cat sat on a mat.")
    assert scores == pytest.approx({"rouge1": 8 / 11, "rouge2": 2 / 5, "rougeL": 8 / 11})
    # n-grams are counted once: the repeated sentence adds only the bigram (ill, Tom): 2/3 and 1
    scores = rules.rouge_f("Tom is ill. Tom is ill.", "Tom is ill.")
    assert scores == pytest.approx({"rouge1": 1.0, "rouge2": 0.8, "rougeL": 1.0})
    assert rules.rouge_f("...", "Tom is ill.") is None


def test_summarization_averages_over_every_item_with_empty_answers_zero(meh):
    examples = [{"summary": "The cat sat on a mat."}, {"summary": "Tom is ill."}]
    scores = meh["general_summarization"].metrics(examples, ["the cat sat on the mat", "TL;DR:"])
    parts = {"rouge1": 400 / 11, "rouge2": 20.0, "rougeL": 400 / 11}  # half of the first pair's
    assert scores == pytest.approx({"rouge_mean": sum(parts.values()) / 3, **parts})
    assert scores["rouge_mean"] == pytest.approx(100 * 102 / 165 / 2)


# --- files: prediction files under the profile, bad records ------------------------------------


def test_cli_scores_a_prediction_file_under_the_meh_profile(meh, data_dir, tmp_path, capsys):
    from harness.cli import main

    first = meh["general_nli"].examples(data_dir)[:4]
    labels = [e["label"] for e in first]
    assert labels == ["not_entailment", "entailment", "entailment", "entailment"]
    answers = ["False", "True", "False", "?"]  # right, right, wrong, unanswered
    path = tmp_path / "nli.jsonl"
    path.write_text(
        "".join(json.dumps({"id": e["id"], "prediction": a}) + "\n" for e, a in zip(first, answers))
    )
    command = ["score", "--task", "general_nli", "--predictions", str(path), "--limit", "4"]
    assert main([*command, "--data-dir", str(data_dir), "--protocol", "meh"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["protocol"], shown["metric"]) == ("meh", "accuracy")
    assert shown["scores"] == pytest.approx({"accuracy": 200 / 3, "accuracy_all": 50.0, "answered": 75.0})
    assert score_prediction_file(meh["general_nli"], data_dir, path, 4) == shown["scores"]
    assert main([*command, "--data-dir", str(data_dir), "--protocol", "zero"]) == 2
    assert "'zero' is not a scoring profile of task general_nli" in capsys.readouterr().err


def test_meh_records_name_the_line_and_field(meh, tmp_path):
    (tmp_path / "general").mkdir()
    lines = [
        {"question": "1+1?", "answer": "1+1=2\n#### 2"},
        {"question": "2+2?", "answer": "2+2=4 #### 4 #### 4"},
    ]
    (tmp_path / "general" / "test-reasoning.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    with pytest.raises(ValueError, match=r"line 2, field 'answer': needs a solution with one \"#### \""):
        meh["general_reasoning"].examples(tmp_path)
    (tmp_path / "general" / "test-OpenDomainQA.jsonl").write_text(
        json.dumps({"question": "q?", "answer": ["a"]})
    )
    with pytest.raises(ValueError, match=r"line 1, field 'output': missing"):
        meh["general_open_qa"].examples(tmp_path)
