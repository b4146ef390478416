"""Cost of the whole-model restore check: seconds to fingerprint every parameter and buffer of a model
(done once before the first edit and once after every restore). Medians of several runs. Not a test.

    python benchmarks/bench_fingerprint.py --model gemma3-270m --dtype float32 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

from harness import plugins
from harness.integrity import ModelFingerprint
from harness.models import load_model
from harness.runtime import Placement


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    lm = load_model(args.model, plugins.models(), Placement(device=args.device, dtype=args.dtype))
    size = sum(t.numel() * t.element_size() for t in [*lm.model.parameters(), *lm.model.buffers()])
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        ModelFingerprint.of(lm.model)
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    print(f"{args.model} {args.dtype} on {args.device}: {size / 2**30:.2f} GiB of parameters and buffers")
    print(
        f"fingerprint: median {median:.2f} s of {args.repeats} ({size / 2**30 / median:.2f} GiB/s); "
        f"all: {', '.join(f'{s:.2f}' for s in seconds)}"
    )


if __name__ == "__main__":
    main()
