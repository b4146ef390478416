"""GRACE (Hartvigsen et al., 2023, "Aging with GRACE: Lifelong Model Editing with Discrete Key-Value
Adaptors"): the weights stay as they are; a codebook at one MLP maps keys (the MLP's hidden
activation at a token) to values that replace its output there, each key with a deferral radius.

An edit reads the key at the prompt's last token. Far from every entry (further than the nearest
entry's radius plus the new one's) it adds an entry whose value is trained so that the model
answers the target; near an entry written for the same answer it widens that entry's radius to
reach the new key; near an entry for another answer it adds the new entry with both radii at most
half their distance (an entry's radius never grows in a split); at that entry's very key (the same
prompt edited again) the new answer replaces the entry. At inference every position whose key lies
inside some radius gets that entry's value; all other outputs are the unedited model's, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harness.activations import input_and_output
from harness.answers import TargetBatch, pad_batch, prompt_ids
from harness.api import Capabilities, Edit, Editor, EditorContext, EditRequest
from harness.models import architecture, check_layers
from harness.optimisation import minimise
from harness.runtime import MASTER_DTYPE, device_of
from harness.weight_editing.values import add_to_output
from harness_plugins.methods.grace.codebook import Codebook

SAME_KEY = 1e-4  # keys closer than this share of their length are one key: an edit there overwrites


@dataclass(frozen=True)
class GRACEHparams:
    """Where the codebook sits, how wide a new entry's radius is, and how its value is trained."""

    layer: int = 4  # the codebook replaces this layer's MLP output (keys: its hidden activations)
    radius: float = 0.5  # a new entry's deferral radius, as a share of its key's length
    steps: int = 100
    lr: float = 0.5
    stop_loss: float = 1e-2  # stop training a value once the target NLL is below this

    def __post_init__(self) -> None:
        if not self.radius > 0:
            raise ValueError(f"radius must be > 0, got {self.radius}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


class GRACE(Editor):
    """GRACE: a key -> value codebook at one MLP with deferral radii; weights untouched."""

    hparams_class = GRACEHparams
    capabilities = Capabilities(in_weights=False, memory=True)

    def __init__(self, hparams: GRACEHparams):
        super().__init__(hparams)
        self.module: torch.nn.Module | None = None
        self.codebook: Codebook | None = None
        self.hook: Any = None
        self.widths: tuple[int, int] = (0, 0)  # of the keys (the MLP's hidden width) and the values

    def setup(self, model, tokenizer, context: EditorContext) -> None:
        check_layers("grace", "layer", (self.hparams.layer,), model)
        arch = architecture(model)
        self.module = model.get_submodule(arch.mlp_out.format(self.hparams.layer))
        self.widths = arch.out_in(self.module.weight)[::-1]  # (key, value)
        self.codebook = Codebook.empty(*self.widths, device_of(model))

    def edit(self, model, tokenizer, requests: list[EditRequest]) -> Edit:
        request = requests[0]
        before = self.codebook
        key, output = self._key_and_output(model, tokenizer, request.prompt)
        radius = self.hparams.radius * float(key.norm())
        info: dict[str, Any] = {"key_norm": float(key.norm())}
        if len(before):
            distance, nearest = before.nearest(key[None])
            distance, index = float(distance), int(nearest)
            info["nearest"], held = distance, float(before.radii[index])
        if not len(before) or distance > radius + held:
            info["action"], book = "add", before
        elif before.labels[index] == request.target:
            info["action"] = "expand"
            self._use(before.with_radius(index, max(distance, held)))
        elif distance <= SAME_KEY * float(key.norm()):
            info["action"], radius, book = "overwrite", held, before.without(index)
        else:
            info["action"], radius = "split", min(radius, distance / 2)
            book = before.with_radius(index, min(held, distance / 2))
        if info["action"] != "expand":
            self._use(book)  # the other entries in force (a split's shrunk) while the value is trained
            value, training = self._train_value(model, tokenizer, request, output)
            self._use(book.with_entry(key, value, radius, request.target))
            info.update(training, radius=radius)
        info["entries"] = len(self.codebook)
        edit = Edit(model)
        edit.also_undo(lambda: self._use(before))
        edit.info = info
        return edit

    def _key_and_output(self, model, tokenizer, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The MLP's hidden activation and its own output at the prompt's last token (read before
        the codebook's hook could replace it)."""
        ids, mask = pad_batch([prompt_ids(tokenizer, prompt)], tokenizer.pad_token_id, device_of(model))
        key, output = input_and_output(model, ids, mask, self.module)
        return key[0, -1].to(MASTER_DTYPE), output[0, -1].to(MASTER_DTYPE)

    def _train_value(self, model, tokenizer, request, output) -> tuple[torch.Tensor, dict[str, Any]]:
        """A value for the prompt's last token that makes the model answer the target (Adam on the
        target NLL, from the current output)."""
        hp = self.hparams
        batch = TargetBatch.of(tokenizer, [(request.prompt, request.target)], device_of(model))
        last = torch.tensor([len(prompt_ids(tokenizer, request.prompt)) - 1], device=batch.ids.device)
        delta = torch.zeros_like(output, requires_grad=True)
        optimiser = torch.optim.Adam([delta], lr=hp.lr)
        with add_to_output(self.module, torch.zeros_like(last), last, delta):
            steps, loss = minimise(
                lambda: batch.nll_per_pair(model).mean(), optimiser, hp.steps, hp.stop_loss
            )
        return (output + delta).detach(), {"steps": steps, "final_loss": loss}

    def _use(self, codebook: Codebook) -> None:
        """Put ``codebook`` in force, with the hook on the MLP while it has entries and none after."""
        self.codebook = codebook
        if len(codebook) and self.hook is None:
            self.hook = self.module.register_forward_hook(self._replace)
        elif not len(codebook) and self.hook is not None:
            self.hook.remove()
            self.hook = None

    def _replace(self, _module, args, output):
        return self.codebook.replace(args[0], output)

    def memory_state(self) -> dict[str, Any]:
        return self.codebook.state()

    def load_memory_state(self, model, state: dict[str, Any]) -> None:
        self._use(Codebook.from_state(state, device_of(model)))

    def clear_memory(self, model) -> None:
        self._use(Codebook.empty(*self.widths, device_of(model)))
