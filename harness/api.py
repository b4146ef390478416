"""The nouns every plugin speaks: records, edit requests, probes, edits; the Editor base class and
the Task protocols."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch

from harness.answers import Answer, read_answers


@dataclass(frozen=True)
class EditRequest:
    """One fact to write into the model: after the edit, ``prompt`` should be answered ``target``."""

    prompt: str
    target: str
    subject: str
    language: str
    record_id: str = ""
    # the new answer in each probed language, (language, answer) pairs, where the task knows them
    targets: tuple[tuple[str, str], ...] = ()

    def target_in(self, language: str) -> str:
        """The new answer in ``language``; ``target`` where the task gave none for it."""
        return dict(self.targets).get(language, self.target)


@dataclass(frozen=True)
class Probe:
    """One question asked after an edit.

    ``expected`` is the answer to score against; when ``reference_is_pre_edit`` is true (locality) the
    expected answer is whatever the unedited model answered to the same prompt, and ``expected``
    is only the text the answer is teacher-forced along.
    """

    property: str
    language: str
    prompt: str
    expected: str
    reference_is_pre_edit: bool = False

    @property
    def key(self) -> str:
        return f"{self.property}.{self.language}"


@dataclass(frozen=True)
class Record:
    """One test item of a task: an id, its raw fields, and the edit and probes derived from them."""

    id: str
    request: EditRequest
    probes: tuple[Probe, ...]
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class TrainingExample:
    """One training fact for editors that learn or retrieve: the edit (prompt -> target), a
    rephrase of the prompt, and an unrelated question with its answer."""

    prompt: str
    target: str
    subject: str
    rephrase: str
    locality_prompt: str
    locality_answer: str
    language: str


class TrainingSet(Protocol):
    """Named training data in one language (registered with ``register_training_sets``)."""

    name: str
    language: str
    description: str

    def data_files(self, data_dir: Any) -> list[Any]:
        """Files the examples come from (hashed into checkpoint keys)."""

    def examples(self, data_dir: Any) -> list[TrainingExample]:
        """Usable examples in file order; unusable records are skipped with a warning naming them."""


class ValidationIssue(ValueError):
    """A problem with one record of a task's data, located by record index and field."""

    def __init__(self, index: int, field_name: str, problem: str):
        self.index, self.field_name, self.problem = index, field_name, problem
        super().__init__(f"record {index}, field {field_name!r}: {problem}")


class RestoreError(RuntimeError):
    """Restoring an edit did not give back bit-identical weights."""


# While an edit call starts on weights the harness has just verified to be the unedited ones (single
# and batch modes): their digest. Cleared when the editor snapshots tensors to write them, so what is
# computed under it depends on those weights alone and may be cached under it (value vectors).
_UNEDITED_WEIGHTS: ContextVar[str | None] = ContextVar("unedited_weights", default=None)


def unedited_weights() -> str | None:
    """The digest of the verified unedited weights the model still holds, or None."""
    return _UNEDITED_WEIGHTS.get()


@contextlib.contextmanager
def holding_unedited_weights(digest: str) -> Iterator[None]:
    """Around one edit call whose model the caller has checked holds the weights ``digest`` names."""
    token = _UNEDITED_WEIGHTS.set(digest)
    try:
        yield
    finally:
        _UNEDITED_WEIGHTS.reset(token)


class Edit:
    """What an editor returns. Weight editors keep the original of every tensor they touched.

    ``restore()`` undoes what the edit added outside the weights (``also_undo``: an editor's memory,
    hooks on the model), then puts the exact original weights back and verifies them bit for bit.
    Editors that do not change weights override ``wrap_prompt`` (text in front of every probe) or,
    for full control over how probes are answered (routing, a cached shared prefix), ``answers``.
    """

    def __init__(
        self, model: torch.nn.Module | None = None, originals: dict[str, torch.Tensor] | None = None
    ):
        self.model = model
        self.originals = originals or {}
        self.restored = False
        self.info: dict[str, Any] = {}
        self.undo: list[Callable[[], None]] = []

    @classmethod
    def snapshot(cls, model: torch.nn.Module, names: list[str]) -> Edit:
        """Remember the current value of the named parameters before changing them."""
        _UNEDITED_WEIGHTS.set(None)
        params = dict(model.named_parameters())
        return cls(model, {name: params[name].detach().clone() for name in names})

    def also_undo(self, undo: Callable[[], None]) -> None:
        """Run ``undo`` when this edit is restored, before the weights come back (latest first)."""
        self.undo.append(undo)

    def wrap_prompt(self, prompt: str) -> str:
        return prompt

    def answers(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        pairs: list[tuple[str, str]],
        mode: str,
        batch_size: int,
        languages: list[str] | None = None,
    ) -> list[Answer]:
        """The model's answers to (probe prompt, expected answer) pairs while this edit is in force;
        ``languages`` names each probe's language."""
        return read_answers(model, tokenizer, [(self.wrap_prompt(p), t) for p, t in pairs], mode, batch_size)

    def reference_answers(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        pairs: list[tuple[str, str]],
        mode: str,
        batch_size: int,
        languages: list[str] | None = None,
    ) -> list[Answer] | None:
        """What locality probes are compared with, when it is not the unedited model's answer to the
        bare prompt (an edit living in the prompt may compare with the same prompt less its
        demonstrations); None: the bare prompt's answer."""
        return None

    @property
    def touched(self) -> list[str]:
        return sorted(self.originals)

    def restore(self) -> None:
        """Undo what the edit added outside the weights, then copy back the original tensors and
        check each is bit-identical; idempotent."""
        if self.restored:
            return
        while self.undo:
            self.undo.pop()()
        if self.model is None:
            self.restored = True
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, original in self.originals.items():
                params[name].copy_(original)
        bad = [name for name, original in self.originals.items() if not torch.equal(params[name], original)]
        if bad:
            raise RestoreError(f"restore left these tensors different from the original: {bad}")
        self.restored = True

    def __enter__(self) -> Edit:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


@dataclass
class EditorContext:
    """What an editor may use beyond the model: where to cache, the seed, the data directory."""

    cache_dir: Any
    seed: int = 0
    data_dir: Any = None
    model_id: str = ""
    model_name: str = ""  # as the user named it (for messages); model_id is its content hash
    languages: tuple[str, ...] = ()
    training_set: str = ""  # the task's training data in its edit language (a registered name)
    templates: Any = None  # the run's Templates: what an editor renders through it is hashed into results
    protocol: str = ""  # the task's scoring profile (harness.protocols), for editors that follow one


@dataclass(frozen=True)
class Capabilities:
    """What an editor can do, declared once on its class; the harness reads nothing else about it.

    ``batch``: several requests per ``apply`` call (the batch modes). ``in_weights``: its edits live
    in the weights, so they can accumulate (the sequential modes). ``memory``: the editor keeps a
    memory that edits add to (a codebook, a side memory, the keys of earlier edits); it implements
    ``memory_state``, ``load_memory_state`` and ``clear_memory``, and its edits accumulate in the
    sequential modes even when they are not in the weights. Editors whose edits live elsewhere (in
    the prompt, in a retrieval store) say ``in_weights=False`` and no memory: single and batch modes
    only. ``changes_model``: False for an editor whose model is the unedited one (ability tasks may
    run with it). ``locates_subject``: it finds the subject's tokens in the prompt, so the harness
    aligns every request's subject with its prompt first (``harness.subjects``). ``trains``: it
    learns from training data first (``Editor.train``, ``harness train``).
    """

    batch: bool = False
    in_weights: bool = True
    memory: bool = False
    changes_model: bool = True
    locates_subject: bool = False
    trains: bool = False

    @property
    def modes(self) -> tuple[str, ...]:
        """The editing modes these capabilities allow."""
        accumulates = self.in_weights or self.memory
        accumulating = ("sequential",) if accumulates else ()
        batched = (("batch", "batch-sequential") if accumulates else ("batch",)) if self.batch else ()
        return ("single", *accumulating, *batched)


class EditorNotPrepared(RuntimeError):
    """``apply`` was called before ``prepare``."""


class Editor(abc.ABC):
    """An editing method. Subclasses name their hparams dataclass, declare ``capabilities``, and
    implement ``edit`` (``setup`` when they need one-off work, ``train`` when they train).

    The harness calls ``prepare`` once, then ``apply`` per edit call; the base class refuses an
    ``apply`` before ``prepare`` and more requests per call than ``capabilities`` allow, so editors
    do not repeat those checks.
    """

    hparams_class: ClassVar[type]
    capabilities: ClassVar[Capabilities] = Capabilities()
    # editors that train: the summary of the checkpoint ``setup`` loaded, reported in results.json
    trained_with: dict[str, Any] | None = None

    def __init__(self, hparams: Any) -> None:
        self.hparams = hparams
        self.context: EditorContext | None = None

    def prepare(self, model: torch.nn.Module, tokenizer: Any, context: EditorContext) -> None:
        """Record the run's context, then do the editor's one-off work (``setup``)."""
        self.context = context
        try:
            self.setup(model, tokenizer, context)
        except BaseException:
            self.context = None
            raise

    def apply(self, model: torch.nn.Module, tokenizer: Any, requests: list[EditRequest]) -> Edit:
        """Edit the model in place (``edit``) and return an Edit that can restore it."""
        label = type(self).__name__
        if self.context is None:
            raise EditorNotPrepared(f"{label}: prepare() must run before apply()")
        if not requests:
            raise ValueError(f"{label}: no requests to apply")
        if len(requests) > 1 and not self.capabilities.batch:
            raise ValueError(f"{label} edits one fact per call, got {len(requests)} requests")
        return self.edit(model, tokenizer, requests)

    def setup(self, model: torch.nn.Module, tokenizer: Any, context: EditorContext) -> None:  # noqa: B027
        """One-off work before the first edit (statistics, generated context texts); cached."""

    @abc.abstractmethod
    def edit(self, model: torch.nn.Module, tokenizer: Any, requests: list[EditRequest]) -> Edit:
        """Edit the model in place for ``requests``; ``self.context`` is set."""

    def memory_state(self) -> dict[str, Any]:
        """Editors with ``capabilities.memory``: everything the edits in force have added to the
        editor's memory, as tensors, lists and numbers (``torch.save`` with weights only); a
        sequential run saves it after every edit call so that a resumed run carries on from it."""
        raise NotImplementedError(f"{type(self).__name__} keeps no memory")

    def load_memory_state(self, model: torch.nn.Module, state: dict[str, Any]) -> None:
        """Put back a memory saved by ``memory_state`` (a resumed run), with whatever serves it
        on ``model`` (hooks)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no memory")

    def clear_memory(self, model: torch.nn.Module) -> None:
        """Forget every edit in the memory and take off the model whatever served it: the end of a
        sequential run, before the original weights come back."""
        raise NotImplementedError(f"{type(self).__name__} keeps no memory")

    def template_names(self) -> tuple[str, ...]:
        """The templates it renders. Their hashes join the run's manifest before ``prepare``, so
        editing a template starts a new run instead of resuming an old one."""
        return ()

    def train(self, model: torch.nn.Module, tokenizer: Any, session: Any, context: EditorContext) -> dict:
        """Editors with ``capabilities.trains``: learn from ``session`` (a ``harness.training``
        TrainingSession) and store the checkpoint ``prepare`` loads; returns the training summary."""
        raise NotImplementedError(f"{type(self).__name__} does not train")

    def checkpoint_extra(self) -> dict[str, str] | None:
        """Editors that train: what beyond the training hparams keys their checkpoint."""
        return None


class Task(Protocol):
    """A task variant: named, knows its data files, turns raw data into records."""

    name: str
    description: str
    properties: tuple[str, ...]
    languages: tuple[str, ...]
    edit_language: str
    template: str  # default probe template name (``--set template=...`` overrides)
    training_set: str  # registered training set in the edit language ("" if none)

    def data_files(self, data_dir: Any) -> list[Any]:
        """Files the records come from (hashed into results)."""

    def load_raw(self, data_dir: Any) -> list[dict[str, Any]]:
        """Raw records, in file order."""

    def validate(self, raw: list[dict[str, Any]]) -> list[ValidationIssue]:
        """Every problem in the raw data, by record index and field."""

    def records(self, raw: list[dict[str, Any]], render) -> list[Record]:
        """Records with edit requests and probes; ``render(question)`` renders a prompt."""

    # Optional: ``protocols`` and ``with_protocol(name)``, the scoring profiles it offers
    # (``harness.protocols``).


@dataclass(frozen=True)
class AbilityQuery:
    """One question of an ability task, asked of a (possibly edited) model after the task's fixed
    few-shot ``context`` (shared by every query of a run, so it is encoded once).

    With ``options`` the model chooses the option whose tokens it finds most likely after the
    prompt (mean log-probability per token); without, it continues the prompt greedily for at most
    ``max_new_tokens`` tokens, cut before the first of ``stop``. Either way the prediction is a string.
    """

    example_id: str
    prompt: str
    options: tuple[str, ...] = ()
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ("\n",)


ABILITY = "ability"  # the ``kind`` of tasks that measure a model rather than an edit


def is_ability(task: Any) -> bool:
    """Whether a registered task is an ability task (``AbilityTask``) rather than an editing task."""
    return getattr(task, "kind", "") == ABILITY


class AbilityTask(Protocol):
    """A general-ability task: measures a model rather than an edit (``kind == "ability"``).

    Runs alone with ``--editor none`` or after an accumulating editing run with ``--then``.
    Predictions are strings, one per example; ``score`` turns them into metrics in percent, so
    predictions made anywhere (a prediction file) are scored the same way.
    """

    kind: str  # "ability"
    name: str
    description: str
    metric: str  # the headline key of ``score``'s result
    default_limit: int  # examples in the documented CPU-sized subset
    template: str  # the query template (its hash joins the results)

    def data_files(self, data_dir: Any) -> list[Any]:
        """Files the examples come from (hashed into results)."""

    def examples(self, data_dir: Any) -> list[dict[str, Any]]:
        """Evaluation examples in file order, each with a unique string ``id``; the few-shot
        demonstrations are not among them. Bad records raise one ValueError naming each record
        (file, line or index, field)."""

    def context(self, data_dir: Any, render) -> str:
        """The few-shot text every query follows; ``render(template, **fields)`` renders Jinja."""

    def queries(self, examples: list[dict[str, Any]], render) -> list[AbilityQuery]:
        """One query per example, in order."""

    def score(self, examples: list[dict[str, Any]], predictions: list[str]) -> dict[str, float]:
        """Metrics in percent, the headline ``metric`` among them."""

    # Optional: ``protocols`` and ``with_protocol(name)``, the scoring profiles it offers
    # (``harness.protocols``).
