"""The README's first command as a newcomer runs it: a fresh virtual environment, an empty harness
cache, no data directory. Prints the wall time of each part; not a test.

    python benchmarks/bench_first_run.py --repeats 3 --out benchmarks/results/first_run_cpu2.json

Install times depend on pip's download cache (a machine that has installed these wheels before
installs faster); the rest is what the run itself records in results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALL = [
    ["pip", "install", "-q", "torch==2.13.0"],
    ["pip", "install", "-q", "-c", "constraints.txt", "-e", ".[demo]"],
]
RUN = ["harness", "run", "--editor", "rome", "--task", "bizsre_en_zh"]


def timed(command: list[str], env: dict[str, str], log: Path) -> float:
    started = time.perf_counter()
    with open(log, "a", encoding="utf-8") as out:
        subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - started


def first_run(work: Path) -> dict[str, float]:
    subprocess.run(["python3", "-m", "venv", str(work / "venv")], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DATA_DIR", "VIRTUAL_ENV")}
    env.update(
        PATH=f"{work / 'venv' / 'bin'}:{env['PATH']}",
        HARNESS_CACHE_DIR=str(work / "cache"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    log = work / "log.txt"
    figures = {
        "install_torch_s": timed(INSTALL[0], env, log),
        "install_project_s": timed(INSTALL[1], env, log),
    }
    out = work / "results"
    figures["harness_run_s"] = timed([*RUN, "--output-dir", str(out)], env, log)
    timings = json.loads((out / "results.json").read_text(encoding="utf-8"))["timings"]
    figures["model_load_and_conversion_s"] = timings["model_load_seconds"]
    figures["editor_preparation_s"] = timings["prepare_seconds"]  # second moments
    figures["edits_s"] = timings["edit_seconds_total"]
    figures["evaluation_and_rest_s"] = (
        timings["total_seconds"] - timings["model_load_seconds"] - timings["prepare_seconds"]
    ) - timings["edit_seconds_total"]
    figures["edit_median_s"] = timings["edit_seconds_median"]
    figures["total_s"] = figures["install_torch_s"] + figures["install_project_s"] + figures["harness_run_s"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", help="also write every run's figures and the medians as JSON here")
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="first-run-") as work:
            runs.append(first_run(Path(work)))
            print(json.dumps(runs[-1]), flush=True)
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    for key, value in medians.items():
        print(f"{key:30s} {value:8.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": runs, "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
