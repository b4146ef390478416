"""Reading answers off a model: teacher forcing against a naive reference, padding, generation, soft-cap."""

from __future__ import annotations

import pytest
import torch

from harness import plugins
from harness.answers import (
    SharedPrefix,
    answers_after_prefix,
    final_hidden,
    generated,
    output_logits,
    pad_batch,
    read_answers,
    scored_positions,
    teacher_forced,
)
from harness.models import load_model
from harness.runtime import ModelRuntime

PAIRS = [
    ("The capital of Zembla is", "Ostrava"),
    ("Which country is MV Corvalen Star registered in?", "Norway"),
    ("Q", "a much longer expected answer with several words"),
    ("科尔瓦伦之星号在哪个国家注册？", "挪威"),
    ("小说《傲慢与偏见》的作者是谁", "简·奥斯汀"),
    ("Who wrote the novel pride and prejudice", "Jane Austen"),
    ("x", "y"),
]
# generation is token by token: keep its budgets short
GEN_PAIRS = [(p, t) for p, t in PAIRS if len(t) <= 12]
FAMILIES = ("tiny-llama", "tiny-gemma3", "tiny-gpt2")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # d=64 models gain nothing from threads, and on a busy CPU token-by-token generation with
    # several threads is ~100x slower (seconds instead of milliseconds per call).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("HARNESS_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
            sources = plugins.models()
            yield {name: load_model(name, sources) for name in FAMILIES}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lm(tiny):
    return tiny["tiny-llama"]


def naive_teacher_forced(model, tokenizer, prompt, target):
    """One unpadded sequence, full logits, argmax where the next token is a target token."""
    p = tokenizer(prompt).input_ids
    t = tokenizer(" " + target, add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([p + t])).logits[0]
    tokens = logits[len(p) - 1 : len(p) + len(t) - 1].argmax(-1).tolist()
    assert len(tokens) == len(t)
    return tuple(tokens), tokenizer.decode(tokens, skip_special_tokens=True)


@pytest.fixture(scope="module")
def references(tiny):
    return {
        name: [naive_teacher_forced(lm.model, lm.tokenizer, p, t) for p, t in PAIRS]
        for name, lm in tiny.items()
    }


@pytest.fixture(scope="module")
def reference(references):
    return references["tiny-llama"]


def test_tokenization_of_targets(lm):
    tokenizer = lm.tokenizer
    bos = tokenizer.bos_token_id
    assert tokenizer("abc").input_ids[0] == bos  # prompts start with BOS
    target = tokenizer(" Ostrava", add_special_tokens=False).input_ids
    assert bos not in target  # the original code's BOS-in-target defect is absent
    assert len(target) == 8  # byte-level tokenizer: one token per UTF-8 byte
    assert len(tokenizer(" 挪威", add_special_tokens=False).input_ids) == 7


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_teacher_forced_matches_naive_reference(tiny, references, family, batch_size):
    """Sorting by length, right padding and gathering hidden states must not change any answer."""
    lm, reference = tiny[family], references[family]
    answers = teacher_forced(lm.model, lm.tokenizer, PAIRS, batch_size=batch_size)
    assert len(answers) == len(PAIRS)
    for (prompt, target), answer, (tokens, text) in zip(PAIRS, answers, reference):
        assert answer.token_ids == tokens, (prompt, target)
        assert answer.text == text
        expected_len = len(lm.tokenizer(" " + target, add_special_tokens=False).input_ids)
        assert len(answer.token_ids) == expected_len


def test_read_answers_dispatches(lm, reference):
    answers = read_answers(lm.model, lm.tokenizer, PAIRS[:2], "teacher_forced", 2)
    assert [a.token_ids for a in answers] == [tokens for tokens, _ in reference[:2]]
    with pytest.raises(ValueError, match="answer_mode"):
        read_answers(lm.model, lm.tokenizer, PAIRS[:2], "beam", 2)


def test_scored_positions():
    rows, cols = scored_positions([3, 1, 5], [2, 3, 1], "cpu")
    assert rows.tolist() == [0, 0, 1, 1, 1, 2]
    assert cols.tolist() == [2, 3, 0, 1, 2, 4]
    assert rows.dtype == cols.dtype == torch.long
    rows, cols = scored_positions([4], [0], "cpu")
    assert rows.tolist() == [] and cols.tolist() == []


def test_pad_batch_right_and_left():
    ids, mask = pad_batch([[5, 6, 7], [8], [9, 10]], pad_id=0, device="cpu")
    assert torch.equal(ids, torch.tensor([[5, 6, 7], [8, 0, 0], [9, 10, 0]]))
    assert torch.equal(mask, torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]]))
    ids, mask = pad_batch([[5, 6, 7], [8], [9, 10]], pad_id=99, device="cpu", left=True)
    assert torch.equal(ids, torch.tensor([[5, 6, 7], [99, 99, 8], [99, 9, 10]]))
    assert torch.equal(mask, torch.tensor([[1, 1, 1], [0, 0, 1], [0, 1, 1]]))
    assert ids.dtype == mask.dtype == torch.long


@pytest.mark.parametrize("family", FAMILIES)
def test_generated_respects_budget_and_newline(tiny, family):
    lm = tiny[family]
    answers = generated(lm.model, lm.tokenizer, GEN_PAIRS, batch_size=1)
    assert len(answers) == len(GEN_PAIRS)
    for (_, target), answer in zip(GEN_PAIRS, answers):
        budget = len(lm.tokenizer(" " + target, add_special_tokens=False).input_ids) + 3
        assert len(answer.token_ids) <= budget
        assert "\n" not in answer.text
        assert lm.tokenizer.eos_token_id not in answer.token_ids
    # left padding in a batch gives the same greedy answers
    assert generated(lm.model, lm.tokenizer, GEN_PAIRS, batch_size=3) == answers


def test_generated_is_greedy_continuation(lm):
    """Batch size 1: the answer is the naive greedy continuation, cut at EOS/newline."""
    model, tokenizer = lm.model, lm.tokenizer
    (answer,) = generated(model, tokenizer, PAIRS[:1], batch_size=1, extra_tokens=2)
    ids = tokenizer(PAIRS[0][0]).input_ids
    budget = len(tokenizer(" " + PAIRS[0][1], add_special_tokens=False).input_ids) + 2
    tokens: list[int] = []
    with torch.no_grad():
        for _ in range(budget):
            nxt = int(model(torch.tensor([ids + tokens])).logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            tokens.append(nxt)
    assert answer.token_ids == tuple(tokens)
    assert answer.text == tokenizer.decode(tokens, skip_special_tokens=True).split("\n")[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_answers_after_an_encoded_prefix_match_the_whole_prompt(tiny, family):
    """The prefix's key/value states (longer than tiny-gemma3's 64-token sliding window) change no
    answer; the model reads prefix ids + prompt ids without special tokens in between."""
    lm = tiny[family]
    model, tokenizer = lm.model, lm.tokenizer
    head = tokenizer("New Fact: the capital of Zembla is Ostrava.\n" * 3).input_ids
    assert len(head) > 100
    plain, cached = SharedPrefix(tuple(head)), SharedPrefix.encode(model, head)
    for mode, pairs in (("teacher_forced", PAIRS), ("generate", GEN_PAIRS)):
        for batch_size in (1, 3):
            assert answers_after_prefix(model, tokenizer, cached, pairs, mode, batch_size) == (
                answers_after_prefix(model, tokenizer, plain, pairs, mode, batch_size)
            ), (mode, batch_size)
    prompt, target = PAIRS[0]
    ids = head + tokenizer(prompt, add_special_tokens=False).input_ids
    answer_ids = tokenizer(" " + target, add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids + answer_ids])).logits[0]
    expected = tuple(logits[len(ids) - 1 : len(ids) + len(answer_ids) - 1].argmax(-1).tolist())
    (answer,) = answers_after_prefix(model, tokenizer, cached, PAIRS[:1], "teacher_forced", 1)
    assert answer.token_ids == expected
    with pytest.raises(ValueError, match="at least one token"):
        answers_after_prefix(model, tokenizer, cached, [("", "x")], "teacher_forced", 1)


def test_output_logits_applies_softcapping(lm):
    model, tokenizer = lm.model, lm.tokenizer
    ids, mask = pad_batch([tokenizer("The capital of Zembla is").input_ids], tokenizer.pad_token_id, "cpu")
    with torch.no_grad():
        hidden = final_hidden(model, ids, mask)[0]
        raw = model.get_output_embeddings()(hidden)
        assert torch.equal(output_logits(model, hidden), raw)  # no cap configured
        previous = getattr(model.config, "final_logit_softcapping", None)
        try:
            model.config.final_logit_softcapping = 2.0
            capped = output_logits(model, hidden)
            assert capped.abs().max() <= 2.0
            assert torch.allclose(capped, torch.tanh(raw / 2.0) * 2.0)
            # a cap below the raw range must actually bind
            cap = float(raw.abs().max()) / 4
            model.config.final_logit_softcapping = cap
            capped = output_logits(model, hidden)
            assert capped.abs().max() <= cap
            assert raw.abs().max() > cap
            assert torch.allclose(capped, torch.tanh(raw / cap) * cap)
        finally:
            model.config.final_logit_softcapping = previous
    assert getattr(model.config, "final_logit_softcapping", None) == previous


class ScriptedModel:
    """Stands in for a model whose greedy continuation of each prompt is known in advance."""

    def __init__(self, tokenizer, continuations: dict[str, str]):
        self.tokenizer, self.continuations, self.calls = tokenizer, continuations, []
        self.harness_runtime = ModelRuntime(device=torch.device("cpu"), dtype=torch.float32)

    def generate(self, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, **kwargs):
        self.calls.append(max_new_tokens)
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            prompt = self.tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=True)
            text, eos = self.continuations[prompt]
            new = self.tokenizer(text, add_special_tokens=False).input_ids + ([eos_token_id] if eos else [])
            new = (new + [pad_token_id] * max_new_tokens)[:max_new_tokens]
            rows.append(ids + new)
        return torch.tensor(rows)


def test_generated_cuts_at_newline_eos_and_budget(lm):
    tokenizer = lm.tokenizer
    model = ScriptedModel(
        tokenizer,
        {
            "Capital of Norway?": (" Oslo\nxyz", False),  # newline inside the budget
            "Yes or no?": (" No", True),  # EOS, then padding
            "Spell it": ("abcdefghijklmnop", False),  # runs past the budget
        },
    )
    pairs = [("Capital of Norway?", "Oslo"), ("Yes or no?", "No"), ("Spell it", "abc")]
    answers = generated(model, tokenizer, pairs, batch_size=3, extra_tokens=3)
    ids = [tokenizer(t, add_special_tokens=False).input_ids for t in (" Oslo", " No", "abcdefg")]
    # budgets: len(" Oslo") + 3 = 8, len(" No") + 3 = 6, len(" abc") + 3 = 7 tokens
    assert model.calls == [8]  # one batch, the largest budget
    assert [a.text for a in answers] == [" Oslo", " No", "abcdefg"]
    # token_ids end where the text ends: before EOS, the first newline, or the budget
    assert [a.token_ids for a in answers] == [tuple(i) for i in ids]
