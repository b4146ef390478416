"""Scoring rules of docs/protocol.md: token F1 over token-id multisets and exact match on stripped strings."""

from __future__ import annotations

import pytest

from harness import plugins
from harness.metrics import exact_match, load_evaluate_metric, token_f1

# (answer ids, expected ids, F1 computed by hand)
F1_GOLDEN = [
    # P = R = 2/3 -> F1 = 2/3
    ([1, 2, 3], [2, 3, 4], 2 / 3),
    # multiset intersection: min(2,1) ones + min(1,2) twos = 2 -> P = R = 2/3
    ([1, 1, 2], [1, 2, 2], 2 / 3),
    # P = 2/2 = 1, R = 2/6 = 1/3 -> F1 = 2*(1/3)/(4/3) = 1/2 (P*R would be 1/3)
    ([1, 2], [1, 2, 3, 4, 5, 6], 1 / 2),
    # P = 2/4, R = 2/3 -> F1 = 2*(1/3)/(7/6) = 4/7 (P*R would be 1/3)
    ([5, 5, 5, 7], [5, 7, 7], 4 / 7),
    # order does not matter
    ([3, 2, 1], [1, 2, 3], 1.0),
    # identical with repeats
    ([9, 9, 9], [9, 9, 9], 1.0),
    # repeats in the answer only count once per expected occurrence: I = 1, P = 1/3, R = 1 -> 1/2
    ([4, 4, 4], [4], 1 / 2),
    # edge cases: both empty, exactly one empty, no overlap
    ([], [], 1.0),
    ([1, 2], [], 0.0),
    ([], [1, 2], 0.0),
    ([1, 2, 3], [4, 5, 6], 0.0),
]


@pytest.mark.parametrize(("answer", "expected", "f1"), F1_GOLDEN)
def test_token_f1_golden_values(answer, expected, f1):
    assert token_f1(answer, expected) == pytest.approx(f1, abs=1e-12)
    # tuples (Answer.token_ids) score the same as lists
    assert token_f1(tuple(answer), tuple(expected)) == pytest.approx(f1, abs=1e-12)


def test_token_f1_is_harmonic_mean_not_product():
    precision, recall = 1.0, 1 / 3
    f1 = token_f1([1, 2], [1, 2, 3, 4, 5, 6])
    assert f1 == pytest.approx(2 * precision * recall / (precision + recall))
    assert f1 != pytest.approx(precision * recall)


def test_token_f1_is_symmetric():
    for answer, expected, _ in F1_GOLDEN:
        assert token_f1(answer, expected) == pytest.approx(token_f1(expected, answer))


@pytest.mark.parametrize(
    ("answer", "expected", "em"),
    [
        (" Paris\n", "Paris", 1.0),
        ("Paris", "\tParis  ", 1.0),
        ("paris", "Paris", 0.0),  # case-sensitive
        ("PARIS", "Paris", 0.0),
        ("Par is", "Paris", 0.0),  # inner whitespace counts
        ("Paris.", "Paris", 0.0),
        ("", "", 1.0),
        ("  \n", "", 1.0),
        ("", "Paris", 0.0),
        (" 巴黎 ", "巴黎", 1.0),
    ],
)
def test_exact_match(answer, expected, em):
    assert exact_match(answer, expected) == em


F1_PAIRS = [([1, 2, 3], [2, 3, 4]), ([1, 1, 2], [1, 2, 2]), ([], []), ([7], []), ([1, 2], [1, 2, 3, 4, 5, 6])]


def test_evaluate_token_f1_is_mean_of_token_f1():
    metric = load_evaluate_metric("token_f1")
    predictions = [p for p, _ in F1_PAIRS]
    references = [r for _, r in F1_PAIRS]
    result = metric.compute(predictions=predictions, references=references)
    expected_mean = (2 / 3 + 2 / 3 + 1.0 + 0.0 + 1 / 2) / 5
    assert result == {"token_f1": pytest.approx(expected_mean)}
    assert result["token_f1"] == pytest.approx(sum(token_f1(p, r) for p, r in F1_PAIRS) / len(F1_PAIRS))


def test_evaluate_answer_exact_match_is_mean_of_exact_match():
    metric = load_evaluate_metric("answer_exact_match")
    predictions = [" Paris\n", "paris", "Oslo", "", "北京"]
    references = ["Paris", "Paris", "Oslo ", "", "上海"]
    result = metric.compute(predictions=predictions, references=references)
    assert result == {"exact_match": pytest.approx(3 / 5)}
    assert result["exact_match"] == pytest.approx(
        sum(exact_match(p, r) for p, r in zip(predictions, references)) / len(predictions)
    )


def test_evaluate_unknown_metric_lists_available():
    with pytest.raises(ValueError, match="no packaged evaluate metric 'bleu'") as info:
        load_evaluate_metric("bleu")
    message = str(info.value)
    assert "token_f1" in message
    assert "answer_exact_match" in message


def test_registered_metric_functions():
    functions = plugins.metric_functions()
    assert {"f1", "em"} <= set(functions)
    # registered signature: fn(answer_ids, expected_ids, answer, expected)
    assert functions["f1"]([1, 2, 3], [2, 3, 4], "irrelevant", "text") == pytest.approx(2 / 3)
    assert functions["f1"]([], [], "", "") == 1.0
    assert functions["em"]([1], [2], " Paris\n", "Paris") == 1.0
    assert functions["em"]([1], [1], "paris", "Paris") == 0.0
