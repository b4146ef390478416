"""Costs of the locate-then-edit methods on the demo model. Prints figures; not a test.

- second-moment statistics: seconds and peak extra memory per 10k tokens per layer, for one layer
  alone and for five layers in one streaming pass;
- seconds per MEMIT edit at batch sizes 1, 16 and 64 (one apply call per batch, divided by its size);
- seconds per KN edit.

    HARNESS_DATA_DIR=../shared/data python benchmarks/bench_locate_edit.py \\
        --out benchmarks/results/locate_edit_gemma3-270m_cpu2.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from harness import plugins
from harness.api import EditorContext
from harness.config import resolve
from harness.models import architecture, cache_dir, load_model
from harness.runner import load_task_records
from harness.templates import Templates
from harness.weight_editing.second_moments import SecondMomentSettings, moment_corpus, second_moments


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_extra_mib(work) -> tuple[float, float]:
    """Seconds and peak resident memory above the starting point while ``work()`` runs (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    start = _status_kib("VmRSS")
    started = time.perf_counter()
    work()
    return time.perf_counter() - started, (_status_kib("VmHWM") - start) / 1024


def bench_statistics(model, tokenizer, context, layers: list[int], tokens: int, repeats: int) -> dict:
    texts, corpus = moment_corpus(model, tokenizer, SecondMomentSettings(second_moments=True), context)
    names = [architecture(model).mlp_out.format(layer) for layer in layers]
    figures: dict[str, float | str] = {"statistics_corpus": corpus, "statistics_tokens": tokens}
    for label, chosen in (("one_layer", names[:1]), (f"{len(names)}_layers", names)):
        seconds, memory = [], []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as fresh:
                s, m = peak_extra_mib(
                    lambda chosen=chosen, fresh=fresh: second_moments(
                        model, tokenizer, chosen, texts, tokens, Path(fresh)
                    )
                )
            seconds.append(s)
            memory.append(m)
        per_10k_layer = 10_000 / tokens / len(chosen)
        figures[f"statistics_{label}_seconds_per_10k_tokens_per_layer"] = (
            statistics.median(seconds) * per_10k_layer
        )
        figures[f"statistics_{label}_peak_extra_mib"] = statistics.median(memory)
    return figures


def bench_memit(model, tokenizer, context, requests, batch_sizes: list[int], model_name: str) -> dict:
    hparams = resolve(plugins.editors()["memit"].hparams_class, "memit", {"model": model_name}, {}).hparams
    editor = plugins.editors()["memit"](hparams)
    editor.prepare(model, tokenizer, context)
    editor.apply(model, tokenizer, requests[:1]).restore()  # warm-up: context prefixes are cached
    figures = {}
    for size in batch_sizes:
        batch = requests[:size]
        started = time.perf_counter()
        edit = editor.apply(model, tokenizer, batch)
        seconds = time.perf_counter() - started
        edit.restore()
        figures[f"memit_batch_{size}_seconds_per_edit"] = seconds / len(batch)
        figures[f"memit_batch_{size}_value_steps_median"] = statistics.median(edit.info["value_steps"])
        print(f"memit batch {size}: {seconds / len(batch):.2f} s per edit", flush=True)
    return figures


def bench_kn(model, tokenizer, context, requests, model_name: str) -> dict:
    hparams = resolve(plugins.editors()["kn"].hparams_class, "kn", {"model": model_name}, {}).hparams
    editor = plugins.editors()["kn"](hparams)
    editor.prepare(model, tokenizer, context)
    seconds = []
    for request in requests:
        started = time.perf_counter()
        editor.apply(model, tokenizer, [request]).restore()
        seconds.append(time.perf_counter() - started)
    return {"kn_edit_seconds_median": statistics.median(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stats-tokens", type=int, default=10_000)
    parser.add_argument("--stats-layers", default="2,3,4,5,6")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memit-batches", default="1,16,64")
    parser.add_argument("--kn-records", type=int, default=5)
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = Path(os.environ["HARNESS_DATA_DIR"]) if os.environ.get("HARNESS_DATA_DIR") else None
    task = plugins.tasks()["bizsre_en_zh"]
    batch_sizes = [int(n) for n in args.memit_batches.split(",")]
    records = load_task_records(
        task, data_dir, task.template, Templates(), max(batch_sizes + [args.kn_records])
    )
    requests = [r.request for r in records]
    loaded = load_model(args.model, plugins.models())
    model, tokenizer = loaded.model, loaded.tokenizer
    context = EditorContext(cache_dir=cache_dir(), seed=0, data_dir=data_dir, languages=("en", "zh"))
    layers = [int(n) for n in args.stats_layers.split(",")]
    figures = {"model": args.model, "threads": args.threads}
    figures.update(bench_statistics(model, tokenizer, context, layers, args.stats_tokens, args.repeats))
    print(json.dumps(figures, indent=2), flush=True)
    figures.update(bench_kn(model, tokenizer, context, requests[: args.kn_records], args.model))
    figures.update(bench_memit(model, tokenizer, context, requests, batch_sizes, args.model))
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
