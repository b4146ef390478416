"""Text the model writes itself: the context prefixes that keys and values are averaged over, and the
second-moment corpus when no corpus is on disk.

Each sample is identified by what it was drawn with (language, tokens per text, count, top-k, seed).
It is sampled once per model fingerprint and cached, unless the model's source ships it: a model
plugin may give its ``ModelSource`` a ``samples`` file, written by ``write_samples`` from the same
calls, so a first run on that model samples nothing (and every device and dtype reads the same text).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from harness import fallbacks
from harness.answers import pad_batch, prompt_ids
from harness.models import build_once
from harness.results import write_json
from harness.runtime import device_of

STARTERS = {"en": ["The", "Therefore", "Because", "I", "You"], "zh": ["这", "因此", "因为", "我", "你"]}
PREFIX_TOP_K = 5  # context prefixes: short, likely continuations
CORPUS_TOP_K = 40  # second-moment corpus: broader text


@dataclass(frozen=True)
class SampleSpec:
    """What a sample is drawn with: ``count`` texts of ``length`` new tokens, top-k, from ``seed``."""

    language: str
    length: int
    count: int
    top_k: int
    seed: int


class _TokenProgress(LogitsProcessor):
    """Advances a progress bar by one token per row at every generation step; scores pass unchanged."""

    def __init__(self, bar: tqdm):
        self.bar = bar

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.bar.update(len(input_ids))
        return scores


def starters(language: str) -> list[str]:
    """The words sampled text in ``language`` begins with; English ones (noted) for a language without
    its own."""
    if language not in STARTERS:
        fallbacks.note("sampling starter words", language, "the English starters")
    return STARTERS.get(language, STARTERS["en"])


@torch.no_grad()
def sample_texts(model, tokenizer, spec: SampleSpec, batch_size: int = 32) -> list[str]:
    """``spec.count`` continuations sampled from the model, cycling the language's starter words
    (``starters``). The bar counts tokens and estimates the time left."""
    words = starters(spec.language)
    torch.manual_seed(spec.seed)
    texts: list[str] = []
    total = spec.count * spec.length
    with tqdm(total=total, desc=f"sampling {spec.language} text", unit="tok", disable=total < 2000) as bar:
        for start in range(0, spec.count, batch_size):
            prompts = [
                prompt_ids(tokenizer, words[i % len(words)])
                for i in range(start, min(start + batch_size, spec.count))
            ]
            ids, mask = pad_batch(prompts, tokenizer.pad_token_id, device_of(model), left=True)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                top_k=spec.top_k,
                top_p=1.0,
                temperature=1.0,
                max_new_tokens=spec.length,
                min_new_tokens=spec.length,
                pad_token_id=tokenizer.pad_token_id,
                logits_processor=LogitsProcessorList([_TokenProgress(bar)]),
            )
            texts += [tokenizer.decode(r, skip_special_tokens=True).replace("\n", " ").strip() for r in out]
    return texts


def model_samples(model, tokenizer, spec: SampleSpec, cache: Path) -> list[str]:
    """The texts of ``spec``: shipped with the model's source, else cached, else sampled and cached."""
    starters(spec.language)  # however they are found, they began with these words
    shipped = shipped_samples(model, spec)
    if shipped is not None:
        return shipped
    fingerprint = getattr(model, "harness_fingerprint", "unknown")
    key = hashlib.sha256(json.dumps([fingerprint, "samples-v1", asdict(spec)]).encode()).hexdigest()[:24]
    path = cache / "model_samples" / f"{key}.json"
    build_once(path, lambda: write_json(path, sample_texts(model, tokenizer, spec)))
    return json.loads(path.read_text(encoding="utf-8"))


def shipped_samples(model, spec: SampleSpec) -> list[str] | None:
    """The texts of ``spec`` in the samples file the model's source ships, if it has them."""
    path = getattr(model, "harness_samples", None)
    if path is None:
        return None
    texts = _shipped_file(Path(path)).get(spec)
    return list(texts) if texts is not None else None


@functools.lru_cache(maxsize=4)
def _shipped_file(path: Path) -> dict[SampleSpec, tuple[str, ...]]:
    """A samples file by spec, read once per process (every edit asks for its prefixes)."""
    entries = json.loads(path.read_text(encoding="utf-8"))["samples"]
    return {SampleSpec(**entry["spec"]): tuple(entry["texts"]) for entry in entries}


def write_samples(model, tokenizer, specs: Iterable[SampleSpec], path: Path, made_with: dict) -> None:
    """Sample each spec from ``model`` and write the file a ``ModelSource`` ships as ``samples``;
    ``made_with`` records the model and the command, for whoever regenerates it."""
    samples = [{"spec": asdict(spec), "texts": sample_texts(model, tokenizer, spec)} for spec in specs]
    write_json(path, {"made_with": made_with, "samples": samples})


def context_prefixes(
    model,
    tokenizer,
    language: str,
    seed: int,
    cache: Path,
    lengths: Sequence[tuple[int, int]] = ((5, 10), (10, 10)),
) -> list[str]:
    """Short texts the model wrote, each followed by ". ", that keys and values are averaged over:
    ``count`` of each (``length``, ``count``) pair, after the empty prefix (the plain prompt)."""
    prefixes = [""]
    for length, count in lengths:
        spec = SampleSpec(language, length, count, PREFIX_TOP_K, seed)
        prefixes += [text + ". " for text in model_samples(model, tokenizer, spec, cache)]
    return prefixes


def corpus_spec(language: str, languages: int, tokens: int, seed: int, length: int = 128) -> SampleSpec:
    """One language's share of a ``tokens``-token corpus split evenly over ``languages`` languages."""
    return SampleSpec(language, length, -(-tokens // (length * max(languages, 1))), CORPUS_TOP_K, seed)


def sampled_corpus(
    model, tokenizer, languages: Sequence[str], tokens: int, seed: int, cache: Path, length: int = 128
) -> list[str]:
    """Text the model wrote in each language, for second moments when no corpus is on disk."""
    texts: list[str] = []
    for language in languages:
        spec = corpus_spec(language, len(languages), tokens, seed, length)
        texts += model_samples(model, tokenizer, spec, cache)
    return texts
