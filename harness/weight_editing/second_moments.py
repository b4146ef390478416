"""Second moments E[k k^T] of an MLP's keys over a corpus: the covariance ROME and MEMIT whiten with;
computed once per model, layer and corpus and cached with a checksum."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from harness.activations import run_until
from harness.answers import pad_batch, prompt_ids
from harness.model_text import corpus_spec, sampled_corpus, shipped_samples
from harness.models import architecture, cache_lock, save_atomic
from harness.runtime import MASTER_DTYPE, device_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecondMomentSettings:
    """Where C = E[k k^T] comes from; inherited by the hparams of editors that use it."""

    second_moments: bool = False  # False: C = I
    second_moment_tokens: int = 20_000
    second_moment_corpus: tuple[str, ...] = ("zsre_train/train_en_10000.tsv", "zsre_train/train_zh_10000.tsv")
    second_moment_ridge: float = 1e-2  # added to C as ridge * mean(diag C) * I


def corpus_texts(files: Sequence[Path]) -> list[str]:
    """Lines of text from .tsv (columns joined by a space) or .txt files, in file order."""
    texts: list[str] = []
    for path in files:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            line = line.replace("\t", " ").strip()
            if line:
                texts.append(line)
    return texts


def moment_corpus(model, tokenizer, settings: SecondMomentSettings, context) -> tuple[list[str], str]:
    """The texts C is estimated from, and a label saying which: the configured files under the data
    dir, or (without them) text sampled from the model in the task's languages, cached."""
    files = (
        [Path(context.data_dir) / name for name in settings.second_moment_corpus] if context.data_dir else []
    )
    if files and all(f.is_file() for f in files):
        return corpus_texts(files), "files:" + ",".join(settings.second_moment_corpus)
    languages = context.languages or ("en",)
    tokens = settings.second_moment_tokens
    specs = [corpus_spec(language, len(languages), tokens, context.seed) for language in languages]
    shipped = all(shipped_samples(model, spec) is not None for spec in specs)
    log.warning(
        "no data dir with the second_moment_corpus files; second moments from text the model wrote (%s)%s",
        "/".join(languages),
        ", shipped with the model" if shipped else ", sampled once and cached",
    )
    texts = sampled_corpus(model, tokenizer, languages, tokens, context.seed, Path(context.cache_dir))
    return texts, ("model-samples(shipped):" if shipped else "model-samples:") + "/".join(languages)


def regularised_moments(
    model, tokenizer, module_names: Sequence[str], settings: SecondMomentSettings, context
) -> tuple[dict[str, torch.Tensor], str]:
    """C + ridge * mean(diag C) * I for each module (float64 on the module's device; identity when
    second moments are off), and the corpus label."""
    if not settings.second_moments:
        identity = {}
        for name in module_names:
            device = _weight(model, name).device
            identity[name] = torch.eye(_input_width(model, name), dtype=torch.float64, device=device)
        return identity, "none (C = I)"
    texts, label = moment_corpus(model, tokenizer, settings, context)
    moments = second_moments(
        model, tokenizer, module_names, texts, settings.second_moment_tokens, Path(context.cache_dir)
    )
    regularised = {}
    for name, moment in moments.items():
        moment = moment.to(_weight(model, name).device)
        ridge = settings.second_moment_ridge * moment.diagonal().mean()
        regularised[name] = moment + ridge * torch.eye(len(moment), dtype=moment.dtype, device=moment.device)
    return regularised, label


def _weight(model, module_name: str) -> torch.Tensor:
    return model.get_submodule(module_name).weight


def _input_width(model, module_name: str) -> int:
    return architecture(model).out_in(_weight(model, module_name))[1]


def _second_moment_key(fingerprint: str, module_name: str, texts: Sequence[str], tokens: int, dtype) -> str:
    corpus = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    parts = {
        "model": fingerprint,
        "module": module_name,
        "corpus": corpus,
        "tokens": tokens,
        "dtype": str(dtype),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _load_verified(path: Path, expected_key: str) -> torch.Tensor | None:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        moment, key, checksum = saved["moment"], saved["key"], saved["checksum"]
    except Exception:  # noqa: BLE001 - a partial or corrupt file is rebuilt, never trusted
        log.warning("second-moment cache %s is unreadable; recomputing", path)
        return None
    # the sum's last bits depend on the thread count that reduces it: equal to 1e-9, not bit for bit
    if key != expected_key or not math.isclose(checksum, float(moment.sum()), rel_tol=1e-9):
        log.warning("second-moment cache %s does not match its key or checksum; recomputing", path)
        return None
    return moment


def second_moments(
    model,
    tokenizer,
    module_names: Sequence[str],
    texts: Sequence[str],
    tokens: int,
    cache: Path,
    batch_size: int = 64,
    max_length: int = 256,
) -> dict[str, torch.Tensor]:
    """E[k k^T] of each module's input over the first ``tokens`` tokens of ``texts``: products in
    float32, sums in float64, returned on the CPU and cached.

    One file per module, keyed by the model's fingerprint (content, dtype, device kind), module,
    corpus hash, token budget and dtype; a file that is unreadable or fails its checksum is
    recomputed. Modules missing from the cache are computed together in one streaming pass (batches
    of ``batch_size`` texts, each cut to ``max_length`` tokens) that stops at the deepest of them:
    memory is one d_ff x d_ff sum per module plus one batch of activations.
    """
    fingerprint = getattr(model, "harness_fingerprint", "unknown")
    found: dict[str, torch.Tensor] = {}
    missing = _read_cached(fingerprint, module_names, texts, tokens, model.dtype, cache, found)
    if missing:  # processes sharing the cache (a run's shards) take turns: a later one finds them computed
        with cache_lock(cache / "second_moments" / fingerprint[:24]):
            missing = _read_cached(fingerprint, list(missing), texts, tokens, model.dtype, cache, found)
            if missing:
                _compute(model, tokenizer, missing, texts, tokens, batch_size, max_length, found)
    return {name: found[name] for name in module_names}


def _compute(model, tokenizer, missing, texts, tokens, batch_size, max_length, found: dict) -> None:
    """Compute the ``missing`` moments in one pass, cache each and put it into ``found``."""
    sums, count = _stream_moments(model, tokenizer, list(missing), texts, tokens, batch_size, max_length)
    for name, (key, path) in missing.items():
        found[name] = (sums[name] / count).cpu()
        payload = {"moment": found[name], "key": key, "checksum": float(found[name].sum()), "tokens": count}
        save_atomic(payload, path)


def _read_cached(fingerprint, names, texts, tokens, dtype, cache: Path, found: dict) -> dict[str, tuple]:
    """Put the cached moments of ``names`` into ``found``; return (key, path) of the others."""
    missing: dict[str, tuple[str, Path]] = {}
    for name in names:
        key = _second_moment_key(fingerprint, name, texts, tokens, dtype)
        path = cache / "second_moments" / f"{key}.pt"
        if path.exists() and (moment := _load_verified(path, key)) is not None:
            found[name] = moment
        else:
            missing[name] = (key, path)
    return missing


@torch.no_grad()
def _stream_moments(model, tokenizer, names, texts, tokens, batch_size, max_length):
    targets = [model.get_submodule(name) for name in names]
    sums: dict[str, torch.Tensor] = {}
    count = 0
    label = names[0] if len(names) == 1 else f"{len(names)} modules"
    progress = tqdm(total=tokens, desc=f"second moments ({label})", unit="tok", leave=False)
    for start in range(0, len(texts), batch_size):
        if count >= tokens:
            break
        batch = [prompt_ids(tokenizer, t)[:max_length] for t in texts[start : start + batch_size]]
        ids, mask = pad_batch(batch, tokenizer.pad_token_id, device_of(model))
        seen = run_until(model, ids, mask, targets, "input")
        take = None
        for name, inputs in zip(names, seen, strict=True):
            keys = inputs[mask.to(inputs.device).bool()][: tokens - count].to(MASTER_DTYPE)
            take = len(keys)
            product = (keys.T @ keys).double()
            sums[name] = sums[name] + product if name in sums else product
        count += take
        progress.update(take)
    progress.close()
    if not count:
        raise ValueError("second moments: the corpus is empty")
    return sums, count
