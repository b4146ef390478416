"""ROME: key = subject representation averaged over contexts, value = optimised, rank-one write."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from harness.api import Edit, EditorContext, EditRequest
from harness.models import architecture
from harness.weight_editing import (
    ESSENCE_PROMPTS,
    ValueObjective,
    context_prefixes,
    corpus_texts,
    keys_at,
    optimise_value,
    rank_one_update,
    sampled_corpus,
    second_moment,
    subject_last_token,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ROMEHparams(ValueObjective):
    """The value-optimisation settings (inherited) plus where and how ROME writes."""

    layer: int = 5
    context_lengths: tuple[int, ...] = (5, 10)  # one group of prefixes per length
    contexts_per_length: int = 10
    second_moments: bool = False  # C = I as in the paper's LLaMA setting
    second_moment_tokens: int = 20_000
    second_moment_corpus: tuple[str, ...] = ("zsre_train/train_en_10000.tsv", "zsre_train/train_zh_10000.tsv")
    second_moment_ridge: float = 1e-2

    def objective(self) -> ValueObjective:
        names = {f.name for f in fields(ValueObjective)}
        return ValueObjective(**{name: getattr(self, name) for name in names})


class ROME:
    """Rank-one model editing: write (subject key -> optimised value) into one MLP matrix."""

    hparams_class = ROMEHparams
    supports_batch = False

    def __init__(self, hparams: ROMEHparams):
        self.hparams = hparams
        self.context: EditorContext | None = None
        self.inverse_moment: torch.Tensor | None = None
        self.corpus = "none (C = I)"

    def prepare(self, model, tokenizer, context: EditorContext) -> None:
        self.context = context
        n_layers = model.config.num_hidden_layers
        if not 0 <= self.hparams.layer < n_layers:
            raise ValueError(f"rome: layer={self.hparams.layer} is outside the model's 0..{n_layers - 1}")
        if self.hparams.second_moments:
            self.inverse_moment = self._inverse_second_moment(model, tokenizer, context)

    def _inverse_second_moment(self, model, tokenizer, context: EditorContext) -> torch.Tensor:
        hp = self.hparams
        files = (
            [Path(context.data_dir) / name for name in hp.second_moment_corpus] if context.data_dir else []
        )
        if files and all(f.is_file() for f in files):
            texts, self.corpus = corpus_texts(files), "files:" + ",".join(hp.second_moment_corpus)
        else:
            languages = context.languages or ("en",)
            log.warning(
                "rome: no data dir with the second_moment_corpus files; sampling the corpus "
                "from the model itself (%s), once, cached",
                "/".join(languages),
            )
            texts = sampled_corpus(
                model, tokenizer, languages, hp.second_moment_tokens, context.seed, Path(context.cache_dir)
            )
            self.corpus = "model-samples:" + "/".join(languages)
        module_name = architecture(model).mlp_out.format(hp.layer)
        moment = second_moment(
            model, tokenizer, module_name, texts, hp.second_moment_tokens, Path(context.cache_dir)
        )
        ridge = hp.second_moment_ridge * moment.diagonal().mean()
        return torch.linalg.inv(moment + ridge * torch.eye(len(moment), dtype=moment.dtype))

    def _prefixes(self, model, tokenizer, language: str) -> list[str]:
        assert self.context is not None, "call prepare() before apply()"
        lengths = [(n, self.hparams.contexts_per_length) for n in self.hparams.context_lengths]
        return context_prefixes(
            model, tokenizer, language, self.context.seed, Path(self.context.cache_dir), lengths
        )

    def apply(self, model, tokenizer, requests: list[EditRequest]) -> Edit:
        if len(requests) != 1:
            raise ValueError(f"rome edits one fact at a time, got {len(requests)}")
        (request,) = requests
        arch = architecture(model)
        module_name = arch.mlp_out.format(self.hparams.layer)
        weight_name = arch.mlp_out_weight(self.hparams.layer)
        texts = [prefix + request.prompt for prefix in self._prefixes(model, tokenizer, request.language)]
        positions = [subject_last_token(tokenizer, t, request.subject) for t in texts]
        key = keys_at(model, tokenizer, texts, positions, module_name).mean(0)
        weight = model.get_parameter(weight_name)
        value = (key @ weight) if arch.transposed else (weight @ key)
        essence = ESSENCE_PROMPTS.get(request.language, ESSENCE_PROMPTS["en"]).format(request.subject)
        result = optimise_value(
            model,
            tokenizer,
            prefixed_prompts=texts,
            subject=request.subject,
            target=request.target,
            essence_prompt=essence,
            module_name=module_name,
            reference_norm=float(value.norm()),
            objective=self.hparams.objective(),
            seed=self.context.seed if self.context else 0,
        )
        direction = None
        if self.inverse_moment is not None:
            direction = (self.inverse_moment @ key.double()).to(key.dtype)
        edit = Edit.snapshot(model, [weight_name])
        rank_one_update(weight, key, result.delta, direction, transposed=arch.transposed)
        edit.info = {
            "value_steps": result.steps,
            "final_loss": result.losses[-1],
            "delta_norm": float(result.delta.norm()),
            "second_moment_corpus": self.corpus,
        }
        return edit
