"""Write the text the demo model ships with: the samples its first run would otherwise draw.

    python -m harness_plugins.models.demo.samples     # about 7 minutes on 2 CPU cores

The model is loaded in float32 on the CPU (as the committed test baselines run it) and sampled with
the same calls ``harness.model_text`` makes, seed 0: the context prefixes of the editor defaults and
of the demo model's ROME/MEMIT settings (5 or 10 texts of 5 and of 10 tokens), and the second-moment
corpus of a two-language task (20,000 tokens, 128 per text). Other seeds, languages or budgets are
sampled at run time as before.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch
import transformers

from harness import plugins
from harness.model_text import PREFIX_TOP_K, SampleSpec, corpus_spec, write_samples
from harness.models import load_model
from harness.runtime import Placement

SAMPLES = Path(__file__).with_name("gemma3-270m-samples.json")
LANGUAGES = ("en", "zh")
SECOND_MOMENT_TOKENS = 20_000  # harness.weight_editing.SecondMomentSettings' default


def shipped_specs(seed: int = 0) -> list[SampleSpec]:
    prefixes = [
        SampleSpec(language, length, count, PREFIX_TOP_K, seed)
        for language in LANGUAGES
        for count in (5, 10)
        for length in (5, 10)
    ]
    corpus = [corpus_spec(language, len(LANGUAGES), SECOND_MOMENT_TOKENS, seed) for language in LANGUAGES]
    return prefixes + corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SAMPLES)
    args = parser.parse_args()
    torch.set_num_threads(2)
    loaded = load_model("gemma3-270m", plugins.models(), Placement(device="cpu", dtype="float32"))
    made_with = {
        "model": "gemma3-270m",
        "gguf_sha256": loaded.identity["sha256"],
        "dtype": "float32",
        "device": "cpu",
        "command": "python -m harness_plugins.models.demo.samples",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.machine(),
    }
    loaded.model.harness_samples = None  # draw them all afresh
    write_samples(loaded.model, loaded.tokenizer, shipped_specs(), args.out, made_with)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
