"""Seconds per IKE edit on the demo model with and without the prefix cache, and whether both give
the same answers. An edit here is what the harness spends on one record: ``apply`` (retrieval, plus
encoding the shared context when cached) and answering all of the record's probes. Not a test.

    HARNESS_DATA_DIR=../shared/data python benchmarks/bench_ike.py --records 10 \\
        --out benchmarks/results/ike_gemma3-270m_cpu2.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from harness import plugins
from harness.api import EditorContext
from harness.models import cache_dir, load_model
from harness.runner import load_task_records
from harness.templates import Templates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="bizsre_en_zh")
    parser.add_argument("--records", type=int, default=10)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--answer-mode", default="teacher_forced")
    parser.add_argument("--probe-batch", type=int, default=16)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data_dir = Path(os.environ["HARNESS_DATA_DIR"])
    task = plugins.lookup("task", args.task, plugins.tasks())
    records = load_task_records(task, data_dir, task.template, Templates(), args.records)
    lm = load_model("gemma3-270m", plugins.models())
    ike = plugins.lookup("editor", "ike", plugins.editors())
    context = EditorContext(cache_dir=cache_dir(), data_dir=data_dir, training_set=task.training_set)
    editors = {}
    for cached in (True, False):
        editors[cached] = ike(ike.hparams_class(k=args.k, probe_cache=cached))
        editors[cached].prepare(lm.model, lm.tokenizer, context)
    seconds: dict[bool, list[float]] = {True: [], False: []}
    prefix_tokens, differing = [], 0
    for record in records:
        pairs = [(probe.prompt, probe.expected) for probe in record.probes]
        answers = {}
        for cached, editor in editors.items():
            started = time.perf_counter()
            edit = editor.apply(lm.model, lm.tokenizer, [record.request])
            answers[cached] = edit.answers(lm.model, lm.tokenizer, pairs, args.answer_mode, args.probe_batch)
            seconds[cached].append(time.perf_counter() - started)
        prefix_tokens.append(edit.info["prefix_tokens"])
        differing += sum(a.token_ids != b.token_ids for a, b in zip(answers[True], answers[False]))
    figures = {
        "task": args.task,
        "records": len(records),
        "k": args.k,
        "answer_mode": args.answer_mode,
        "probes_per_edit": len(records[0].probes),
        "prefix_tokens_median": statistics.median(prefix_tokens),
        "seconds_per_edit_cached_median": statistics.median(seconds[True]),
        "seconds_per_edit_plain_median": statistics.median(seconds[False]),
        "speed_up": statistics.median(seconds[False]) / statistics.median(seconds[True]),
        "probes_answered_differently": differing,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
