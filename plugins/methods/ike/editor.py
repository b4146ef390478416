"""IKE (Zheng et al., 2023): edit by putting demonstrations and the new fact in front of every probe.

Each pool record yields three demonstrations (copy, update, retain). For an edit,
the k demonstrations nearest to ``New Fact: {prompt} {target}\\nPrompt: {prompt}`` are retrieved
(cosine similarity of sentence vectors), ordered most similar last, followed by the copy
demonstration of the edit itself; a probe then reads ``New Fact: {prompt} {target}\\nPrompt: {probe}``.
The fact is written in the edit language only: the Bi-ZsRE code put the target-language answer
there, which handed cross-lingual probes their answer. Everything before the probe is the same for
all probes of an edit, so its key/value states are computed once (``probe_cache``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.answers import Answer, SharedPrefix, answers_after_prefix, prompt_ids
from harness.api import Edit, EditorContext, EditRequest
from harness.models import save_atomic
from harness.templates import Templates
from harness.training import load_training_set
from harness_plugins.methods.ike.demonstrations import KINDS, Demonstration, build, nearest, quotas
from harness_plugins.methods.ike.encoders import CHAR_NGRAM, MINILM, SentenceEncoder, choose, cosine

log = logging.getLogger(__name__)

MIXES = ("retrieved", "fixed")
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
    """An edit that lives in the prompt: ``prefix`` (demonstrations and the fact) is read before
    every probe, which is wrapped as ``probe_head + probe + probe_tail``. No weight changes."""

    def __init__(self, prefix: SharedPrefix, prefix_text: str, probe_head: str, probe_tail: str):
        super().__init__()
        self.prefix, self.prefix_text = prefix, prefix_text
        self.probe_head, self.probe_tail = probe_head, probe_tail

    def probe_text(self, prompt: str) -> str:
        return self.probe_head + prompt + self.probe_tail

    def wrap_prompt(self, prompt: str) -> str:
        return self.prefix_text + self.probe_text(prompt)

    def answers(
        self, model: torch.nn.Module, tokenizer: Any, pairs: list[tuple[str, str]], mode: str, batch_size: int
    ) -> list[Answer]:
        wrapped = [(self.probe_text(prompt), target) for prompt, target in pairs]
        return answers_after_prefix(model, tokenizer, self.prefix, wrapped, mode, batch_size)


def _learned_positions(model, window: int) -> bool:
    """Whether the model reads positions from a learned table of ``window`` rows (GPT-2 style), which a
    longer input overruns; rotary positions have no such table."""
    tokens = model.get_input_embeddings()
    return any(
        isinstance(module, torch.nn.Embedding) and module is not tokens and module.num_embeddings == window
        for module in model.modules()
    )


class IKE:
    """IKE: in-context editing with k retrieved demonstrations (copy/update/retain); no weight changes."""

    name = "ike"
    hparams_class: type[IKEHparams] = IKEHparams
    supports_batch = False
    modes = ("single",)  # one fact in the context at a time

    def __init__(self, hparams: IKEHparams):
        self.hparams = hparams
        self.templates = Templates()  # the run's, once prepared
        self.index: DemonstrationIndex | None = None

    def template_names(self) -> tuple[str, ...]:
        return (DEMONSTRATION, PROBE)

    def prepare(self, model, tokenizer, context: EditorContext) -> None:
        """Build the pool's demonstrations and their vectors (cached on disk)."""
        hp = self.hparams
        if context.templates is not None:
            self.templates = context.templates
        data = load_training_set(hp.train_data or context.training_set, context.data_dir, self.name)
        pool = data.examples[: hp.pool_size or None]
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
        }
        key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()[:32]
        path = Path(context.cache_dir) / "ike" / f"{key}.pt"
        texts = [d.text for d in demonstrations]
        if path.is_file():
            stored = torch.load(path, map_location="cpu", weights_only=True)
            encoder.load_state(stored["state"])
            vectors = stored["vectors"]
        else:
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
        self.index = DemonstrationIndex(demonstrations, vectors, encoder, data.language)

    def _fit(self, tokenizer, request: EditRequest, chosen: list, fact: str, window: int):
        """Drop the least similar demonstrations (they come first) until the context leaves
        ``PROBE_ROOM`` tokens of the model's window for a probe and its answer."""
        where = request.record_id or request.prompt[:40]
        for dropped in range(1, len(chosen) + 1):
            kept = chosen[dropped:]
            text = "".join(d.text for d in kept) + fact
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

    def apply(self, model, tokenizer, requests: list[EditRequest]) -> Edit:
        if self.index is None:
            raise RuntimeError(f"{self.name}: call prepare() before apply()")
        if len(requests) != 1:
            raise ValueError(f"{self.name} edits one fact at a time, got {len(requests)} requests")
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
        cut = head.rfind("\n") + 1  # the shared prefix ends at the last line break before the probe
        prefix_text = "".join(d.text for d in chosen) + own + head[:cut]
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
        edit = InContextEdit(prefix, prefix_text, head[cut:], tail)
        edit.info = {
            "encoder": index.encoder.name,
            "mix": hp.mix,
            "demonstrations": len(chosen),
            "kinds": {kind: sum(d.kind == kind for d in chosen) for kind in KINDS},
            "neighbours": [d.label for d in chosen],
            "prefix_tokens": len(ids),
        }
        return edit
