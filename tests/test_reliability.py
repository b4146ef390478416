"""Cases an adversarial pass found that gave a wrong number with exit 0; each fails on the code before
its fix."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness import models, plugins, subjects
from harness.api import Editor
from harness.datafiles import json_records
from harness.models import CheckpointError, load_model
from harness.results import ResumeMismatch
from harness.runner import DataError, run


def test_accumulating_runs_refuse_to_resume_with_another_record_set(tmp_path, harness_cache):
    """Sequential mode keeps every edit for the records probed after it: 2 records then 3 into one
    directory would probe records under different numbers of edits and report them as one run."""
    common = dict(
        editor="ft-m",
        task="bizsre_en_zh",
        model="tiny-llama",
        mode="sequential",
        progress=False,
        output_dir=str(tmp_path),
        overrides={"steps": 1},
    )
    first = run(**common, limit=2)
    assert run(**common, limit=2)["record_ids"] == first["record_ids"]  # the same run resumes
    with pytest.raises(ResumeMismatch, match="records"):
        run(**common, limit=3)


def test_data_files_are_read_by_content_not_by_modification_time(tmp_path, harness_cache):
    path = tmp_path / "records.json"
    path.write_text(json.dumps([{"question": "old", "answer": "a"}]))
    stamp = os.stat(path).st_mtime_ns
    assert json_records(path) == [{"question": "old", "answer": "a"}]
    path.write_text(json.dumps([{"question": "rewritten", "answer": "b"}]))
    os.utime(path, ns=(stamp, stamp))  # as cp -p, rsync -a or tar leave it
    models._sha256.cache_clear()  # a later process
    assert json_records(path) == [{"question": "rewritten", "answer": "b"}]


def test_a_checkpoint_missing_a_weight_is_refused(tmp_path, harness_cache):
    source = plugins.models()["tiny-llama"].locate(models.cache_dir())
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    tensors = load_file(broken / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as error:
        load_model(str(broken), {})
    assert "missing (would be random): model.layers.1.mlp.down_proj.weight" in str(error.value)
    assert "unexpected: extra.weight" in str(error.value)


def test_skipping_every_record_is_an_error_not_an_empty_result(monkeypatch, tmp_path, harness_cache):
    monkeypatch.setattr(subjects, "align_subject", lambda *args, **kwargs: None)
    with pytest.raises(DataError, match="left out all 3 records"):
        run(
            editor="rome",
            task="bizsre_en_zh",
            model="tiny-llama",
            limit=3,
            progress=False,
            output_dir=str(tmp_path),
            overrides={"subject_fallback": "skip"},
        )


class Payload:
    """Stands for a crafted object: unpickling it would call ``os.getpid`` (any function would do)."""

    def __reduce__(self):
        return (os.getpid, ())


def test_training_progress_with_code_in_it_is_refused(tmp_path):
    from harness.training import PROGRESS, TrainingProgressError, TrainingSession

    torch.save({"step": 3, "elapsed": 1.0, "state": Payload()}, tmp_path / PROGRESS)
    session = TrainingSession(tmp_path, [], [], progress=False)
    with pytest.raises(TrainingProgressError, match="delete it to train from the start"):
        session.resume()
    torch.save(
        {"step": 3, "elapsed": 1.0, "state": {"weights": torch.ones(2), "betas": (0.9, 0.99)}},
        tmp_path / PROGRESS,
    )
    step, state = session.resume()
    assert step == 3 and torch.equal(state["weights"], torch.ones(2)) and state["betas"] == (0.9, 0.99)


@pytest.mark.parametrize("name", ["../../escape", "a/b", ".hidden", "", "tab\tname"])
def test_plugin_names_that_are_not_one_path_component_are_refused(name, register_plugin, caplog):
    from harness.hookspecs import hookimpl

    class Nameless(Editor):
        hparams_class = dict

    class Plugin:
        @hookimpl
        def register_editors(self, register):
            register(name, Nameless)

    register_plugin(Plugin())
    found = plugins.editors()
    assert name not in found and "rome" in found  # the others still load
    assert "the name" in caplog.text and "is refused" in caplog.text


def test_a_broken_plugin_is_named_and_the_others_still_load(register_plugin, caplog):
    from harness.hookspecs import hookimpl

    class Broken:
        @hookimpl
        def register_editors(self, register):
            raise KeyError("settings")

        @hookimpl
        def after_run(self, results, run):
            raise RuntimeError("disk full")

    register_plugin(Broken())
    plugins._warned.clear()  # plugin names are object ids, which an earlier test's plugin may have had
    name = plugins.pm.get_name(next(p for p in plugins.pm.get_plugins() if isinstance(p, Broken)))
    assert "rome" in plugins.editors()
    assert f"plugin {name!r}: hook register_editors raised KeyError" in caplog.text
    with pytest.raises(plugins.UnknownName, match=f"Plugin\\(s\\) {name} failed to register editors"):
        plugins.lookup("editor", "brokens-editor", plugins.editors())
    with pytest.raises(
        plugins.PluginError, match=f"plugin {name!r}: hook after_run raised RuntimeError: disk full"
    ):
        plugins.call("after_run", results={}, run=None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"  \n", "the file is empty"),
        (b"[]", "holds no records"),
        (b'[{"a": "caf\xe9"}]', "line 1 is not UTF-8 text"),
        (b'{"a": 1}\n{"a": 2}\n\xff\n', "line 3 is not UTF-8 text"),
        (b"[{'a': 1}]", "not a JSON array or JSON lines of records"),
    ],
)
def test_unreadable_data_files_name_the_file_and_the_problem(content, message, tmp_path, harness_cache):
    from harness.datafiles import DataFileError

    path = tmp_path / "data.json"
    path.write_bytes(content)
    with pytest.raises(DataFileError, match=message) as error:
        json_records(path)
    assert str(error.value).startswith(f"{path}: ")


def test_fingerprint_sees_any_changed_bit_and_not_a_nan_that_stayed():
    from harness.integrity import tensor_checksum

    original = torch.tensor([1.0, float("nan"), 3.0, 4.0])
    assert tensor_checksum(original) == tensor_checksum(original.clone())  # NaN != NaN, bits equal
    swapped = torch.tensor([1.0, float("nan"), 4.0, 3.0])
    assert tensor_checksum(swapped) != tensor_checksum(original)
    nudged = original.clone()
    nudged[0] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))
    assert tensor_checksum(nudged) != tensor_checksum(original)
    half = torch.arange(10_000, dtype=torch.bfloat16)
    assert tensor_checksum(half) == tensor_checksum(half.clone())


@pytest.mark.parametrize("mode", ["single", "sequential"])
def test_an_editor_that_writes_what_it_did_not_snapshot_stops_the_run(
    mode, register_plugin, tmp_path, harness_cache
):
    from dataclasses import dataclass

    from harness.api import Edit, RestoreError
    from harness.hookspecs import hookimpl

    @dataclass(frozen=True)
    class Nothing:
        pass

    class Sneaky(Editor):
        """Snapshots layer 1's MLP output matrix but writes layer 2's."""

        hparams_class = Nothing

        def edit(self, model, tokenizer, requests):
            edit = Edit.snapshot(model, ["model.layers.1.mlp.down_proj.weight"])
            with torch.no_grad():
                model.get_parameter("model.layers.2.mlp.down_proj.weight").add_(1.0)
            return edit

    class Plugin:
        @hookimpl
        def register_editors(self, register):
            register("sneaky", Sneaky)

    register_plugin(Plugin())
    with pytest.raises(RestoreError, match="model.layers.2.mlp.down_proj.weight"):
        run(
            editor="sneaky",
            task="bizsre_en_zh",
            model="tiny-llama",
            limit=2,
            mode=mode,
            progress=False,
            output_dir=str(tmp_path),
        )


def _log(tmp_path, content: bytes):
    from harness.results import SAMPLES, SampleLog

    (tmp_path / SAMPLES).write_bytes(content)
    return SampleLog(tmp_path)


def test_a_complete_last_line_without_newline_is_kept_and_repaired(tmp_path):
    log_file = _log(tmp_path, b'{"record_id": "a"}\n{"record_id": "b"}')
    assert [s["record_id"] for s in log_file.samples] == ["a", "b"]
    log_file.append({"record_id": "c"})
    reread = _log(tmp_path, (tmp_path / "samples.jsonl").read_bytes())
    assert [s["record_id"] for s in reread.samples] == ["a", "b", "c"]


def test_only_a_torn_last_line_is_dropped(tmp_path):
    log_file = _log(tmp_path, b'{"record_id": "a"}\n{"record_id": "b"}\n{"record_id": "c", "pro')
    assert [s["record_id"] for s in log_file.samples] == ["a", "b"]
    assert (tmp_path / "samples.jsonl").read_bytes() == b'{"record_id": "a"}\n{"record_id": "b"}\n'


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"record_id": "a"}\n{"record_id": "b"\n{"record_id": "c"}\n', "line 2: not one JSON record"),
        (b'{"record_id": "a"}\n{"record_id": "\xff"}\n', "line 2: not UTF-8 text"),
    ],
)
def test_a_bad_line_in_the_middle_is_an_error_and_nothing_is_truncated(content, message, tmp_path):
    from harness.results import SampleLogError

    with pytest.raises(SampleLogError, match=message):
        _log(tmp_path, content)
    assert (tmp_path / "samples.jsonl").read_bytes() == content


def test_a_record_logged_twice_counts_once(tmp_path):
    log_file = _log(tmp_path, b'{"record_id": "a", "v": 1}\n{"record_id": "b"}\n{"record_id": "a", "v": 2}\n')
    assert [(s["record_id"], s.get("v")) for s in log_file.samples] == [("a", 1), ("b", None)]


def test_a_live_lock_holder_is_refused_and_a_dead_one_taken_over(tmp_path):
    import socket
    import subprocess

    from harness.results import LOCK, OutputLocked, lock_output, unlock_output

    other = subprocess.Popen(["sleep", "30"])
    try:
        holder = {"pid": other.pid, "host": socket.gethostname(), "since": 0}
        (tmp_path / LOCK).write_text(json.dumps(holder))
        with pytest.raises(OutputLocked, match=f"being written by process {other.pid}"):
            lock_output(tmp_path)
    finally:
        other.kill()
        other.wait()
    lock_output(tmp_path)  # its holder is gone now
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    unlock_output(tmp_path)
    assert not (tmp_path / LOCK).exists()


def test_two_runs_into_one_directory_do_not_both_write(tmp_path, harness_cache):
    """A second run started while another process writes the directory is refused; the first
    finishes alone and logs each record once."""
    import subprocess
    import sys
    import time

    from harness.results import OutputLocked

    settings = dict(
        editor="ft-m", task="bizsre_en_zh", model="tiny-llama", limit=20, output_dir=str(tmp_path)
    )
    script = f"from harness.runner import run; run(**{settings!r}, progress=False)"
    first = subprocess.Popen([sys.executable, "-c", script], env={**os.environ})
    try:
        while not (tmp_path / "run.lock").exists():
            assert first.poll() is None, "the first run ended before taking the directory"
            time.sleep(0.05)
        with pytest.raises(OutputLocked, match=f"being written by process {first.pid}"):
            run(**settings, progress=False)
    finally:
        assert first.wait(timeout=900) == 0
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 20
    assert not (tmp_path / "run.lock").exists()


def test_model_paths_that_are_not_there_say_so(tmp_path, harness_cache):
    with pytest.raises(FileNotFoundError, match="no such file or directory /nonexistent/model"):
        load_model("/nonexistent/model", {})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        CheckpointError, match="is not a model directory: it has no config.json and no weights"
    ):
        load_model(str(empty), {})


def test_a_truncated_weight_file_is_named(tmp_path, harness_cache):
    source = plugins.models()["tiny-llama"].locate(models.cache_dir())
    broken = tmp_path / "truncated"
    shutil.copytree(source, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(
        CheckpointError, match=r"cannot load .*truncated \(weight files \['model.safetensors'\]\)"
    ):
        load_model(str(broken), {})


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[runn]\nseed = 1\n", r"unknown section\(s\) \['runn'\]; valid: \['run', 'models'\]"),
        ("run = 5\n", "run = 5 must be a table"),
        ('[models."tiny-lama".rome]\nlayer = 1\n', "no model of that name \\(did you mean 'tiny-llama'"),
        ('[models."tiny-llama".ftm]\nlayers = [1]\n', "no editor of that name \\(did you mean 'ft-m'"),
        ("models = 3\n", "models must be tables"),
    ],
)
def test_config_files_with_unknown_or_misshapen_sections_are_refused(toml, message, tmp_path, harness_cache):
    from harness.config import ConfigError

    config = tmp_path / "harness.toml"
    config.write_text(toml)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message):
        run(
            editor="rome",
            task="bizsre_en_zh",
            model="tiny-llama",
            limit=1,
            progress=False,
            config_file=str(config),
            output_dir=str(out),
        )
    assert not out.exists()


@pytest.mark.parametrize(
    ("editor", "settings", "message"),
    [  # the list syntax messages print is accepted; the values are then refused on their merits
        ("ft-m", {"layers": "[1,99]"}, r"layers=\(1, 99\) has \[99\] outside the model's 0..3"),
        ("rome", {"lr": "-1"}, "lr must be > 0, got -1.0"),
    ],
)
def test_bad_settings_are_refused_and_leave_no_output(editor, settings, message, tmp_path, harness_cache):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):  # ConfigError is a ValueError
        run(
            editor=editor,
            task="bizsre_en_zh",
            model="tiny-llama",
            limit=1,
            progress=False,
            overrides=settings,
            output_dir=str(out),
        )
    assert not out.exists()


def _build_slowly(entry: str, log: str) -> None:
    def build() -> None:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # long enough that the other processes arrive while it builds
        Path(entry).write_text("built", encoding="utf-8")

    models.build_once(Path(entry), build)
    assert Path(entry).read_text(encoding="utf-8") == "built"


def test_processes_sharing_a_cache_build_an_entry_once(tmp_path):
    """Shards of a run (or test workers) asking for the same cache entry at once: one builds it, the
    others wait for it and read it, instead of computing it again or reading half of it."""
    context = multiprocessing.get_context("spawn")
    entry, log = tmp_path / "moments" / "entry.pt", tmp_path / "builders.log"
    workers = [context.Process(target=_build_slowly, args=(str(entry), str(log))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert len(log.read_text(encoding="utf-8").splitlines()) == 1
