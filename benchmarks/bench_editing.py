"""Speed and memory of editing on the demo model: seconds per ROME / FT edit, probe answers per second,
peak RSS, and ROME's value-optimisation step time against a FLOP-count estimate at the measured
matmul rate. Prints figures and ratios; not a test.

    HARNESS_DATA_DIR=../shared/data python benchmarks/bench_editing.py --records 5 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from harness import plugins
from harness.answers import prompt_ids, target_ids, teacher_forced
from harness.api import EditorContext, EditRequest
from harness.model_text import context_prefixes
from harness.models import architecture, cache_dir, load_model
from harness.runner import load_task_records
from harness.templates import Templates
from harness.weight_editing.keys import subject_last_token
from harness.weight_editing.values import optimise_values, subject_goals


def matmul_rate(tokens: int, d_in: int, d_out: int, repeats: int = 20) -> float:
    """Measured fp32 GFLOP/s of a (tokens x d_in) @ (d_in x d_out) product."""
    a, b = torch.randn(tokens, d_in), torch.randn(d_in, d_out)
    for _ in range(3):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * tokens * d_in * d_out * repeats / (time.perf_counter() - started) / 1e9


def step_flops(model, tokens: int, scored_rows: int, layer: int, from_layer: bool) -> float:
    """FLOPs of one value-optimisation step on ``tokens`` (padded) positions: body forward (every
    layer, or with ``from_layer`` only the edited one and above), backward (activation gradients
    only) from the edited layer up, and the output head forward and backward on the scored rows."""
    body = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n or ".h." in n)
    n_layers = model.config.num_hidden_layers
    head = model.get_output_embeddings().weight.numel()
    upper = body * (n_layers - layer) / n_layers
    forward = 2 * (upper if from_layer else body) * tokens + 2 * head * scored_rows
    backward = 2 * upper * tokens + 2 * head * scored_rows
    return forward + backward


def time_edits(editor, model, tokenizer, requests: list[EditRequest], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        for request in requests:
            started = time.perf_counter()
            edit = editor.apply(model, tokenizer, [request])
            seconds.append(time.perf_counter() - started)
            edit.restore()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--records", type=int, default=5)
    parser.add_argument("--task", default="bizsre_en_zh", help="bizsre_zh_en: the same with Chinese edits")
    parser.add_argument("--editors", default="rome,ft-m,ft-l", help="comma-separated; memit too")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = Path(os.environ["HARNESS_DATA_DIR"]) if os.environ.get("HARNESS_DATA_DIR") else None
    task = plugins.tasks()[args.task]
    records = load_task_records(task, data_dir, task.template, Templates(), args.records)
    loaded = load_model(args.model, plugins.models())
    model, tokenizer = loaded.model, loaded.tokenizer
    context = EditorContext(cache_dir=cache_dir(), seed=0, data_dir=data_dir)
    editors = plugins.editors()
    figures: dict[str, float] = {}

    pairs = [(p.prompt, p.expected) for r in records for p in r.probes]
    teacher_forced(model, tokenizer, pairs[:4])
    for size in (16, 64):
        runs = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            teacher_forced(model, tokenizer, pairs, batch_size=size)
            runs.append(len(pairs) / (time.perf_counter() - started))
        figures[f"probe_answers_per_second_batch{size}"] = statistics.median(runs)

    requests = [r.request for r in records]
    for name in args.editors.split(","):
        if name not in editors:
            continue
        editor_class = editors[name]
        from harness.config import resolve

        editor = editor_class(resolve(editor_class.hparams_class, name, {"model": args.model}, {}).hparams)
        editor.prepare(model, tokenizer, context)
        time_edits(editor, model, tokenizer, requests[:1], 1)  # warm-up (context prefixes are cached)
        figures[f"{name}_edit_seconds_median"] = statistics.median(
            time_edits(editor, model, tokenizer, requests, args.repeats)
        )
        if name == "rome":
            figures.update(value_step(editor, model, tokenizer, requests[0], args.repeats))

    figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))


def value_step(editor, model, tokenizer, request: EditRequest, repeats: int) -> dict[str, float]:
    """Median seconds per value-optimisation step (forced to run every step), recomputing the whole
    prompt and skipping the frozen part, each beside its FLOP estimate at the measured matmul rate."""
    hp = editor.hparams
    arch = architecture(model)
    lengths = [(n, hp.contexts_per_length) for n in hp.context_lengths]
    prefixes = context_prefixes(model, tokenizer, request.language, 0, cache_dir(), lengths)
    texts = [p + request.prompt for p in prefixes]
    steps = 5
    goal = target_ids(tokenizer, request.target)
    (task,) = subject_goals([request], [tuple(texts)], [1.0])
    sequences = [prompt_ids(tokenizer, t) + goal[:-1] for t in texts]
    anchors = [subject_last_token(tokenizer, t, request.subject) for t in texts]
    live = max(len(s) - a for s, a in zip(sequences, anchors)) * len(texts)
    rate = matmul_rate(len(texts) * 32, model.config.hidden_size, model.config.intermediate_size)
    figures = {"matmul_gflops_measured": rate}
    for name, skip, tokens in (
        ("whole_prompt", False, len(texts) * max(len(s) for s in sequences)),
        ("skip_frozen", True, live),
    ):
        objective = replace(hp.objective(), steps=steps, stop_loss=0.0, skip_frozen=skip)
        per_step = []
        for _ in range(repeats):
            started = time.perf_counter()
            optimise_values(model, tokenizer, [task], arch.mlp_out.format(hp.layer), objective)
            per_step.append((time.perf_counter() - started) / steps)
        flops = step_flops(model, tokens, len(texts) * len(goal) + 1, hp.layer, skip)
        measured = statistics.median(per_step)
        figures[f"rome_value_step_{name}_seconds_median"] = measured
        figures[f"rome_value_step_{name}_gflop_estimate"] = flops / 1e9
        figures[f"rome_value_step_{name}_ratio_measured_to_estimate"] = measured / (flops / 1e9 / rate)
    return figures


if __name__ == "__main__":
    main()
