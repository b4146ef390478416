"""Command line: harness run | train | ls | plugins | validate | score | report."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from harness import plugins
from harness.api import editor_modes, is_ability
from harness.config import EDIT_MODES


def _run(args) -> int:
    from harness.config import parse_overrides
    from harness.report import table
    from harness.runner import run

    results = run(
        editor=args.editor,
        task=args.task,
        model=args.model,
        data_dir=args.data_dir,
        output_dir=args.output_dir,
        limit=args.limit,
        seed=args.seed,
        mode=args.mode,
        batch_size=args.batch_size,
        overrides=parse_overrides(args.set or []),
        config_file=args.config,
        probe_every=args.probe_every,
        then=args.then,
        then_limit=args.then_limit,
    )
    print(table(results))
    print(f"results: {Path(results['output_dir']) / 'results.json'}")
    return 0


def _train(args) -> int:
    from harness.config import parse_overrides
    from harness.runner import train

    summary = train(
        editor=args.editor,
        train_data=args.train_data,
        train_limit=args.train_limit,
        model=args.model,
        data_dir=args.data_dir,
        seed=args.seed,
        overrides=parse_overrides(args.set or []),
        config_file=args.config,
    )
    shown = {k: v for k, v in summary.items() if k not in ("model", "hparams")}
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    return 0


def _ls(args) -> int:
    if args.what == "editors":
        for name, cls in sorted(plugins.editors().items()):
            summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            print(f"{name:16} {summary}  [modes: {', '.join(editor_modes(cls))}]")
    elif args.what == "tasks":
        from harness.config import data_dir_setting

        for name, task in sorted(plugins.tasks(data_dir_setting(args.data_dir, args.config)).items()):
            print(f"{name:32} {task.description}")
    elif args.what == "training-sets":
        from harness.config import data_dir_setting

        found = plugins.training_sets(data_dir_setting(args.data_dir, args.config))
        for name, training_set in sorted(found.items()):
            print(f"{name:16} {training_set.language:4} {training_set.description}")
    else:
        for name, source in sorted(plugins.models().items()):
            print(f"{name:16} {source.description}")
    return 0


def _plugins(args) -> int:
    print(json.dumps(plugins.plugin_listing(), indent=2))
    return 0


def _validate(args) -> int:
    from harness.config import data_dir_setting

    data_dir = data_dir_setting(args.data_dir, args.config)
    task = plugins.lookup("task", args.task, plugins.tasks(data_dir))
    if is_ability(task):
        try:
            examples = task.examples(data_dir)
        except ValueError as problems:  # every bad record, by line and field
            print(problems)
            return 1
        print(f"{task.name}: {len(examples)} examples after the demonstrations, 0 problem(s)")
        return 0
    raw = task.load_raw(data_dir)
    issues = task.validate(raw)
    for issue in issues:
        print(issue)
    print(f"{task.name}: {len(raw)} records, {len(issues)} problem(s)")
    return 1 if issues else 0


def _score(args) -> int:
    from harness.abilities import score_prediction_file
    from harness.config import data_dir_setting

    data_dir = data_dir_setting(args.data_dir, args.config)
    task = plugins.lookup("task", args.task, plugins.tasks(data_dir))
    if not is_ability(task):
        raise ValueError(f"task {args.task}: only ability tasks score prediction files")
    scores = score_prediction_file(task, data_dir, Path(args.predictions), args.limit)
    print(json.dumps({"task": task.name, "metric": task.metric, "scores": scores}, indent=2))
    return 0


def _report(args) -> int:
    from harness.report import table

    for path in args.results:
        print(table(json.loads(Path(path).read_text(encoding="utf-8")), markdown=args.markdown))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="harness", description="Evaluate knowledge editors on editing tasks.")
    sub = top.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="edit and evaluate")
    run.add_argument("--editor", required=True)
    run.add_argument("--task", required=True)
    run.add_argument("--model", help="registered name, local HF dir, .gguf file or hub id")
    run.add_argument("--data-dir", help="data root (else HARNESS_DATA_DIR, harness.toml, bundled sample)")
    run.add_argument("--output-dir", help="where results.json and samples.jsonl go; reused to resume")
    run.add_argument("--limit", type=int, help="evaluate only the first N records")
    run.add_argument("--seed", type=int)
    run.add_argument(
        "--mode",
        choices=list(EDIT_MODES),
        help="single (default): edit, probe, restore per record; batch: --batch-size records per edit; "
        "sequential / batch-sequential: keep every edit and probe after the last",
    )
    run.add_argument(
        "--batch-size", type=int, help="records per edit call in batch and batch-sequential mode"
    )
    run.add_argument(
        "--probe-every", type=int, help="sequential modes: also score the records edited so far every N edits"
    )
    run.add_argument(
        "--then",
        metavar="TASK,...",
        help="sequential modes: ability tasks measured on the model holding every edit and unedited",
    )
    run.add_argument(
        "--then-limit",
        type=int,
        help="examples per --then task (default -1: each task's documented CPU subset; 0: all)",
    )
    run.add_argument("--config", help="a harness.toml to use instead of ./harness.toml")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a run or editor setting")
    run.set_defaults(handler=_run)

    train = sub.add_parser("train", help="train an editor that learns (serac, mend) into the cache")
    train.add_argument("--editor", required=True)
    train.add_argument("--train-data", help="registered training set (`harness ls training-sets`)")
    train.add_argument("--train-limit", type=int, help="train on the first N examples (0: all)")
    train.add_argument("--model", help="as for `harness run`")
    train.add_argument("--data-dir", help="data root (else HARNESS_DATA_DIR or harness.toml)")
    train.add_argument("--seed", type=int)
    train.add_argument("--config", help="a harness.toml to use instead of ./harness.toml")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override an editor setting")
    train.set_defaults(handler=_train)

    ls = sub.add_parser("ls", help="list editors, tasks or models")
    ls.add_argument("what", choices=["editors", "tasks", "models", "training-sets"])
    ls.add_argument("--data-dir", help="tasks discovered from data files are looked for here")
    ls.add_argument("--config")
    ls.set_defaults(handler=_ls)

    sub.add_parser("plugins", help="print loaded plugins as JSON").set_defaults(handler=_plugins)

    validate = sub.add_parser("validate", help="report every bad record of a task's data")
    validate.add_argument("--task", required=True)
    validate.add_argument("--data-dir")
    validate.add_argument("--config")
    validate.set_defaults(handler=_validate)

    score = sub.add_parser("score", help="score a prediction file of an ability task")
    score.add_argument("--task", required=True)
    score.add_argument("--predictions", required=True, help='JSON lines {"id": ..., "prediction": "..."}')
    score.add_argument("--limit", type=int, default=0, help="the task's first N examples (default: all)")
    score.add_argument("--data-dir")
    score.add_argument("--config")
    score.set_defaults(handler=_score)

    report = sub.add_parser("report", help="print the paper-style table of results.json files")
    report.add_argument("results", nargs="+")
    report.add_argument("--markdown", action="store_true")
    report.set_defaults(handler=_report)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "transformers", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted; finished edits are kept, run the same command to resume", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - one clear line instead of a traceback
        if os.environ.get("HARNESS_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        print("(set HARNESS_DEBUG=1 for a traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
