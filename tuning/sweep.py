"""Grid-search any editor's hyper-parameters on VALIDATION records (never the test file).

English records come from the ZsRE training file, Chinese ones from the Bi-ZsRE Chinese validation
file; only records whose subject occurs verbatim in ``src``, a seeded sample. Each edit is scored on
its own src (reliability) and rephrase (generality), and on a pool of unrelated loc prompts whose
post-edit answers are compared with the unedited model's (locality), then restored.

    HARNESS_DATA_DIR=../shared/data python tuning/sweep.py --editor rome --set second_moments=true \
        --grid layer=4,5,6,8 --language en --records 8 --out tuning/results/rome_sm_en.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from harness import plugins
from harness.answers import teacher_forced
from harness.api import EditorContext, EditRequest
from harness.config import build, parse_overrides
from harness.metrics import exact_match, token_f1
from harness.models import cache_dir, load_model

VALIDATION = {"en": "zsre_train/zsre_mend_train_en_10000.json", "zh": "zsre_eval/zsre_mend_eval_zh_3000.json"}
LOC_PREFIX = "nq question: "


def select(data_dir: Path, language: str, n: int, pool: int, seed: int) -> tuple[list[dict], list[dict]]:
    records = json.loads((data_dir / VALIDATION[language]).read_text(encoding="utf-8"))
    eligible = [r for r in records if r["subject"] and r["subject"] in r["src"]]
    chosen = random.Random(seed).sample(eligible, n + pool)
    return chosen[:n], chosen[n:]


def score(tokenizer, answer: str, expected: str) -> tuple[float, float]:
    def encode(text: str) -> list[int]:
        return tokenizer(text.strip(), add_special_tokens=False).input_ids

    return 100 * token_f1(encode(answer), encode(expected)), 100 * exact_match(answer, expected)


def evaluate_setting(editor, model, tokenizer, records, loc_prompts, pre_loc, language) -> dict[str, float]:
    rows: dict[str, list[float]] = {k: [] for k in ("rel_f1", "rel_em", "gen_f1", "gen_em", "loc_f1", "sec")}
    for record in records:
        started = time.perf_counter()
        edit = editor.apply(
            model, tokenizer, [EditRequest(record["src"], record["alt"], record["subject"], language)]
        )
        rows["sec"].append(time.perf_counter() - started)
        if "value_steps" in (edit.info or {}):
            steps = edit.info["value_steps"]  # one number (ROME) or one per request (MEMIT's kind)
            rows.setdefault("steps", []).extend(steps if isinstance(steps, list) else [steps])
        pairs = [(record["src"], record["alt"]), (record["rephrase"], record["alt"]), *loc_prompts]
        post = teacher_forced(model, tokenizer, pairs)
        edit.restore()
        for name, answer in (("rel", post[0].text), ("gen", post[1].text)):
            f1, em = score(tokenizer, answer, record["alt"])
            rows[f"{name}_f1"].append(f1)
            rows[f"{name}_em"].append(em)
        rows["loc_f1"].append(
            statistics.fmean(score(tokenizer, a.text, p)[0] for a, p in zip(post[2:], pre_loc))
        )
    summary = {k: statistics.fmean(v) for k, v in rows.items() if k not in ("sec", "steps")}
    summary["sec_median"] = statistics.median(rows["sec"])
    if "steps" in rows:
        summary["value_steps_median"] = statistics.median(rows["steps"])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--editor", required=True)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--set", action="append", default=[], help="fixed hparam, key=value")
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        help="swept hparam, key=v1,v2 (| separates tuple values: layers=4|5|6)",
    )
    parser.add_argument("--language", choices=sorted(VALIDATION), default="en")
    parser.add_argument("--records", type=int, default=8)
    parser.add_argument("--loc-pool", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = Path(os.environ["HARNESS_DATA_DIR"])
    editor_class = plugins.lookup("editor", args.editor, plugins.editors())
    fixed = parse_overrides(args.set)
    grid = {k: v.split("|" if "|" in v else ",") for k, v in parse_overrides(args.grid).items()}
    loaded = load_model(args.model, plugins.models())
    model, tokenizer = loaded.model, loaded.tokenizer
    records, pool = select(data_dir, args.language, args.records, args.loc_pool, args.seed)
    loc_prompts = [(r["loc"].removeprefix(LOC_PREFIX), r["loc_ans"]) for r in pool]
    pre_loc = [a.text for a in teacher_forced(model, tokenizer, loc_prompts)]
    pre_rel = statistics.fmean(
        score(tokenizer, a.text, r["alt"])[0]
        for a, r in zip(teacher_forced(model, tokenizer, [(r["src"], r["alt"]) for r in records]), records)
    )
    print(f"{args.language}: {len(records)} records, unedited reliability F1 {pre_rel:.1f}", flush=True)
    results: list[dict[str, Any]] = []
    for values in itertools.product(*grid.values()):
        setting = {**fixed, **dict(zip(grid, values))}
        editor = editor_class(build(editor_class.hparams_class, setting, f"{args.editor} hparams"))
        context = EditorContext(
            cache_dir=cache_dir(), seed=args.seed, data_dir=data_dir, languages=(args.language,)
        )
        editor.prepare(model, tokenizer, context)
        summary = evaluate_setting(editor, model, tokenizer, records, loc_prompts, pre_loc, args.language)
        results.append({"setting": setting, **summary})
        print(json.dumps(results[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"args": vars(args), "unedited_reliability_f1": pre_rel, "results": results}, indent=2)
    )


if __name__ == "__main__":
    main()
