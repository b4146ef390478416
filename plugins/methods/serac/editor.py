"""SERAC (Mitchell et al., 2022): edits go into a memory; a scope classifier sends queries about a
stored edit to a counterfactual model that reads the edit, and every other query to the untouched
base model.

Choices for a model that has to fit beside the edited one on a CPU:
- scope classifier: a learned projection of the base model's mean-pooled hidden states after
  ``classifier_layer``; the score of (edit, query) is sigmoid(scale * cosine + offset).
- counterfactual model: a copy of the base model's first ``counterfactual_layers`` decoder layers and
  its final norm, sharing the frozen embeddings and output head (so the same tokenizer), fine-tuned to
  answer ``edit + query`` (the ``serac/counterfactual.jinja`` template) with the edit's target.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from harness.activations import run_until
from harness.answers import Answer, TargetBatch, pad_batch, prompt_ids, read_answers
from harness.api import Capabilities, Edit, Editor, EditorContext, EditRequest, TrainingExample
from harness.models import architecture, check_layers
from harness.runtime import MASTER_DTYPE, MasterCopies, device_of, runtime_of
from harness.templates import Templates
from harness.training import (
    RUNTIME_ONLY,
    TrainingSession,
    TrainingSettings,
    batch_indices,
    train_loop,
    trained_state,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SERACHparams(TrainingSettings):
    """Defaults train in minutes on a CPU for gemma3-270m; tuning/README.md has the paper scale."""

    train_limit: int = 1000
    classifier_layer: int = 6  # mean-pooled hidden states after this layer feed the classifier
    classifier_rank: int = 256
    classifier_steps: int = 1500
    classifier_lr: float = 1e-3
    counterfactual_layers: int = 12  # first decoder layers of the base model copied into it
    steps: int = 50  # counterfactual-model training steps (it copies answers well within ~20)
    batch_size: int = 8  # examples per step (each gives its prompt and its rephrase)
    lr: float = 2e-5
    validate_every: int = 25
    template: str = "serac/counterfactual.jinja"
    threshold: float = field(default=0.5, metadata=RUNTIME_ONLY)  # scope score that routes a query

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        for name in ("classifier_rank", "counterfactual_layers", "batch_size", "validate_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@torch.no_grad()
def pooled_states(model, tokenizer, texts: list[str], layer: int, batch_size: int = 32) -> torch.Tensor:
    """Mean of the hidden states after ``layer`` over each text's tokens (BOS left out): (n, d)."""
    target = model.get_submodule(architecture(model).layer(layer))
    pooled = []
    for start in range(0, len(texts), batch_size):
        chunk = [prompt_ids(tokenizer, t) for t in texts[start : start + batch_size]]
        ids, mask = pad_batch(chunk, tokenizer.pad_token_id, device_of(model))
        (hidden,) = run_until(model, ids, mask, [target], "output")
        weights = mask.clone()
        if tokenizer.bos_token_id is not None:
            weights[:, 0] *= (ids[:, 0] != tokenizer.bos_token_id).long()
        weights = weights.unsqueeze(-1).to(MASTER_DTYPE)
        pooled.append(
            (hidden.to(weights.device, MASTER_DTYPE) * weights).sum(1) / weights.sum(1).clamp(min=1)
        )
    return torch.cat(pooled)


class ScopeClassifier(torch.nn.Module):
    """Scores whether a query falls in an edit's scope, from pooled base-model states of both (float32)."""

    def __init__(self, width: int, rank: int, device: torch.device):
        super().__init__()
        self.register_buffer("mean", torch.zeros(width, dtype=MASTER_DTYPE, device=device))
        self.register_buffer("std", torch.ones(width, dtype=MASTER_DTYPE, device=device))
        self.projection = torch.nn.Linear(width, rank, dtype=MASTER_DTYPE, device=device)
        self.scale = torch.nn.Parameter(torch.tensor(10.0, dtype=MASTER_DTYPE, device=device))
        self.offset = torch.nn.Parameter(torch.tensor(-5.0, dtype=MASTER_DTYPE, device=device))

    def standardise(self, features: torch.Tensor) -> None:
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp(min=1e-6))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection((features - self.mean) / self.std), dim=-1)

    def logits(self, edits: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """(n_queries, n_edits) logits from embedded edits and queries."""
        return self.scale * queries @ edits.T + self.offset


def counterfactual_model(model, layers: int) -> torch.nn.Module:
    """The base model's first ``layers`` decoder layers and final norm as a causal LM of its own,
    sharing (not copying) the base model's frozen input and output embeddings."""
    config = copy.deepcopy(model.config)
    if layers > config.num_hidden_layers:
        raise ValueError(f"counterfactual_layers={layers} exceeds the model's {config.num_hidden_layers}")
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    runtime = runtime_of(model)
    with torch.device(runtime.device):
        small = AutoModelForCausalLM.from_config(config, dtype=runtime.dtype)
    wanted = set(small.state_dict())
    small.load_state_dict({k: v for k, v in model.state_dict().items() if k in wanted}, strict=False)
    small.set_input_embeddings(model.get_input_embeddings())
    small.set_output_embeddings(model.get_output_embeddings())
    shared = {id(p) for p in model.parameters()}
    for parameter in small.parameters():
        parameter.requires_grad_(id(parameter) not in shared)
    return small.eval()


def trainable_state(small: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in small.named_parameters() if p.requires_grad}


def answer_loss(model, tokenizer, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean NLL of each target given its prompt, teacher-forced argmax == target per target token)."""
    batch = TargetBatch.of(tokenizer, pairs, device_of(model))
    logits = batch.logits(model)
    targets = batch.targets.to(logits.device)
    return F.cross_entropy(logits, targets), (logits.argmax(-1) == targets).float()


class SERACEdit(Edit):
    """Holds the edits in the editor's memory until ``restore()``; answers by routing each probe."""

    def __init__(self, editor: SERAC, requests: list[EditRequest]):
        super().__init__()
        self.editor, self.requests = editor, requests
        self.info = {"memory": len(editor.memory)}

    def answers(self, model, tokenizer, pairs, mode, batch_size, languages=None) -> list[Answer]:
        editor = self.editor
        scores, best = editor.scope([p for p, _ in pairs])
        routed = [bool(s >= editor.hparams.threshold) for s in scores.tolist()]
        inside = [i for i, r in enumerate(routed) if r]
        outside = [i for i, r in enumerate(routed) if not r]
        found: dict[int, Answer] = {}
        counterfactual_pairs = [
            (editor.counterfactual_prompt(editor.memory[best[i]], pairs[i][0]), pairs[i][1]) for i in inside
        ]
        for i, answer in zip(
            inside, read_answers(editor.counterfactual, tokenizer, counterfactual_pairs, mode, batch_size)
        ):
            found[i] = answer
        for i, answer in zip(
            outside, read_answers(model, tokenizer, [pairs[i] for i in outside], mode, batch_size)
        ):
            found[i] = answer
        self.info.update(scope_scores=[round(s, 4) for s in scores.tolist()], routed=routed)
        return [found[i] for i in range(len(pairs))]

    def restore(self) -> None:
        for request in self.requests:
            if request in self.editor.memory:
                index = self.editor.memory.index(request)
                del self.editor.memory[index]
                self.editor.memory_embeddings = torch.cat(
                    [self.editor.memory_embeddings[:index], self.editor.memory_embeddings[index + 1 :]]
                )
        super().restore()


class SERAC(Editor):
    """SERAC: a memory of edits, a scope classifier and a counterfactual model (needs `harness train`)."""

    name = "serac"
    hparams_class = SERACHparams
    # edits live in a memory, not the weights: nothing to accumulate there
    capabilities = Capabilities(batch=True, in_weights=False, trains=True)

    def __init__(self, hparams: SERACHparams):
        super().__init__(hparams)
        self.templates = Templates()
        self.memory: list[EditRequest] = []
        self.memory_embeddings: torch.Tensor | None = None  # (edits, rank), made with the classifier
        self.model: Any = None
        self.tokenizer: Any = None
        self.classifier: ScopeClassifier | None = None
        self.counterfactual: Any = None

    def template_names(self) -> tuple[str, ...]:
        return (self.hparams.template,)

    def checkpoint_extra(self) -> dict[str, str]:
        return {"template_sha256": self.templates.hash(self.hparams.template)}

    def _build(self, model, tokenizer) -> None:
        hp = self.hparams
        check_layers(self.name, "classifier_layer", hp.classifier_layer, model)
        self.model, self.tokenizer = model, tokenizer
        device = device_of(model)
        self.classifier = ScopeClassifier(model.config.hidden_size, hp.classifier_rank, device)
        self.memory_embeddings = torch.zeros(0, hp.classifier_rank, dtype=MASTER_DTYPE, device=device)
        self.counterfactual = counterfactual_model(model, hp.counterfactual_layers)

    def setup(self, model, tokenizer, context: EditorContext) -> None:
        self._build(model, tokenizer)
        state, summary = trained_state(self.name, self.hparams, context, self.checkpoint_extra())
        self._load(state)
        log.info("serac: loaded checkpoint trained on %s examples", summary.get("train_examples"))
        self.trained_with = summary

    def _load(self, state: dict[str, Any]) -> None:
        self.classifier.load_state_dict(state["classifier"])
        self.counterfactual.load_state_dict(state["counterfactual"], strict=False)

    def counterfactual_prompt(self, edit: EditRequest | TrainingExample, query: str) -> str:
        return self.templates.render(
            self.hparams.template, edit_prompt=edit.prompt, edit_target=edit.target, query=query
        )

    @torch.no_grad()
    def scope(self, queries: list[str]) -> tuple[torch.Tensor, list[int]]:
        """Each query's best scope score over the memory (0 with an empty memory) and that edit's index."""
        if not self.memory:
            return torch.zeros(len(queries), device=self.memory_embeddings.device), [0] * len(queries)
        embedded = self.classifier.embed(
            pooled_states(self.model, self.tokenizer, queries, self.hparams.classifier_layer)
        )
        scores = torch.sigmoid(self.classifier.logits(self.memory_embeddings, embedded))
        best = scores.max(1)
        return best.values, best.indices.tolist()

    @torch.no_grad()
    def edit(self, model, tokenizer, requests: list[EditRequest]) -> Edit:
        features = pooled_states(
            model, tokenizer, [r.prompt for r in requests], self.hparams.classifier_layer
        )
        self.memory.extend(requests)
        self.memory_embeddings = torch.cat([self.memory_embeddings, self.classifier.embed(features)])
        return SERACEdit(self, list(requests))

    # --- training -----------------------------------------------------------------------------

    def train(self, model, tokenizer, session: TrainingSession, context: EditorContext) -> dict[str, Any]:
        """Fit the scope classifier on pooled states, then fine-tune the counterfactual model."""
        hp = self.hparams
        torch.manual_seed(context.seed)
        self._build(model, tokenizer)
        scope = None if session.has_progress else self._train_classifier(session, context.seed)
        masters = MasterCopies([p for p in self.counterfactual.parameters() if p.requires_grad])
        optimiser = torch.optim.Adam(masters.masters, lr=hp.lr)

        def load(state: dict[str, Any]) -> None:
            self._load(state)
            masters.refresh()

        train_pairs = [
            (self.counterfactual_prompt(e, query), e.target)
            for e in session.train
            for query in (e.prompt, e.rephrase)
        ]

        def step(index: int) -> dict[str, float]:
            chosen = batch_indices(len(session.train), hp.batch_size, context.seed, index)
            pairs = [train_pairs[2 * i + j] for i in chosen for j in (0, 1)]
            self.counterfactual.train()
            loss, _ = answer_loss(self.counterfactual, tokenizer, pairs)
            optimiser.zero_grad()
            loss.backward()
            masters.step(optimiser)
            self.counterfactual.eval()
            return {"loss": loss.item()}

        metrics = train_loop(
            session,
            hp.steps,
            hp.validate_every,
            step,
            self._validate_counterfactual(session),
            self._state,
            load,
            optimiser,
            "serac counterfactual",
            baseline=scope,
            select="val_nll",
        )
        return session.finish(
            self._state(),
            {
                "classifier": {k: v for k, v in metrics["before"].items() if k.startswith("scope")},
                **metrics,
                "counterfactual_model": f"first {hp.counterfactual_layers} layers of the base model",
            },
        )

    def _state(self) -> dict[str, Any]:
        return {
            "classifier": self.classifier.state_dict(),
            "counterfactual": trainable_state(self.counterfactual),
        }

    def _validate_counterfactual(self, session: TrainingSession):
        pairs = [(self.counterfactual_prompt(e, e.rephrase), e.target) for e in session.validation]

        @torch.no_grad()
        def validate() -> dict[str, float]:
            losses, hits = [], []
            for start in range(0, len(pairs), 16):
                loss, hit = answer_loss(self.counterfactual, self.tokenizer, pairs[start : start + 16])
                losses.append(loss.item())
                hits.append(hit)
            return {"val_nll": sum(losses) / len(losses), "val_token_accuracy": torch.cat(hits).mean().item()}

        return validate

    def _train_classifier(self, session: TrainingSession, seed: int) -> dict[str, float]:
        """Positives: (edit, its rephrase), (edit, its own prompt); negatives: other edits' prompts and
        rephrases and unrelated locality questions in the same batch."""
        hp, classifier = self.hparams, self.classifier

        def features(examples: list[TrainingExample]) -> dict[str, torch.Tensor]:
            texts = {
                "prompt": [e.prompt for e in examples],
                "rephrase": [e.rephrase for e in examples],
                "locality": [e.locality_prompt for e in examples],
            }
            return {
                k: pooled_states(self.model, self.tokenizer, v, hp.classifier_layer) for k, v in texts.items()
            }

        log.info(
            "serac: pooled states of %d training and %d validation examples",
            len(session.train),
            len(session.validation),
        )
        train, validation = features(session.train), features(session.validation)
        classifier.standardise(torch.cat(list(train.values())))
        optimiser = torch.optim.Adam(classifier.parameters(), lr=hp.classifier_lr)
        size = min(32, len(session.train))
        for index in range(hp.classifier_steps):
            chosen = batch_indices(len(session.train), size, seed, index)
            edits = classifier.embed(train["prompt"][chosen])
            queries = classifier.embed(
                torch.cat([train["rephrase"][chosen], train["prompt"][chosen], train["locality"][chosen]])
            )
            labels = torch.cat(
                [
                    torch.eye(size, device=edits.device),
                    torch.eye(size, device=edits.device),
                    torch.zeros(size, size, device=edits.device),
                ]
            )
            weight = (labels.numel() - labels.sum()) / labels.sum()
            loss = F.binary_cross_entropy_with_logits(
                classifier.logits(edits, queries), labels, pos_weight=weight
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        return scope_metrics(classifier, validation, hp.threshold)


@torch.no_grad()
def scope_metrics(classifier: ScopeClassifier, features: dict[str, torch.Tensor], threshold: float) -> dict:
    """Recall (own rephrase routed in) and false-positive rates (another edit's rephrase, an unrelated
    question routed in) over every (edit, query) pair of the validation examples."""
    edits = classifier.embed(features["prompt"])
    rephrase = torch.sigmoid(classifier.logits(edits, classifier.embed(features["rephrase"])))
    unrelated = torch.sigmoid(classifier.logits(edits, classifier.embed(features["locality"])))
    own = torch.eye(len(edits), dtype=torch.bool, device=edits.device)
    return {
        "scope_recall": (rephrase[own] >= threshold).float().mean().item(),
        "scope_false_positive_rephrase": (rephrase[~own] >= threshold).float().mean().item(),
        "scope_false_positive_unrelated": (unrelated >= threshold).float().mean().item(),
    }
