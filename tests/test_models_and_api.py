"""Model sources (local dir, .gguf, registered name), the one-off edit API, `harness validate`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import harness
from harness import cli, plugins
from harness.api import EditRequest
from harness.models import ARCHITECTURES, architecture, cache_dir, load_model
from harness_plugins.models.demo import GEMMA3_270M_SHA256
from harness_plugins.models.tiny import checkpoint_dir

REQUEST = EditRequest("Which city is Zorvik Tower in?", "Lisbon", "Zorvik Tower", "en")


def test_local_directory_loads_with_a_content_fingerprint(tiny_llama, tmp_path):
    source = checkpoint_dir(cache_dir(), "tiny-llama")
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    loaded = load_model(str(copy), {})
    assert loaded.identity["format"] == "hf-dir" and loaded.identity["model_type"] == "llama"
    assert loaded.identity["sha256"] == load_model(str(source), {}).identity["sha256"]
    for name, param in loaded.model.named_parameters():
        assert torch.equal(param, tiny_llama.model.get_parameter(name))
        assert not param.requires_grad


def test_a_checkpoint_tokenizer_is_parsed_once_per_process(tiny_llama, tiny_gpt2):
    first, again = (load_model("tiny-llama", plugins.models()) for _ in range(2))
    assert again.tokenizer is first.tokenizer  # the same object: no second parse
    assert again.model is not first.model  # weights are never shared between loads
    assert load_model("tiny-gpt2", plugins.models()).tokenizer is not first.tokenizer
    assert all(t.tokenizer.pad_token_id is not None for t in (again, tiny_gpt2))  # set on the shared one


HUB_PROBE = """
import json, pathlib, sys
from harness.models import load_model
found = []
for revision in sys.argv[2:]:  # each revision becomes the hub's main before the load
    pathlib.Path(sys.argv[1], "refs", "main").write_text(revision)
    identity = load_model("org/tiny", {}).identity
    found.append({k: identity[k] for k in ("format", "hub_id", "revision", "sha256")})
print(json.dumps(found))
"""


def test_a_hub_model_is_keyed_by_the_revision_it_loaded_not_its_id(tiny_llama, tmp_path):
    """Two revisions of one hub id (an offline hub cache holding both) never share a key; the same
    revision loaded twice gets the same one."""
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    for revision in ("a" * 40, "b" * 40):
        shutil.copytree(checkpoint_dir(cache_dir(), "tiny-llama"), repo / "snapshots" / revision)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}

    revisions = ["a" * 40, "a" * 40, "b" * 40]
    probe = subprocess.run(
        [sys.executable, "-c", HUB_PROBE, str(repo), *revisions],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr
    first, again, second = json.loads(probe.stdout.strip().splitlines()[-1])
    assert first["format"] == "hub" and first["hub_id"] == "org/tiny" and first["revision"] == "a" * 40
    assert first["sha256"] == again["sha256"] != second["sha256"] and second["revision"] == "b" * 40
    assert first["sha256"] != "org/tiny"


def test_gguf_path_is_converted_once_and_keyed_by_hash(gemma):
    gguf = cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    assert gguf.is_file()
    loaded = load_model(str(gguf), {})
    assert loaded.identity["format"] == "gguf" and loaded.identity["sha256"] == GEMMA3_270M_SHA256
    assert loaded.identity["model_type"] == "gemma3_text" and loaded.model.config.num_hidden_layers == 18
    assert not getattr(loaded.model, "is_quantized", False)


def test_missing_gguf_and_unknown_architecture_are_clear_errors(tiny_llama, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "absent.gguf"), {})
    model = tiny_llama.model
    original = model.config.model_type
    model.config.model_type = "mystery"
    try:
        with pytest.raises(ValueError, match="no architecture map for model_type 'mystery'"):
            architecture(model)
    finally:
        model.config.model_type = original
    assert {"llama", "qwen2", "gemma3_text", "gpt2"} <= set(ARCHITECTURES)


def test_apply_edit_changes_the_model_until_restored(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    before = {n: p.clone() for n, p in model.named_parameters()}
    with harness.apply_edit(model, tokenizer, "ft-m", REQUEST, hparams={"layers": [1], "lr": 1e-2}) as edit:
        changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
        assert changed == edit.touched == ["model.layers.1.mlp.down_proj.weight"]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(plugins.UnknownName, match="Did you mean 'ft-m'"):
        harness.apply_edit(model, tokenizer, "ft_m", REQUEST)


def test_validate_command_lists_bad_records(tmp_path, capsys):
    sample = plugins.tasks()["bizsre_en_zh"].load_raw(None)[:3]
    sample[1]["en"]["alt"] = ""
    sample[2]["en"]["subject"] = "Atlantis"
    (tmp_path / "bizsre").mkdir()
    (tmp_path / "bizsre" / "bizsre_test.json").write_text(json.dumps(sample, ensure_ascii=False))
    assert cli.main(["validate", "--task", "bizsre_en_zh", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "record 1, field 'en.alt': missing or empty"
    assert out[1].startswith("record 2, field 'en.subject': subject 'Atlantis' not found in src")
    assert out[-1] == "bizsre_en_zh: 3 records, 2 problem(s)"
