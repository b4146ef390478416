"""The model runtime: options resolve to a device and dtype or fail naming the option; loading follows
them; caches and runs keep dtypes apart; float32 masters and float64 solves keep bf16 updates exact."""

from __future__ import annotations

import json

import pytest
import torch

from harness import plugins
from harness.cli import main
from harness.config import ConfigError, RunConfig
from harness.models import load_model
from harness.runner import run
from harness.runtime import (
    MasterCopies,
    ModelRuntime,
    Placement,
    PlacementError,
    resolve_device,
    resolve_dtype,
    runtime_of,
)
from harness.weight_editing.updates import rank_one_update


def test_auto_device_is_the_cpu_without_a_gpu():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_and_bare_cuda_take_the_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("auto") == torch.device("cuda", 2)
    assert resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(PlacementError, match="only 4 CUDA device"):
        resolve_device("cuda:7")


def test_a_missing_gpu_is_an_error_naming_the_option():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(PlacementError, match="device: 'cuda' asked for, but torch sees no CUDA device"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"dtype": "float8"}, "dtype: 'float8' is not one of"),
        ({"device_map": "everywhere"}, "device_map: 'everywhere' is not one of"),
        ({"device": "gpu0"}, "device: 'gpu0' is not a device"),
    ],
)
def test_bad_placements_are_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**settings)


def test_cli_says_which_device_is_missing(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(
        [
            "run",
            "--editor",
            "ft-m",
            "--task",
            "bizsre_en_zh",
            "--model",
            "tiny-llama",
            "--device",
            "cuda",
            "--limit",
            "1",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "device: 'cuda' asked for, but torch sees no CUDA device here" in capsys.readouterr().err


def test_auto_dtype_is_the_checkpoints_own():
    assert resolve_dtype("auto", torch.bfloat16) == torch.bfloat16
    assert resolve_dtype("auto", "bfloat16") == torch.bfloat16
    assert resolve_dtype("auto", None) == torch.float32
    assert resolve_dtype("auto", torch.float64) == torch.float32
    assert resolve_dtype("float16", torch.float32) == torch.float16


def test_loading_in_bfloat16_keys_caches_apart(tiny_llama, harness_cache):
    half = load_model("tiny-llama", plugins.models(), Placement(device="cpu", dtype="bfloat16"))
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert half.identity["dtype"] == "bfloat16" and half.identity["device"] == "cpu"
    assert tiny_llama.identity["dtype"] == "float32"
    assert half.identity["sha256"] == tiny_llama.identity["sha256"]
    assert half.fingerprint != tiny_llama.fingerprint
    assert runtime_of(half.model) == ModelRuntime(device=torch.device("cpu"), dtype=torch.bfloat16)


def test_a_model_built_elsewhere_gets_the_runtime_its_embeddings_imply(tiny_llama):
    import copy

    bare = copy.deepcopy(tiny_llama.model)
    del bare.harness_runtime
    assert runtime_of(bare) == ModelRuntime(device=torch.device("cpu"), dtype=torch.float32)


def test_bfloat16_run_is_recorded_and_never_resumes_a_float32_one(tmp_path, harness_cache):
    common = dict(editor="ft-m", task="bizsre_en_zh", model="tiny-llama", limit=2, progress=False)
    half = run(**common, dtype="bfloat16", device="cpu", output_dir=str(tmp_path / "bf16"))
    assert half["model"]["dtype"] == "bfloat16" and half["config"]["dtype"] == "bfloat16"
    manifest = json.loads((tmp_path / "bf16" / "run.json").read_text())
    assert manifest["runtime"] == {"dtype": "bfloat16", "device": "cpu"}
    with pytest.raises(Exception, match="runtime"):  # the same directory, another dtype: refused
        run(**common, dtype="float32", device="cpu", output_dir=str(tmp_path / "bf16"))


def test_master_copies_keep_updates_that_bfloat16_rounds_away():
    """SGD with lr 1e-3 and gradient 1 from 1.0: bf16's spacing near 1 is 2^-7, so each step taken on
    the bf16 weight itself rounds back to 1.0; the float32 master reaches 0.99 after 10 steps."""
    plain = torch.nn.Parameter(torch.ones(1, dtype=torch.bfloat16))
    kept = torch.nn.Parameter(torch.ones(1, dtype=torch.bfloat16))
    masters = MasterCopies([kept])
    plain_step = torch.optim.SGD([plain], lr=1e-3)
    master_step = torch.optim.SGD(masters.masters, lr=1e-3)
    for _ in range(10):
        plain.grad = torch.ones(1, dtype=torch.bfloat16)
        plain_step.step()
        master_step.zero_grad()
        kept.grad = torch.ones(1, dtype=torch.bfloat16)
        masters.step(master_step)
    assert plain.item() == 1.0
    assert masters.masters[0].item() == pytest.approx(0.99, abs=1e-6)
    assert kept.item() == torch.tensor(0.99).to(torch.bfloat16).item()
    assert kept.grad is None


def test_float32_parameters_are_their_own_masters():
    weight = torch.nn.Parameter(torch.ones(3))
    assert MasterCopies([weight]).masters[0] is weight


def test_rank_one_update_in_bfloat16_is_the_float64_update_rounded_once():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 5, generator=generator).to(torch.bfloat16)
    key = torch.randn(5, generator=generator)
    delta = torch.randn(6, generator=generator)
    expected = weight.double() + torch.outer(delta.double(), key.double()) / key.double().dot(key.double())
    rank_one_update(weight, key, delta)
    assert weight.dtype == torch.bfloat16
    assert torch.equal(weight, expected.to(torch.bfloat16))
