"""Cut a sequential run before its third edit call, resume it, and set it beside an uncut run: how
the tests of editors that keep a memory show that the memory survives a resume."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import plugins
from harness.runner import run


def edit_infos(output_dir: Path) -> list[dict]:
    """Each sample's ``edit_info``, in record order."""
    lines = (output_dir / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    samples = sorted((json.loads(line) for line in lines), key=lambda sample: sample["record_id"])
    return [sample["edit_info"] for sample in samples]


def cut_and_resume(
    tmp_path: Path, monkeypatch, editor: str, overrides: dict, observe: Callable[[Any], Any]
) -> tuple[dict, dict, list, dict[str, list[dict]]]:
    """Three sequential edits of ``editor`` on the tiny model: run whole; run again, cut before the
    third edit call; resume. Returns both results, what ``observe(editor)`` said before each edit of
    the cut run, and each run's edit infos (``"whole"``, ``"split"``)."""
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    plugins.load_plugins()
    editor_class = plugins.editors()[editor]
    settings = dict(
        editor=editor,
        task="bizsre_en_zh",
        model="tiny-llama",
        data_dir=None,
        limit=3,
        mode="sequential",
        overrides=overrides,
        progress=False,
    )
    whole = run(output_dir=str(tmp_path / "whole"), **settings)
    apply, seen = editor_class.apply, []

    def cut(editor, model, tokenizer, requests):
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(observe(editor))
        return apply(editor, model, tokenizer, requests)

    monkeypatch.setattr(editor_class, "apply", cut)
    with pytest.raises(KeyboardInterrupt):
        run(output_dir=str(tmp_path / "split"), **settings)
    monkeypatch.setattr(editor_class, "apply", apply)
    resumed = run(output_dir=str(tmp_path / "split"), **settings)
    return whole, resumed, seen, {name: edit_infos(tmp_path / name) for name in ("whole", "split")}
