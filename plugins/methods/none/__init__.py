"""The unedited model as an editor: a baseline row for editing tasks and the way to run ability tasks
on their own (``harness run --editor none --task general_nli``)."""

from dataclasses import dataclass

from harness.api import Edit
from harness.hookspecs import hookimpl


@dataclass(frozen=True)
class NoEditHparams:
    """No settings: nothing is edited."""


class NoEdit:
    """Changes nothing: every probe is answered by the unedited model."""

    hparams_class = NoEditHparams
    supports_batch = True
    changes_model = False  # ability tasks may run with it: the model they measure is the unedited one

    def __init__(self, hparams: NoEditHparams):
        self.hparams = hparams

    def prepare(self, model, tokenizer, context) -> None:
        """Nothing to prepare."""

    def apply(self, model, tokenizer, requests) -> Edit:
        return Edit(model, {})


@hookimpl
def register_editors(register):
    register("none", NoEdit)
