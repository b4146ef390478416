"""A private harness cache and the harness's tiny random Llama (built from a seed in a second)."""

from __future__ import annotations

import pytest
import torch

from harness import plugins
from harness.models import load_model

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HARNESS_CACHE_DIR", str(tmp_path_factory.mktemp("harness-cache")))
        yield load_model("tiny-llama", plugins.models())
