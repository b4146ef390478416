"""IKE (Zheng et al., 2023): edit by putting demonstrations and the new fact in front of every probe.

Each pool record yields three demonstrations (copy, update, retain). For an edit,
the k demonstrations nearest to ``New Fact: {prompt} {target}\\nPrompt: {prompt}`` are retrieved
(cosine similarity of sentence vectors), ordered most similar last, followed by the copy
demonstration of the edit itself; a probe then reads ``New Fact: {prompt} {target}\\nPrompt: {probe}``.
The fact is written in the edit language only: the Bi-ZsRE code put the target-language answer
there, which handed cross-lingual probes their answer. Everything before the probe is the same for
all probes of an edit, so its key/value states are computed once (``probe_cache``).

``style = "bizsre"`` (the default under the ``bizsre-published`` scoring profile) runs IKE as the
Bi-ZsRE code did instead (docs/protocol.md): pool facts read ``Q:{question} A:``, pool locality
questions lose the characters of ``nq question: `` from their start, demonstrations come most similar
first, each probe's fact carries the answer in the probe's language, and locality compares with the
answer to the same fact-and-question without demonstrations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from harness.answers import Answer, SharedPrefix, answers_after_prefix, prompt_ids, read_answers
from harness.api import Capabilities, Edit, Editor, EditorContext, EditRequest, TrainingExample
from harness.models import build_once, save_atomic
from harness.templates import Templates
from harness.training import load_training_set
from harness_plugins.methods.ike.demonstrations import KINDS, Demonstration, build, nearest, quotas
from harness_plugins.methods.ike.encoders import CHAR_NGRAM, MINILM, SentenceEncoder, choose, cosine

log = logging.getLogger(__name__)

MIXES = ("retrieved", "fixed")
HARNESS, BIZSRE = "harness", "bizsre"
STYLES = (HARNESS, BIZSRE)
BIZSRE_PROFILE = "bizsre-published"  # the scoring profile whose default style is BIZSRE
NQ_MARKER_CHARACTERS = "nq question: "  # stripped as a set of characters, as the Bi-ZsRE code did
DEMONSTRATION = "ike/demonstration.jinja"
PROBE = "ike/probe.jinja"
MARKER = "\x00probe\x00"  # stands for the probe while the probe template is split
CACHE_FORMAT = 1
PROBE_ROOM = 128  # tokens of the model's window kept free for a probe and its answer


@dataclass(frozen=True)
class IKEHparams:
    """Retrieval settings; the model's weights never change."""

    k: int = 32  # demonstrations retrieved per edit
    mix: str = "retrieved"  # "retrieved": k nearest of any kind (Bi-ZsRE); "fixed": 4/12/16 per 32 (paper)
    encoder: str = MINILM  # "minilm", "char-ngram" or a local sentence-encoder directory
    encoder_languages: tuple[str, ...] = ("en",)  # pool languages the encoder covers; others: char-ngram
    pool_size: int = 0  # first N training records form the pool; 0: all
    train_data: str = ""  # training set for the pool; "": the task's (in its edit language)
    probe_cache: bool = True  # encode the shared prefix once per edit instead of once per probe
    style: str = ""  # "harness" or "bizsre" (see the module docstring); "": bizsre under bizsre-published

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.mix not in MIXES:
            raise ValueError(f"mix must be one of {MIXES}, got {self.mix!r}")
        if self.encoder not in (MINILM, CHAR_NGRAM) and not Path(self.encoder).is_dir():
            raise ValueError(
                f"encoder must be {MINILM!r}, {CHAR_NGRAM!r} or a local sentence-encoder directory, "
                f"got {self.encoder!r}"
            )
        if self.pool_size < 0:
            raise ValueError(f"pool_size must be >= 0 (0: the whole training set), got {self.pool_size}")
        if self.style not in ("", *STYLES):
            raise ValueError(f"style must be one of {STYLES} (or empty: the profile's), got {self.style!r}")


@dataclass(frozen=True)
class DemonstrationIndex:
    """The pool's demonstrations, their sentence vectors and the encoder that made them."""

    demonstrations: list[Demonstration]
    vectors: torch.Tensor
    encoder: SentenceEncoder
    language: str

    def similarity(self, query: str) -> torch.Tensor:
        return cosine(self.vectors, self.encoder.encode([query]))


class InContextEdit(Edit):
    """An edit that lives in the prompt: ``prefix`` (demonstrations, and the fact unless it varies by
    language) is read before every probe, which is wrapped as ``head + probe + tail``, the head of
    the probe's language from ``heads`` or else ``head``. No weight changes.

    ``compare_without_prefix``: locality compares with the unedited model's answer to the wrapped
    probe without the prefix, not to the bare probe."""

    def __init__(
        self,
        prefix: SharedPrefix,
        prefix_text: str,
        head: str,
        tail: str,
        heads: dict[str, str] | None = None,
        compare_without_prefix: bool = False,
    ):
        super().__init__()
        self.prefix, self.prefix_text = prefix, prefix_text
        self.head, self.tail, self.heads = head, tail, heads or {}
        self.compare_without_prefix = compare_without_prefix

    def probe_text(self, prompt: str, language: str = "") -> str:
        return self.heads.get(language, self.head) + prompt + self.tail

    def wrap_prompt(self, prompt: str) -> str:
        return self.prefix_text + self.probe_text(prompt)

    def _wrapped(self, pairs: list[tuple[str, str]], languages: list[str] | None) -> list[tuple[str, str]]:
        languages = languages or [""] * len(pairs)
        return [(self.probe_text(p, lang), t) for (p, t), lang in zip(pairs, languages, strict=True)]

    def answers(self, model, tokenizer, pairs, mode, batch_size, languages=None) -> list[Answer]:
        wrapped = self._wrapped(pairs, languages)
        return answers_after_prefix(model, tokenizer, self.prefix, wrapped, mode, batch_size)

    def reference_answers(self, model, tokenizer, pairs, mode, batch_size, languages=None):
        if not self.compare_without_prefix:
            return None
        return read_answers(model, tokenizer, self._wrapped(pairs, languages), mode, batch_size)


def _learned_positions(model, window: int) -> bool:
    """Whether the model reads positions from a learned table of ``window`` rows (GPT-2 style), which a
    longer input overruns; rotary positions have no such table."""
    tokens = model.get_input_embeddings()
    return any(
        isinstance(module, torch.nn.Embedding) and module is not tokens and module.num_embeddings == window
        for module in model.modules()
    )


def _as_bizsre_pool(example: TrainingExample) -> TrainingExample:
    """A pool record as the Bi-ZsRE code fed it to IKE: the fact's question as ``Q:{question} A:``,
    the locality question stripped of leading characters of ``nq question: `` (a character set, so
    a question starting with one of them loses more than the marker)."""
    return replace(
        example,
        prompt=f"Q:{example.prompt} A:",
        locality_prompt=example.locality_prompt.lstrip(NQ_MARKER_CHARACTERS),
    )


class IKE(Editor):
    """IKE: in-context editing with k retrieved demonstrations (copy/update/retain); no weight changes."""

    name = "ike"
    hparams_class: type[IKEHparams] = IKEHparams
    capabilities = Capabilities(in_weights=False)  # one fact in the context at a time

    def __init__(self, hparams: IKEHparams):
        super().__init__(hparams)
        self.templates = Templates()  # the run's, once prepared
        self.index: DemonstrationIndex | None = None
        self.style = hparams.style or HARNESS

    def template_names(self) -> tuple[str, ...]:
        return (DEMONSTRATION, PROBE)

    def setup(self, model, tokenizer, context: EditorContext) -> None:
        """Build the pool's demonstrations and their vectors (cached on disk)."""
        hp = self.hparams
        if context.templates is not None:
            self.templates = context.templates
        self.style = hp.style or (BIZSRE if context.protocol == BIZSRE_PROFILE else HARNESS)
        data = load_training_set(hp.train_data or context.training_set, context.data_dir, self.name)
        pool = data.examples[: hp.pool_size or None]
        if self.style == BIZSRE:
            pool = [_as_bizsre_pool(example) for example in pool]
        demonstrations = build(pool, lambda **fields: self.templates.render(DEMONSTRATION, **fields))
        if hp.k > len(demonstrations) or (hp.mix == "fixed" and max(quotas(hp.k).values()) > len(pool)):
            raise ValueError(
                f"{self.name}: k={hp.k} with mix={hp.mix!r} needs more demonstrations than the pool "
                f"({data.name}, {len(pool)} records, one demonstration of each kind {KINDS} per record) has"
            )
        encoder = choose(hp.encoder, data.language, hp.encoder_languages)
        key_source = {
            "format": CACHE_FORMAT,
            "encoder": encoder.identity,
            "pool": sorted(data.files.values()),
            "pool_size": len(pool),
            "template": self.templates.used[DEMONSTRATION],
            "style": self.style,
        }
        key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()[:32]
        path = Path(context.cache_dir) / "ike" / f"{key}.pt"
        texts = [d.text for d in demonstrations]

        def embed() -> None:
            started = time.perf_counter()
            encoder.fit(texts)
            vectors = encoder.encode(texts)
            log.info(
                "%s: %d demonstrations embedded with %s in %.0f s",
                self.name,
                len(texts),
                encoder.name,
                time.perf_counter() - started,
            )
            save_atomic({"state": encoder.state(), "vectors": vectors}, path)

        build_once(path, embed)
        with torch.device("cpu"):  # a sparse tensor is rebuilt on the default device otherwise
            stored = torch.load(path, map_location="cpu", weights_only=True)
        encoder.load_state(stored["state"])
        vectors = stored["vectors"]
        self.index = DemonstrationIndex(demonstrations, vectors, encoder, data.language)

    def _ordered(self, chosen: list[Demonstration]) -> list[Demonstration]:
        """``chosen`` (least similar first) in the order the context shows them."""
        return chosen[::-1] if self.style == BIZSRE else chosen

    def _fit(self, tokenizer, request: EditRequest, chosen: list, fact: str, window: int):
        """Drop the least similar demonstrations until the context leaves ``PROBE_ROOM`` tokens of
        the model's window for a probe and its answer."""
        where = request.record_id or request.prompt[:40]
        for dropped in range(1, len(chosen) + 1):
            kept = chosen[dropped:]
            text = "".join(d.text for d in self._ordered(kept)) + fact
            ids = prompt_ids(tokenizer, text)
            if len(ids) + PROBE_ROOM <= window:
                log.warning(
                    "%s: record %s: %d of %d demonstrations left out to fit the model's %d-token window",
                    self.name,
                    where,
                    dropped,
                    len(chosen),
                    window,
                )
                return kept, text, ids
        raise ValueError(
            f"{self.name}: record {where!r}: the new fact alone takes {len(prompt_ids(tokenizer, fact))} "
            f"tokens; the model's {window}-token window leaves no room for a probe ({PROBE_ROOM} tokens)"
        )

    def edit(self, model, tokenizer, requests: list[EditRequest]) -> Edit:
        (request,) = requests
        hp, index = self.hparams, self.index
        if request.language != index.language:
            log.warning(
                "%s: a %s edit with a %s pool: retrieval compares texts across languages",
                self.name,
                request.language,
                index.language,
            )
        fact = {"fact_prompt": request.prompt, "fact_answer": request.target}
        query = self.templates.render(PROBE, query=request.prompt, **fact)
        kinds = [d.kind for d in index.demonstrations]
        chosen = [index.demonstrations[i] for i in nearest(index.similarity(query), kinds, hp.k, hp.mix)]
        own = self.templates.render(DEMONSTRATION, query=request.prompt, answer=request.target, **fact)
        head, tail = self.templates.render(PROBE, query=MARKER, **fact).split(MARKER)
        heads: dict[str, str] = {}
        # the shared prefix ends at the last line break before the probe, or, when the fact line
        # differs by probe language, before the fact
        cut = 0 if self.style == BIZSRE else head.rfind("\n") + 1
        if self.style == BIZSRE:
            for language, answer in request.targets:
                fields = {**fact, "fact_answer": answer}
                heads[language] = self.templates.render(PROBE, query=MARKER, **fields).split(MARKER)[0]
        prefix_text = "".join(d.text for d in self._ordered(chosen)) + own + head[:cut]
        ids = prompt_ids(tokenizer, prefix_text)
        window = getattr(model.config, "max_position_embeddings", None)
        if window and len(ids) + PROBE_ROOM > window:
            if _learned_positions(model, window):  # past them the model fails deep inside
                chosen, prefix_text, ids = self._fit(tokenizer, request, chosen, own + head[:cut], window)
            else:
                log.warning(
                    "%s: record %s: %d context tokens (+ the probe) exceed the model's trained window of %d; "
                    "rotary positions extrapolate, answers may degrade (lower k to stay inside)",
                    self.name,
                    request.record_id or request.prompt[:40],
                    len(ids),
                    window,
                )
        prefix = SharedPrefix.encode(model, ids) if hp.probe_cache else SharedPrefix(tuple(ids))
        edit = InContextEdit(prefix, prefix_text, head[cut:], tail, heads, self.style == BIZSRE)
        edit.info = {
            "encoder": index.encoder.name,
            "mix": hp.mix,
            "style": self.style,
            "demonstrations": len(chosen),
            "kinds": {kind: sum(d.kind == kind for d in chosen) for kind in KINDS},
            "neighbours": [d.label for d in self._ordered(chosen)],  # as the context shows them
            "prefix_tokens": len(ids),
        }
        return edit
