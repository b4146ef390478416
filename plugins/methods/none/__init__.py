"""The unedited model as an editor: a baseline row for editing tasks and the way to run ability tasks
on their own (``harness run --editor none --task general_nli``)."""

from dataclasses import dataclass

from harness.api import Capabilities, Edit, Editor
from harness.hookspecs import hookimpl


@dataclass(frozen=True)
class NoEditHparams:
    """No settings: nothing is edited."""


class NoEdit(Editor):
    """Changes nothing: every probe is answered by the unedited model."""

    hparams_class = NoEditHparams
    # ability tasks may run with it: the model they measure is the unedited one
    capabilities = Capabilities(batch=True, changes_model=False)

    def edit(self, model, tokenizer, requests) -> Edit:
        return Edit(model, {})


@hookimpl
def register_editors(register):
    register("none", NoEdit)
