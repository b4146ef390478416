"""Peak memory and seconds per edit of every editor, each (model, dtype, editor) in a fresh process.

Each child runs ``harness.runner.run`` on the first ``--limit`` records of the task into a temporary
output directory and reports its own peak: resident set size (``ru_maxrss``) on the CPU, or
``torch.cuda.max_memory_allocated`` with ``--device cuda``. Beside it: the weights' size (sum of
numel * element size over the model's parameters, computed from the parameter count and dtype), the
ratio peak / weights, median seconds per edit and the one-off preparation seconds (second moments,
IKE pool vectors) as results.json records them. Prints a Markdown table; not a test.

    HARNESS_DATA_DIR=../shared/data python benchmarks/bench_memory.py --limit 1 \\
        --models gemma3-270m:float32,gemma3-270m:bfloat16,qwen2.5-1.5b:bfloat16 --json FILE

SERAC and MEND run only when a trained checkpoint exists under ``HARNESS_CACHE_DIR/trained/`` (train
them with ``harness train``); otherwise their rows say why they were skipped. ``--set`` takes
``[MODEL/]EDITOR:key=value`` (or ``*:key=value``) and passes ``key=value`` to the matching runs only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EDITORS = ("rome", "memit", "ft-m", "ft-l", "kn", "ike", "serac", "mend")
TRAINED = ("serac", "mend")  # need `harness train` first
DEFAULT_MODELS = "gemma3-270m:float32,gemma3-270m:bfloat16,qwen2.5-1.5b:bfloat16"
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GIB = 1024**3


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One run in this process; returns what the parent tabulates."""
    import torch

    from harness.runner import run
    from harness.training import TrainingRequired

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    cuda = spec["device"].startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as out:
        try:
            results = run(
                editor=spec["editor"],
                task=spec["task"],
                model=spec["model"],
                limit=spec["limit"],
                dtype=spec["dtype"],
                device=spec["device"],
                output_dir=out,
                overrides=spec["overrides"] or None,
                progress=False,
            )
        except TrainingRequired as error:
            return {"status": "skipped", "reason": str(error).splitlines()[0]}
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss = usage.ru_maxrss * 1024  # KiB on Linux
    model = results["model"]
    timings = results.get("timings", {})
    return {
        "status": "ok",
        "dtype_loaded": model.get("dtype"),
        "device_loaded": model.get("device"),
        "parameters": model["parameters"],
        "peak_rss_bytes": rss,
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "edit_seconds_median": timings.get("edit_seconds_median"),
        "prepare_seconds": timings.get("prepare_seconds"),
        "model_load_seconds": timings.get("model_load_seconds"),
        "wall_seconds": wall,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,  # whole run, load included: less noisy than wall
        "reliability_en_f1": results["results"][spec["task"]].get("reliability.en.f1"),
    }


def overrides_for(sets: list[str], model: str, editor: str) -> dict[str, str]:
    chosen: dict[str, str] = {}
    for item in sets:
        scope, _, assignment = item.partition(":")
        key, equals, value = assignment.partition("=")
        if not equals or not key:
            raise SystemExit(f"--set {item!r}: expected [MODEL/]EDITOR:key=value")
        scope_model, slash, scope_editor = scope.rpartition("/")
        if slash and scope_model != model:
            continue
        if scope_editor in ("*", editor):
            chosen[key] = value
    return chosen


def has_checkpoint(editor: str) -> bool:
    from harness.models import cache_dir

    trained = cache_dir() / "trained" / editor
    return trained.is_dir() and any(trained.iterdir())


def measure(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``spec`` in a fresh interpreter (so the peak is this run's alone)."""
    command = [sys.executable, __file__, "--child", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "reason": f"over {timeout:.0f} s"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"status": "failed", "reason": tail[0]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(spec: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = {k: spec[k] for k in ("model", "dtype", "editor", "device", "limit")}
    figures["overrides"] = spec["overrides"]
    figures.update(result)
    if result.get("status") == "ok":
        weights = result["parameters"] * BYTES[spec["dtype"]]
        peak = result["peak_cuda_bytes"] if spec["device"].startswith("cuda") else result["peak_rss_bytes"]
        figures["weights_bytes"] = weights
        figures["peak_bytes"] = peak
        figures["peak_over_weights"] = peak / weights
    return figures


def _seconds(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[dict[str, Any]], device: str) -> str:
    peak = "peak GPU allocated" if device.startswith("cuda") else "peak RSS"
    lines = [
        f"| model | dtype | editor | weights (computed) | {peak} | peak / weights | s per edit | prepare s"
        " | run CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['model']} | {r['dtype']} | {r['editor']}"
        if r.get("status") != "ok":
            lines.append(f"{head} | {r.get('status')}: {r.get('reason', '')} | | | | | |")
            continue
        lines.append(
            f"{head} | {r['weights_bytes'] / GIB:.2f} GiB | {r['peak_bytes'] / GIB:.2f} GiB"
            f" | {r['peak_over_weights']:.1f} | {_seconds(r['edit_seconds_median'], 1)}"
            f" | {_seconds(r['prepare_seconds'], 1)}"
            f" | {_seconds(r.get('cpu_seconds'))} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="MODEL:DTYPE,... (dtype float32|bfloat16)")
    parser.add_argument("--editors", default=",".join(EDITORS))
    parser.add_argument("--task", default="bizsre_en_zh")
    parser.add_argument("--limit", type=int, default=1, help="records per run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (peak: RSS or CUDA allocated)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per child (0: torch's default; 1 on a busy machine)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per cell; the table shows medians")
    parser.add_argument("--set", action="append", default=[], help="[MODEL/]EDITOR:key=value (repeatable)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per child before giving up")
    parser.add_argument("--json", help="also write every row as JSON here")
    parser.add_argument("--table", metavar="JSON", help="print the table of a --json file and stop")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.table:
        saved = json.loads(Path(args.table).read_text(encoding="utf-8"))
        print(markdown(saved["rows"], saved["meta"]["device"]))
        return

    meta = {"device": args.device, "task": args.task, "cpus": os.cpu_count(), "load": os.getloadavg()}
    rows: list[dict[str, Any]] = []

    def save() -> None:  # after every row, so a cut session keeps what it measured
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n"
            Path(args.json).write_text(text, encoding="utf-8")

    for pair in args.models.split(","):
        model, _, dtype = pair.partition(":")
        for editor in args.editors.split(","):
            spec = {
                "model": model,
                "dtype": dtype or "float32",
                "editor": editor,
                "task": args.task,
                "limit": args.limit,
                "device": args.device,
                "threads": args.threads,
                "overrides": overrides_for(args.set, model, editor),
            }
            if editor in TRAINED and not has_checkpoint(editor):
                result = {"status": "skipped", "reason": "no trained checkpoint (run `harness train` first)"}
                rows.append(row(spec, result))
                save()
                print(f"{model} {dtype} {editor}: skipped, not trained", file=sys.stderr, flush=True)
                continue
            runs = [row(spec, measure(spec, args.timeout)) for _ in range(args.repeats)]
            ok = [r for r in runs if r.get("status") == "ok"]
            merged = dict(runs[-1] if not ok else ok[0])
            if len(ok) > 1:
                for key in ("peak_bytes", "peak_over_weights", "edit_seconds_median", "prepare_seconds"):
                    merged[key] = statistics.median(r[key] for r in ok)
                merged["runs"] = ok
            merged["repeats"] = len(ok)
            rows.append(merged)
            save()
            print(f"{model} {dtype} {editor}: {merged.get('status')}", file=sys.stderr, flush=True)
    print(markdown(rows, args.device))


if __name__ == "__main__":
    main()
