"""MEND (Mitchell et al., 2022): a hypernetwork turns the fine-tuning gradient of an edit into a
better weight update, using the gradient's rank-one structure.

For a linear map W with input x_t and output gradient delta_t at token t, the fine-tuning gradient is
sum_t delta_t x_t^T. Per edited matrix, a small network maps each (x_t, delta_t) to (x~_t, delta~_t)
and the edit is W <- W - alpha * sum_t delta~_t x~_t^T with a learned step size alpha per matrix. The
network works on standardised inputs, maps back to the original scale, and starts as the identity, so
an untrained MEND is one step of plain gradient descent with step size alpha. alpha is learned as
log(alpha): Adam moves a parameter by about its learning rate per step, which for a raw alpha of
1e-4 means swinging through zero; in log space the same rate is a bounded relative change. Training
minimises edit_coef * NLL(target | rephrase) on the edited model + loc_coef * KL(unedited || edited)
on an unrelated question; the checkpoint is the state of the best validation loss. Edited matrices:
the MLP output matrices of the last layers (``layers``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from harness.answers import TargetBatch, prompt_ids, target_ids
from harness.api import Capabilities, Edit, Editor, EditorContext, EditRequest, TrainingExample
from harness.models import architecture, check_layers
from harness.runtime import MASTER_DTYPE, device_of
from harness.training import TrainingSession, TrainingSettings, batch_indices, train_loop, trained_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MENDHparams(TrainingSettings):
    """Defaults train in minutes on a CPU for gemma3-270m (paper: rank 1920); see tuning/README.md."""

    train_limit: int = 1000
    layers: tuple[int, ...] = ()  # empty: the last three layers
    rank: int = 64
    blocks: int = 1  # residual low-rank blocks of the hypernetwork
    step_size: float = 1e-4  # initial alpha of every edited matrix
    steps: int = 600  # training steps, one edit each (about 25 minutes on 2 CPU cores for gemma3-270m)
    lr: float = 3e-4  # hypernetwork learning rate
    step_size_lr: float = 1e-2  # learning rate of log(alpha)
    grad_clip: float = 1.0  # max gradient norm per step
    edit_coef: float = 0.1
    loc_coef: float = 1.0
    norm_examples: int = 64  # training edits whose gradients set the standardisation statistics
    validate_every: int = 25
    validation_examples: int = 20  # held-out examples scored at each validation

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("rank", "blocks", "norm_examples", "validate_every", "validation_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("step_size", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


class GradientTransform(torch.nn.Module):
    """(x_t, delta_t) -> (x~_t, delta~_t): residual low-rank blocks on standardised inputs, zero-initialised
    output layers, so a fresh transform is the identity. Float32 on ``device``, whatever the model's dtype."""

    def __init__(self, width_in: int, width_out: int, rank: int, blocks: int, device: torch.device):
        super().__init__()
        self.width_in = width_in
        for name, width in (("x", width_in), ("delta", width_out)):
            self.register_buffer(f"{name}_mean", torch.zeros(width, dtype=MASTER_DTYPE, device=device))
            self.register_buffer(f"{name}_std", torch.ones(width, dtype=MASTER_DTYPE, device=device))
        width = width_in + width_out
        self.down = torch.nn.ModuleList(
            torch.nn.Linear(width, rank, dtype=MASTER_DTYPE, device=device) for _ in range(blocks)
        )
        self.up = torch.nn.ModuleList(
            torch.nn.Linear(rank, width, dtype=MASTER_DTYPE, device=device) for _ in range(blocks)
        )
        for layer in self.up:
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)

    def standardise(self, x: torch.Tensor, delta: torch.Tensor) -> None:
        for name, value in (("x", x), ("delta", delta)):
            getattr(self, f"{name}_mean").copy_(value.mean(0))
            getattr(self, f"{name}_std").copy_(value.std(0).clamp(min=1e-12))

    def forward(self, x: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.cat([(x - self.x_mean) / self.x_std, (delta - self.delta_mean) / self.delta_std], -1)
        for down, up in zip(self.down, self.up):
            z = z + up(torch.relu(down(z)))
        x_new = z[:, : self.width_in] * self.x_std + self.x_mean
        delta_new = z[:, self.width_in :] * self.delta_std + self.delta_mean
        return x_new, delta_new


@dataclass
class TokenGradients:
    """Per edited matrix: inputs x_t and output gradients delta_t of every real token, (tokens, width)."""

    x: dict[str, torch.Tensor]
    delta: dict[str, torch.Tensor]
    loss: float


def token_gradients(
    model, tokenizer, pairs: list[tuple[str, str]], modules: dict[str, str]
) -> TokenGradients:
    """Inputs and output gradients of each module in ``modules`` (weight name -> module name) for the
    summed per-pair mean NLL of ``pairs`` (so a batch of edits is the sum of single edits)."""
    batch = TargetBatch.of(tokenizer, pairs, device_of(model))
    inputs, zeros, handles = {}, {}, []

    def tap(name: str):
        def hook(_module, args, output):
            inputs[name] = args[0].detach()
            zeros[name] = torch.zeros_like(output, requires_grad=True)
            return output + zeros[name]

        return hook

    for weight_name, module_name in modules.items():
        handles.append(model.get_submodule(module_name).register_forward_hook(tap(weight_name)))
    try:
        with torch.enable_grad():
            loss = batch.nll_per_pair(model).sum()
            grads = torch.autograd.grad(loss, [zeros[n] for n in modules])
    finally:
        for handle in handles:
            handle.remove()
    real = batch.mask.bool()
    return TokenGradients(
        x={n: inputs[n][real.to(inputs[n].device)].to(MASTER_DTYPE) for n in modules},
        delta={n: g[real.to(g.device)].to(MASTER_DTYPE) for n, g in zip(modules, grads)},
        loss=loss.item(),
    )


class MEND(Editor):
    """MEND: a trained hypernetwork maps fine-tuning gradients to weight edits (needs `harness train`)."""

    name = "mend"
    hparams_class = MENDHparams
    capabilities = Capabilities(batch=True, trains=True)

    def __init__(self, hparams: MENDHparams):
        super().__init__(hparams)
        self.transforms: torch.nn.ModuleDict | None = None
        self.log_step_sizes: torch.nn.ParameterDict | None = None
        self.modules: dict[str, str] = {}  # edited weight name -> its module
        self.transposed = False

    def _build(self, model) -> None:
        hp = self.hparams
        count = model.config.num_hidden_layers
        layers = hp.layers or tuple(range(count - 3, count))
        check_layers(self.name, "layers", layers, model)
        arch = architecture(model)
        self.transposed = arch.transposed
        self.modules = {
            arch.mlp_out_weight(layer): arch.mlp_out.format(layer) for layer in sorted(set(layers))
        }
        self.transforms = torch.nn.ModuleDict()
        self.log_step_sizes = torch.nn.ParameterDict()
        for index, weight_name in enumerate(self.modules):
            weight = model.get_parameter(weight_name)
            width_out, width_in = arch.out_in(weight)
            self.transforms[str(index)] = GradientTransform(
                width_in, width_out, hp.rank, hp.blocks, weight.device
            )
            step_size = torch.tensor(hp.step_size, dtype=MASTER_DTYPE, device=weight.device)
            self.log_step_sizes[str(index)] = torch.nn.Parameter(step_size.log())

    def setup(self, model, tokenizer, context: EditorContext) -> None:
        self._build(model)
        state, summary = trained_state(self.name, self.hparams, context)
        self._load(state)
        log.info("mend: loaded checkpoint trained on %s examples", summary.get("train_examples"))
        self.trained_with = summary

    def _trained_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.transforms.parameters(), *self.log_step_sizes.parameters()]

    def _state(self) -> dict[str, Any]:
        return {
            "transforms": self.transforms.state_dict(),
            "log_step_sizes": self.log_step_sizes.state_dict(),
        }

    def _load(self, state: dict[str, Any]) -> None:
        self.transforms.load_state_dict(state["transforms"])
        self.log_step_sizes.load_state_dict(state["log_step_sizes"])

    def weight_changes(self, gradients: TokenGradients) -> dict[str, torch.Tensor]:
        """-alpha * sum_t delta~_t x~_t^T for every edited matrix, laid out like the weight."""
        changes = {}
        for index, name in enumerate(self.modules):
            x, delta = self.transforms[str(index)](gradients.x[name], gradients.delta[name])
            change = -self.log_step_sizes[str(index)].exp() * (delta.T @ x)
            changes[name] = change.T if self.transposed else change
        return changes

    @torch.no_grad()
    def edit(self, model, tokenizer, requests: list[EditRequest]) -> Edit:
        gradients = token_gradients(model, tokenizer, [(r.prompt, r.target) for r in requests], self.modules)
        changes = self.weight_changes(gradients)
        edit = Edit.snapshot(model, list(changes))
        for name, change in changes.items():
            weight = model.get_parameter(name)
            weight.copy_((weight.to(MASTER_DTYPE) + change.to(weight.device)).to(weight.dtype))
        edit.info = {
            "edit_loss": gradients.loss,
            "change_norms": {name: round(c.norm().item(), 6) for name, c in changes.items()},
        }
        return edit

    # --- training -----------------------------------------------------------------------------

    def train(self, model, tokenizer, session: TrainingSession, context: EditorContext) -> dict[str, Any]:
        """Standardise on ``norm_examples`` edits, then one edit per step: edit loss on its rephrase plus
        locality KL on an unrelated question, backpropagated into the transforms and step sizes."""
        hp = self.hparams
        torch.manual_seed(context.seed)
        self._build(model)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        if not session.has_progress:
            self._standardise(model, tokenizer, session.train[: hp.norm_examples])
        optimiser = torch.optim.Adam(
            [
                {"params": list(self.transforms.parameters()), "lr": hp.lr},
                {"params": list(self.log_step_sizes.parameters()), "lr": hp.step_size_lr},
            ]
        )

        def step(index: int) -> dict[str, float]:
            (chosen,) = batch_indices(len(session.train), 1, context.seed, index)
            edit_loss, locality = self.losses(model, tokenizer, session.train[chosen])
            loss = hp.edit_coef * edit_loss + hp.loc_coef * locality
            optimiser.zero_grad()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self._trained_parameters(), hp.grad_clip)
            optimiser.step()
            return {"edit_nll": edit_loss.item(), "locality_kl": locality.item(), "grad_norm": norm.item()}

        validation = session.validation[: hp.validation_examples]

        def validate() -> dict[str, float]:
            edit_losses, localities = [], []
            for example in validation:
                edit_loss, locality = self.losses(model, tokenizer, example)
                edit_losses.append(edit_loss.item())
                localities.append(locality.item())
            edit_loss, locality = sum(edit_losses) / len(edit_losses), sum(localities) / len(localities)
            return {
                "val_loss": hp.edit_coef * edit_loss + hp.loc_coef * locality,
                "val_edit_nll": edit_loss,
                "val_locality_kl": locality,
                **{f"step_size_{i}": p.exp().item() for i, p in self.log_step_sizes.items()},
            }

        metrics = train_loop(
            session,
            hp.steps,
            hp.validate_every,
            step,
            validate,
            self._state,
            self._load,
            optimiser,
            "mend",
            select="val_loss",
        )
        return session.finish(
            self._state(),
            {**metrics, "edited": list(self.modules), "rank": hp.rank},
        )

    def _standardise(self, model, tokenizer, examples: list[TrainingExample]) -> None:
        gradients = [
            token_gradients(model, tokenizer, [(e.prompt, e.target)], self.modules) for e in examples
        ]
        for index, name in enumerate(self.modules):
            self.transforms[str(index)].standardise(
                torch.cat([g.x[name] for g in gradients]), torch.cat([g.delta[name] for g in gradients])
            )

    def losses(self, model, tokenizer, example: TrainingExample) -> tuple[torch.Tensor, torch.Tensor]:
        """(NLL of the target after its rephrase, KL(unedited || edited) over the tokens of an unrelated
        question and answer), both on the model edited functionally by this hypernetwork."""
        gradients = token_gradients(model, tokenizer, [(example.prompt, example.target)], self.modules)
        changes = self.weight_changes(gradients)
        edited = {}
        for name, change in changes.items():
            weight = model.get_parameter(name)  # the sum in float32, fed to the model in its dtype
            edited[name] = (weight.to(MASTER_DTYPE) + change.to(weight.device)).to(weight.dtype)
        device = device_of(model)

        def logits(ids: list[int], parameters: dict[str, torch.Tensor]) -> torch.Tensor:
            batch = torch.tensor([ids], device=device)
            inputs = {"input_ids": batch, "attention_mask": torch.ones_like(batch)}
            return functional_call(model, parameters, args=(), kwargs=inputs).logits[0].float()

        rephrase = prompt_ids(tokenizer, example.rephrase)
        target = target_ids(tokenizer, example.target)
        scored = logits(rephrase + target, edited)[len(rephrase) - 1 : -1]
        edit_loss = F.cross_entropy(scored, torch.tensor(target, device=scored.device))
        local = prompt_ids(tokenizer, example.locality_prompt) + target_ids(
            tokenizer, example.locality_answer
        )
        with torch.no_grad():
            before = F.log_softmax(logits(local, {}), -1)
        after = F.log_softmax(logits(local, edited), -1)
        return edit_loss, F.kl_div(after, before, log_target=True, reduction="batchmean")
