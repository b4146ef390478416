"""WISE (Wang et al., 2024, "WISE: Rethinking the Knowledge Memory for Lifelong Model Editing of
Large Language Models"): edits go into a side memory, a copy of one MLP output matrix, while the
model's own matrix (the main memory) is never changed; a router sends each query to the side memory
only when that memory changes the MLP's output on it enough.

Each edit trains the side memory's current shard (SGD on the target NLL plus margin losses that
make the shard's relative output change large on the edit and small on unrelated text the model
wrote), changing only the shard's random ``mask_ratio`` share of entries. After ``shard_size``
edits the shard is full: it joins the full shards, which are TIES-merged into one memory, and a new
shard with a new mask starts. Each row of a forward pass goes to the memory (the merge or the
working shard) that changes it most among those whose change reaches ``act_ratio`` times the
smallest score of the edits that memory holds (each score as measured when its edit was written);
otherwise the main memory answers, bit for bit as the unedited model. Like the reference, the
router sees the tokens of the pass under way: a teacher-forced probe is routed as a whole, while
with a KV cache (a few-shot context encoded once, answers generated token by token) every call is
routed on its own new tokens.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from harness.activations import input_and_output
from harness.answers import TargetBatch, pad_batch, prompt_ids
from harness.api import Capabilities, Edit, Editor, EditorContext, EditRequest
from harness.model_text import PREFIX_TOP_K, SampleSpec, model_samples
from harness.models import architecture, check_layers
from harness.optimisation import minimise
from harness.runtime import MASTER_DTYPE, device_of
from harness_plugins.methods.wise.memory import SideMemory, relative_scores

UNRELATED_LENGTH = 20  # tokens of each model-written out-of-scope text


@dataclass(frozen=True)
class WISEHparams:
    """Where the side memory sits, how an edit trains it, how shards merge and how queries route."""

    layer: int = 4  # the side memory copies this layer's MLP output matrix
    steps: int = 70
    lr: float = 0.1  # SGD on the shard's change (the reference's 1.0 overshoots with these margins)
    mask_ratio: float = 0.2  # share of the matrix's entries one shard may change
    shard_size: int = 10  # edits per shard before it is merged and a new one starts
    density: float = 0.2  # TIES merge: share of each shard's entries kept before the sign election
    act_ratio: float = 0.88  # router threshold: this share of the smallest in-scope score held
    in_scope: float = 0.5  # margin: the relative output change on an edit should reach this
    out_of_scope: float = 0.05  # margin: and stay below this on unrelated text
    gap: float = 0.3  # margin: and exceed the unrelated texts' by this much
    unrelated: int = 4  # model-written texts for the out-of-scope margin (seeded: the same for each edit)

    def __post_init__(self) -> None:
        for name in ("mask_ratio", "density", "act_ratio"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        for name in ("shard_size", "unrelated"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


class WISE(Editor):
    """WISE: edits in a routed side memory (a copy of one MLP matrix) in merged shards; weights untouched."""

    hparams_class = WISEHparams
    capabilities = Capabilities(in_weights=False, memory=True)

    def __init__(self, hparams: WISEHparams):
        super().__init__(hparams)
        self.module: torch.nn.Module | None = None
        self.memory = SideMemory()
        self.hooks: list[Any] = []
        self.shape: tuple[int, int] = (0, 0)  # the matrix as (out, in), whatever its stored layout
        self.routing = True
        self.attention: torch.Tensor | None = None  # the attention mask of the forward pass under way

    def setup(self, model, tokenizer, context: EditorContext) -> None:
        check_layers("wise", "layer", (self.hparams.layer,), model)
        arch = architecture(model)
        self.module = model.get_submodule(arch.mlp_out.format(self.hparams.layer))
        self.shape = arch.out_in(self.module.weight)

    def edit(self, model, tokenizer, requests: list[EditRequest]) -> Edit:
        request, hp, before = requests[0], self.hparams, self.memory
        if len(before.working_scores) >= hp.shard_size:
            self._use(model, before.with_shard_finished(hp.density))
        shard = len(self.memory.finished)
        start = self.memory.working
        change, info = self._train(model, tokenizer, request, start, self._shard_mask(shard))
        self._use(model, self.memory.with_edit(change, info["in_scope_score"]))
        info.update(shard=shard, edits_in_memory=self.memory.edits)
        edit = Edit(model)
        edit.also_undo(lambda: self._use(model, before))
        edit.info = info
        return edit

    def _shard_mask(self, shard: int) -> torch.Tensor:
        """The entries shard ``shard`` may change: random, from the run's seed and the shard's index."""
        generator = torch.Generator().manual_seed(self.context.seed * 1_000_003 + shard)
        allowed = torch.rand(self.shape, generator=generator, device="cpu") < self.hparams.mask_ratio
        return allowed.to(self.module.weight.device)

    def _inputs(self, model, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The MLP's inputs and its own outputs on ``ids``, with their attention mask."""
        return (*input_and_output(model, ids, mask, self.module), mask)

    def _train(self, model, tokenizer, request, start, allowed) -> tuple[torch.Tensor, dict[str, Any]]:
        """The working shard's change after training it on ``request`` (from ``start``), with the
        router off: every token of every row goes through the shard, as the reference trains it."""
        hp = self.hparams
        batch = TargetBatch.of(tokenizer, [(request.prompt, request.target)], device_of(model))
        spec = SampleSpec(request.language, UNRELATED_LENGTH, hp.unrelated, PREFIX_TOP_K, self.context.seed)
        device = self.module.weight.device
        change = torch.zeros(self.shape, dtype=MASTER_DTYPE, device=device) if start is None else start
        change = change.clone().requires_grad_(True)
        optimiser = torch.optim.SGD([change], lr=hp.lr)

        def through_shard(_module, args, out):
            shifted = out.to(MASTER_DTYPE) + torch.nn.functional.linear(args[0].to(MASTER_DTYPE), change)
            return shifted.to(out.dtype)

        last: dict[str, torch.Tensor] = {}

        def loss() -> torch.Tensor:
            last["nll"] = batch.nll_per_pair(model).mean()
            last["inside"] = inside = relative_scores(*edited, change)[0]
            last["outside"] = outside = relative_scores(*unrelated, change)
            margins = (
                torch.relu(outside - inside + hp.gap).mean()
                + torch.relu(outside - hp.out_of_scope).mean()
                + torch.relu(hp.in_scope - inside)
            )
            return last["nll"] + margins

        def only_the_shards_entries() -> None:
            change.grad *= allowed

        with self._unrouted():  # the unedited model writes the texts (they are cached by its weights)
            texts = model_samples(model, tokenizer, spec, self.context.cache_dir)
            ids, mask = pad_batch(
                [prompt_ids(tokenizer, t) for t in texts], tokenizer.pad_token_id, device_of(model)
            )
            edited, unrelated = self._inputs(model, batch.ids, batch.mask), self._inputs(model, ids, mask)
            handle = self.module.register_forward_hook(through_shard)
            try:
                steps, _ = minimise(loss, optimiser, hp.steps, before_step=only_the_shards_entries)
            finally:
                handle.remove()
        info = {
            "steps": steps,
            "final_nll": last["nll"].item(),
            "in_scope_score": last["inside"].item(),
            "out_of_scope_score": last["outside"].max().item(),
        }
        return change.detach(), info

    @contextlib.contextmanager
    def _unrouted(self):
        """The main memory alone while inside (the router's hooks stay but pass outputs through)."""
        self.routing = False
        try:
            yield
        finally:
            self.routing = True

    def _use(self, model, memory: SideMemory) -> None:
        """Put ``memory`` in force, with the router's hooks on the model while it holds edits."""
        self.memory = memory
        if memory.edits and not self.hooks:
            self.hooks = [
                model.base_model.register_forward_pre_hook(self._remember_mask, with_kwargs=True),
                self.module.register_forward_hook(self._route),
            ]
        elif not memory.edits:
            for hook in self.hooks:
                hook.remove()
            self.hooks = []

    def _remember_mask(self, _module, args, kwargs) -> None:
        self.attention = kwargs.get("attention_mask")

    def _route(self, _module, args, output):
        if not self.routing:
            return output
        inputs = args[0]
        mask = self.attention
        if mask is None or mask.dim() != 2:
            mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device)
        return self.memory.route(inputs, output, mask[:, -inputs.shape[1] :], self.hparams.act_ratio)

    def memory_state(self) -> dict[str, Any]:
        return self.memory.state()

    def load_memory_state(self, model, state: dict[str, Any]) -> None:
        self._use(model, SideMemory.from_state(state, self.module.weight.device, self.hparams.density))

    def clear_memory(self, model) -> None:
        self._use(model, SideMemory())
