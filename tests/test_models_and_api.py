"""Model sources (local dir, .gguf, registered name), the one-off edit API, `harness validate`."""

from __future__ import annotations

import json
import shutil

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
