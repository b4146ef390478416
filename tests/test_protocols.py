"""Scoring profiles: the published Bi-ZsRE profile's F1, probes, IKE context and locality reference,
each against values derived here from the raw records and the rules of the Bi-ZsRE code."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_ike import LANGUAGE, pools  # noqa: F401 - the hand-made IKE pools fixture

from harness import compare, config, plugins, protocols
from harness.answers import read_answers
from harness.api import EditorContext
from harness.evaluator import Scorer
from harness.metrics import token_f1, token_f1_product
from harness.runner import run
from harness.templates import Templates
from harness_plugins.methods.ike.editor import IKE, IKEHparams, _as_bizsre_pool
from harness_plugins.tasks.bizsre import BiZsRETask


class CharacterTokenizer:
    """One token per character: Chinese scoring reduces to character overlap."""

    def __call__(self, text: str, add_special_tokens: bool = False):
        return type("Encoded", (), {"input_ids": [ord(c) for c in text]})()


def published_scorer() -> Scorer:
    task = BiZsRETask("en").with_protocol("bizsre-published")
    return Scorer(CharacterTokenizer(), {**plugins.metric_functions(), **task.metric_overrides})


@pytest.mark.parametrize(
    ("answer", "expected", "overlap"),
    [
        ("北京大学", "北京", 2),
        ("上海", "北京", 0),
        ("巴黎市", "巴黎", 2),
        ("北京", "北京", 2),
        ("京北京", "北京", 2),
    ],
)
def test_published_f1_is_precision_times_recall_and_the_default_the_harmonic_mean(answer, expected, overlap):
    a, b = len(answer), len(expected)
    scores = published_scorer()(answer, expected)
    assert scores["f1"] == pytest.approx(overlap * overlap / (a * b), abs=1e-12)
    default = Scorer(CharacterTokenizer(), plugins.metric_functions())(answer, expected)
    harmonic = 0.0 if overlap == 0 else 2 * (overlap / a) * (overlap / b) / (overlap / a + overlap / b)
    assert default["f1"] == pytest.approx(harmonic, abs=1e-12)
    assert scores["em"] == default["em"] == float(answer == expected)


def test_product_f1_edge_cases_and_gap_to_the_harmonic_mean():
    assert token_f1_product([], []) == 1.0 and token_f1_product([1], []) == 0.0 == token_f1_product([], [1])
    # one of two tokens right: product 1/4, harmonic 2/3
    assert token_f1_product([1, 2], [1, 3]) == 0.25
    assert token_f1([1, 2], [1, 3]) == pytest.approx(0.5)
    assert token_f1_product([1, 1, 2], [1, 2, 2]) == pytest.approx(4 / 9)  # multiset overlap {1, 2}


def test_an_unknown_profile_names_the_option_and_the_choices():
    task = BiZsRETask("en")
    with pytest.raises(
        config.ConfigError, match=r"protocol: 'tables' .* offers \['harness', 'bizsre-published'\]"
    ):
        protocols.select(task, "tables")
    assert protocols.select(task, "").protocol == "harness"
    assert protocols.offered(object()) == (protocols.DEFAULT,)


def raw_records(data_dir: Path, count: int) -> list[dict]:
    return json.loads((data_dir / "bizsre" / "bizsre_test_enzh_743.json").read_text(encoding="utf-8"))[:count]


@pytest.mark.parametrize("edit_language", ["en", "zh"])
def test_published_probes_on_the_first_five_records_follow_the_raw_fields(data_dir, edit_language):
    raw = raw_records(data_dir, 5)
    task = BiZsRETask(edit_language).with_protocol("bizsre-published")
    records = task.records(raw, lambda question: question)
    for item, record in zip(raw, records, strict=True):
        edit = item[edit_language]
        assert (record.request.prompt, record.request.target) == (edit["src"], edit["alt"])
        assert dict(record.request.targets) == {"en": item["en"]["alt"], "zh": item["zh"]["alt"]}
        expected = [("reliability", edit_language, edit["src"], edit["alt"])]
        for lang in ("en", "zh"):
            side = item[lang]
            expected += [
                ("generality", lang, side["rephrase"], side["alt"]),
                ("locality", lang, side["loc"], side["loc_ans"]),  # the marker stays
                ("portability", lang, side["portability"]["New Question"], side["portability"]["New Answer"]),
            ]
        assert [(p.property, p.language, p.prompt, p.expected) for p in record.probes] == expected
    assert raw[0]["en"]["loc"].startswith("nq question: ")
    default = BiZsRETask(edit_language).records(raw, lambda question: question)
    assert default[0].probes[2].prompt == raw[0]["en"]["loc"].removeprefix("nq question: ")


def test_published_profile_reads_the_official_file_first_and_notes_its_absence(tmp_path):
    (tmp_path / "bizsre").mkdir()
    for name in ("bizsre_test.json", "bizsre_test_enzh_743.json"):
        (tmp_path / "bizsre" / name).write_text("[]", encoding="utf-8")
    published = BiZsRETask("zh").with_protocol("bizsre-published")
    assert published.data_files(tmp_path)[0].name == "bizsre_test.json"
    assert BiZsRETask("zh").data_files(tmp_path)[0].name == "bizsre_test_enzh_743.json"
    assert published.protocol_notes(tmp_path) == [published.protocol_notes(tmp_path)[0]]  # the Chinese pool
    (tmp_path / "bizsre" / "bizsre_test.json").unlink()
    notes = published.protocol_notes(tmp_path)
    assert "bizsre_test.json (the official 1,037 records) is not in the data directory" in notes[-1]
    assert BiZsRETask("en").protocol_notes(tmp_path) == []


def bizsre_ike(tmp_path, protocol: str, **hparams) -> IKE:
    editor = IKE(IKEHparams(**{"encoder": "char-ngram", "probe_cache": False, "k": 3, **hparams}))
    context = EditorContext(
        cache_dir=tmp_path / "cache", training_set="pool_en", templates=Templates(), protocol=protocol
    )
    editor.prepare(None, None, context)
    return editor


def test_ike_under_the_published_profile_builds_the_bizsre_context(pools, tmp_path, tiny_llama):  # noqa: F811
    editor = bizsre_ike(tmp_path, "bizsre-published")
    request = replace(LANGUAGE, targets=(("en", "German"), ("zh", "德语")))
    edit = editor.apply(tiny_llama.model, tiny_llama.tokenizer, [request])
    neighbours = edit.info["neighbours"]
    assert edit.info["style"] == "bizsre" and len(neighbours) == 3
    # the three most similar to the fact, most similar first
    index = editor.index
    similarity = index.similarity(
        "New Fact: What is the native language of Jean Dupont? German\n"
        "Prompt: What is the native language of Jean Dupont?"
    ).tolist()
    ranked = sorted(range(len(similarity)), key=lambda i: -similarity[i])
    assert neighbours == [index.demonstrations[i].label for i in ranked[:3]]
    harness = bizsre_ike(tmp_path, "harness").apply(tiny_llama.model, tiny_llama.tokenizer, [request])
    fact = "New Fact: Q:What is the native language of Christiane Cohendy? A: French\n"
    queries = {
        "copy": "Q:What is the native language of Christiane Cohendy? A: French",
        "update": "What's Christiane Cohendy's mother tongue? French",
        "retain": "who sings let it go in frozen Idina Menzel",
    }
    own = "New Fact: What is the native language of Jean Dupont? German\n"
    demonstrations = "".join(f"{fact}Prompt: {queries[n.split(':')[0]]}\n\n" for n in neighbours)
    assert (
        edit.prefix_text
        == demonstrations + own + "Prompt: What is the native language of Jean Dupont? German\n\n"
    )
    probe = "Jean Dupont的母语是什么？"
    assert edit.probe_text(probe, "zh") == (
        "New Fact: What is the native language of Jean Dupont? 德语\nPrompt: " + probe
    )
    assert edit.probe_text(probe, "en").startswith(own + "Prompt: ")
    # locality compares with the fact and question without demonstrations, in the probe's language
    pairs = [("who wrote hamlet", "Shakespeare"), ("谁写了哈姆雷特", "莎士比亚")]
    reference = edit.reference_answers(
        tiny_llama.model, tiny_llama.tokenizer, pairs, "teacher_forced", 4, ["en", "zh"]
    )
    wrapped = [(own + "Prompt: who wrote hamlet", "Shakespeare")]
    wrapped += [
        ("New Fact: What is the native language of Jean Dupont? 德语\nPrompt: 谁写了哈姆雷特", "莎士比亚")
    ]
    assert reference == read_answers(tiny_llama.model, tiny_llama.tokenizer, wrapped, "teacher_forced", 4)
    assert (
        harness.reference_answers(tiny_llama.model, tiny_llama.tokenizer, pairs, "teacher_forced", 4) is None
    )


def test_bizsre_pool_strips_the_marker_as_a_character_set(pools):  # noqa: F811
    example = pools["pool_en"].rows[0]
    stripped = _as_bizsre_pool(replace(example, locality_prompt="in the end who wins"))
    # "in t" goes: i, n, space and t are all characters of "nq question: "
    assert stripped.locality_prompt == "he end who wins"
    assert stripped.prompt == "Q:What is the native language of Christiane Cohendy? A:"


def test_a_published_run_records_its_profile_and_does_not_compare_with_the_default(tmp_path, data_dir):
    common = {"editor": "none", "task": "bizsre_en_zh", "model": "tiny-llama", "data_dir": str(data_dir)}
    published = run(
        **common,
        limit=2,
        output_dir=str(tmp_path / "p"),
        overrides={"protocol": "bizsre-published"},
        progress=False,
    )
    default = run(**common, limit=2, output_dir=str(tmp_path / "d"), progress=False)
    assert published["protocol"]["name"] == "bizsre-published"
    assert any("chinese-llama-plus-7b" in note for note in published["protocol"]["notes"])
    assert default["protocol"] == {"name": "harness", "notes": []}
    samples = [json.loads(line) for line in (tmp_path / "p" / "samples.jsonl").read_text().splitlines()]
    locality = [p["prompt"] for p in samples[0]["probes"] if p["property"] == "locality"]
    first = raw_records(data_dir, 1)[0]
    assert locality == [first["en"]["loc"], first["zh"]["loc"]]  # as in the file, marker and all
    comparison = compare.compare(published, default, [])
    assert [d.field for d in comparison.refusals] == ["protocol.name"]


def usable_training_records(data_dir: Path, count: int) -> list[dict]:
    """The first ``count`` English ZsRE training records with every field filled (the pool's rule)."""
    fields = ("subject", "src", "alt", "rephrase", "loc", "loc_ans")
    raw = json.loads((data_dir / "zsre_train" / "zsre_mend_train_en_10000.json").read_text(encoding="utf-8"))
    return [item for item in raw if all(isinstance(item.get(f), str) and item[f].strip() for f in fields)][
        :count
    ]


def bizsre_demonstration(item: dict, kind: str) -> str:
    """One pool demonstration as the Bi-ZsRE run script and EasyEdit's IKE wrote it."""
    fact = f"Q:{item['src']} A: {item['alt']}"
    query = {
        "copy": fact,
        "update": f"{item['rephrase']} {item['alt']}",
        # a character-set strip, as the script did (that is what is reproduced)
        "retain": f"{item['loc'].lstrip('nq question: ')} {item['loc_ans']}",  # noqa: B005
    }[kind]
    return f"New Fact: {fact}\nPrompt: {query}\n\n"


@pytest.mark.slow
def test_published_ike_context_on_the_first_five_records_with_the_demo_model(gemma, data_dir, tmp_path):
    pool = usable_training_records(data_dir, 200)
    task = BiZsRETask("en").with_protocol("bizsre-published")
    raw = raw_records(data_dir, 5)
    records = task.records(raw, lambda question: question)
    editor = IKE(IKEHparams(pool_size=len(pool)))
    context = EditorContext(
        cache_dir=tmp_path,
        data_dir=data_dir,
        training_set="zsre_en",
        templates=Templates(),
        protocol=task.protocol,
    )
    editor.prepare(gemma.model, gemma.tokenizer, context)
    for item, record in zip(raw, records, strict=True):
        src, alt = item["en"]["src"], item["en"]["alt"]
        edit = editor.apply(gemma.model, gemma.tokenizer, [record.request])
        chosen = [label.split(":") for label in edit.info["neighbours"]]
        assert len(chosen) == 32
        similarity = editor.index.similarity(f"New Fact: {src} {alt}\nPrompt: {src}")
        position = {d.label: i for i, d in enumerate(editor.index.demonstrations)}
        shown = [float(similarity[position[label]]) for label in edit.info["neighbours"]]
        assert shown == sorted(shown, reverse=True)  # most similar first
        demonstrations = "".join(bizsre_demonstration(pool[int(source)], kind) for kind, source in chosen)
        assert edit.prefix_text == demonstrations + f"New Fact: {src} {alt}\nPrompt: {src} {alt}\n\n"
        for probe in record.probes:
            fact = f"New Fact: {src} {item[probe.language]['alt']}\nPrompt: "
            assert edit.probe_text(probe.prompt, probe.language) == fact + probe.prompt
        locality = [p for p in record.probes if p.property == "locality"]
        pairs = [(p.prompt, p.expected) for p in locality]
        languages = [p.language for p in locality]
        reference = edit.reference_answers(
            gemma.model, gemma.tokenizer, pairs, "teacher_forced", 16, languages
        )
        bare = [
            (f"New Fact: {src} {item[lang]['alt']}\nPrompt: {item[lang]['loc']}", item[lang]["loc_ans"])
            for lang in ("en", "zh")
        ]
        assert languages == ["en", "zh"]
        assert reference == read_answers(gemma.model, gemma.tokenizer, bare, "teacher_forced", 16)
