"""Command line: harness run | merge | train | ls | plugins | validate | score | report | compare |
leaderboard | new."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from harness import exit_codes, plugins
from harness.api import is_ability
from harness.config import EDIT_MODES, RunConfig, field_names
from harness.results import OutputLocked
from harness.runtime import DEVICE_MAPS, DTYPE_CHOICES
from harness.training import TrainingRequired

# errors that mean the command was used wrongly (its message names the option, setting, name or file)
USAGE_ERRORS = (ValueError, plugins.UnknownName, FileNotFoundError, TrainingRequired, OutputLocked)
RUN_SETTINGS = frozenset(field_names(RunConfig))


def _run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The options that are run settings: each option's dest is its ``RunConfig`` name (None: unset)."""
    return {name: value for name, value in vars(args).items() if name in RUN_SETTINGS}


def _run(args) -> int:
    from harness.config import parse_overrides
    from harness.report import table
    from harness.runner import run

    results = run(
        args.editor,
        args.task,
        overrides=parse_overrides(args.set or []),
        config_file=args.config,
        **_run_settings(args),
    )
    print(table(results))
    skipped = results.get("subject_alignment", {}).get("skipped", [])
    if skipped:
        print(f"skipped {len(skipped)} record(s) whose subject could not be aligned (subject_fallback=skip)")
    print(f"results: {Path(results['output_dir']) / 'results.json'}")
    return 0


def _merge(args) -> int:
    from harness.report import table
    from harness.shards import merge

    results = merge(Path(args.output_dir), [Path(p) for p in args.shards] or None)
    print(table(results))
    print(f"results: {Path(results['output_dir']) / 'results.json'}")
    return 0


def _leaderboard(args) -> int:
    import tempfile

    from harness import leaderboard
    from harness.compare import render

    worst = 0
    for spec in map(leaderboard.LeaderboardSpec.load, args.specs):
        if args.readme_only:
            print(f"written: {leaderboard.write_readme(spec)}")
        elif args.check:
            scratch = Path(args.scratch or tempfile.mkdtemp(prefix="leaderboard-check-"))
            for (task, editor), comparison in leaderboard.check(spec, args.data_dir, scratch).items():
                print(f"== {editor} on {task}\n{render(comparison)}")
                worst = max(worst, comparison.exit_code)
        else:
            for path in leaderboard.build(spec, args.data_dir):
                print(f"written: {path}")
    return worst


def _train(args) -> int:
    from harness.config import parse_overrides
    from harness.runner import train

    summary = train(
        args.editor,
        train_data=args.train_data,
        train_limit=args.train_limit,
        overrides=parse_overrides(args.set or []),
        config_file=args.config,
        **_run_settings(args),
    )
    shown = {k: v for k, v in summary.items() if k not in ("model", "hparams")}
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    return 0


def _ls(args) -> int:
    if args.what == "editors":
        for name, cls in sorted(plugins.editors().items()):
            summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            print(f"{name:16} {summary}  [modes: {', '.join(cls.capabilities.modes)}]")
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


def _new(args) -> int:
    from harness.scaffold import scaffold

    written = scaffold(args.kind, args.name, Path(args.dir) if args.dir else None)
    root = Path(os.path.commonpath(written))
    for path in written:
        print(f"created: {path}")
    listing = "editors" if args.kind == "editor" else "tasks"
    print(f"next: pip install -e '{root}[test]' && harness ls {listing} && pytest {root}")
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
            return exit_codes.CHECK_FAILED
        print(f"{task.name}: {len(examples)} examples after the demonstrations, 0 problem(s)")
        return 0
    raw = task.load_raw(data_dir)
    issues = task.validate(raw)
    for issue in issues:
        print(issue)
    print(f"{task.name}: {len(raw)} records, {len(issues)} problem(s)")
    return exit_codes.CHECK_FAILED if issues else exit_codes.OK


def _score(args) -> int:
    from harness import protocols
    from harness.abilities import score_prediction_file
    from harness.config import data_dir_setting

    data_dir = data_dir_setting(args.data_dir, args.config)
    task = plugins.lookup("task", args.task, plugins.tasks(data_dir))
    if not is_ability(task):
        raise ValueError(f"task {args.task}: only ability tasks score prediction files")
    task = protocols.select(task, args.protocol or "")
    scores = score_prediction_file(task, data_dir, Path(args.predictions), args.limit)
    result = {"task": task.name, "protocol": protocols.name_of(task), "metric": task.metric, "scores": scores}
    print(json.dumps(result, indent=2))
    return 0


def _report(args) -> int:
    from harness.report import load_runs, render

    runs = load_runs(args.results)
    print(render(runs, "markdown" if args.markdown else args.format))
    if args.charts:
        from harness.charts import write_charts

        for path in write_charts(runs, args.charts, args.chart_format):
            print(f"chart: {path}", file=sys.stderr)
    if args.html:
        from harness.html_report import write_html

        print(f"html: {write_html(runs, args.html)}", file=sys.stderr)
    return 0


def _compare(args) -> int:
    from harness.compare import Tolerance, compare, find_samples, load_results, render

    tolerances = [Tolerance.parse(text) for text in args.tolerance or []]
    current, baseline = load_results(args.results), load_results(args.baseline)
    samples = (find_samples(current, args.results), find_samples(baseline, args.baseline))
    comparison = compare(
        current,
        baseline,
        tolerances,
        args.allow_config_mismatch or [],
        stderr_factor=args.tolerance_from_stderr,
        samples=samples,
    )
    print(render(comparison, show_all=args.all, markdown=args.markdown))
    return comparison.exit_code


def _stderr_factor(text: str) -> float:
    """``--tolerance-from-stderr``: a finite number >= 0, else an error naming the option."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number >= 0")
    return value


def _placement_arguments(command: argparse.ArgumentParser, device_map: bool) -> None:
    command.add_argument(
        "--device",
        help="auto (default: a GPU when there is one; cuda:LOCAL_RANK under torchrun), cpu, "
        "cuda, cuda:N, mps",
    )
    command.add_argument(
        "--dtype", choices=list(DTYPE_CHOICES), help="the weights' dtype (auto: the checkpoint's own)"
    )
    if device_map:
        command.add_argument(
            "--device-map",
            choices=[m for m in DEVICE_MAPS if m],
            help="spread a model too big for one GPU over all visible GPUs (accelerate's placement)",
        )


def _settings_arguments(command: argparse.ArgumentParser, set_help: str) -> None:
    command.add_argument("--config", help="a harness.toml to use instead of ./harness.toml")
    command.add_argument("--set", action="append", metavar="KEY=VALUE", help=set_help)


def _add_run(sub) -> None:
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
        "--ability-limit",
        dest="ability_limit",
        metavar="N",
        type=int,
        help="examples per --then task (default -1: each task's documented CPU subset; 0: all)",
    )
    run.add_argument(
        "--shard",
        metavar="I/N",
        help="edit only shard I (from 0) of N, into <output dir>/shard-I-of-N; `harness merge` joins them "
        "(automatic under torchrun / accelerate launch)",
    )
    _placement_arguments(run, device_map=True)
    _settings_arguments(run, "override a run or editor setting")
    run.set_defaults(handler=_run)


def _add_leaderboard(sub) -> None:
    board = sub.add_parser("leaderboard", help="run, store and tabulate every editor x task of a spec")
    board.add_argument("specs", nargs="+", help="leaderboard TOML files (e.g. leaderboard/leaderboard.toml)")
    board.add_argument("--data-dir", help="data root (else HARNESS_DATA_DIR or harness.toml)")
    board.add_argument(
        "--check", action="store_true", help="run again and compare with the stored files (exit 1: moved)"
    )
    board.add_argument("--scratch", help="with --check: where the fresh runs go (default: a temp dir)")
    board.add_argument("--readme-only", action="store_true", help="rewrite README.md from the stored files")
    board.set_defaults(handler=_leaderboard)


def _add_merge(sub) -> None:
    merge = sub.add_parser("merge", help="merge the finished shards of a run into one result")
    merge.add_argument("output_dir", help="the run's output directory (holding shard-I-of-N folders)")
    merge.add_argument("shards", nargs="*", help="shard folders (default: every shard-*-of-* in output_dir)")
    merge.set_defaults(handler=_merge)


def _add_train(sub) -> None:
    train = sub.add_parser("train", help="train an editor that learns (serac, mend) into the cache")
    train.add_argument("--editor", required=True)
    train.add_argument("--train-data", help="registered training set (`harness ls training-sets`)")
    train.add_argument("--train-limit", type=int, help="train on the first N examples (0: all)")
    train.add_argument("--model", help="as for `harness run`")
    train.add_argument("--data-dir", help="data root (else HARNESS_DATA_DIR or harness.toml)")
    train.add_argument("--seed", type=int)
    _placement_arguments(train, device_map=False)
    _settings_arguments(train, "override an editor setting")
    train.set_defaults(handler=_train)


def _add_ls(sub) -> None:
    ls = sub.add_parser("ls", help="list editors, tasks or models")
    ls.add_argument("what", choices=["editors", "tasks", "models", "training-sets"])
    ls.add_argument("--data-dir", help="tasks discovered from data files are looked for here")
    ls.add_argument("--config")
    ls.set_defaults(handler=_ls)


def _add_plugins(sub) -> None:
    sub.add_parser("plugins", help="print loaded plugins as JSON").set_defaults(handler=_plugins)


def _add_new(sub) -> None:
    new = sub.add_parser("new", help="write a new editor or task plugin package (kedit-NAME) to start from")
    new.add_argument("kind", choices=["editor", "task"])
    new.add_argument("name", metavar="NAME", help="the plugin's name: lowercase words joined by - or _")
    new.add_argument("--dir", help="the package directory to create (default ./kedit-NAME): new or empty")
    new.set_defaults(handler=_new)


def _add_validate(sub) -> None:
    validate = sub.add_parser("validate", help="report every bad record of a task's data")
    validate.add_argument("--task", required=True)
    validate.add_argument("--data-dir")
    validate.add_argument("--config")
    validate.set_defaults(handler=_validate)


def _add_score(sub) -> None:
    score = sub.add_parser("score", help="score a prediction file of an ability task")
    score.add_argument("--task", required=True)
    score.add_argument("--predictions", required=True, help='JSON lines {"id": ..., "prediction": "..."}')
    score.add_argument("--limit", type=int, default=0, help="the task's first N examples (default: all)")
    score.add_argument("--protocol", help="the scoring profile to score under (default: the task's default)")
    score.add_argument("--data-dir")
    score.add_argument("--config")
    score.set_defaults(handler=_score)


def _add_report(sub) -> None:
    report = sub.add_parser("report", help="tables, charts and an HTML page of results.json files")
    report.add_argument("results", nargs="+", help="results.json files or folders searched for them")
    report.add_argument("--format", choices=["terminal", "markdown", "csv", "latex"], default="terminal")
    report.add_argument("--markdown", action="store_true", help="the same as --format markdown")
    report.add_argument("--charts", metavar="DIR", help="also write radar, gap and decay charts into DIR")
    report.add_argument("--chart-format", choices=["png", "svg"], default="png")
    report.add_argument("--html", metavar="OUT.html", help="also write one self-contained HTML report")
    report.set_defaults(handler=_report)


def _add_compare(sub) -> None:
    from harness.compare import PATTERN_HELP, REFUSAL_FIELDS

    compare = sub.add_parser(
        "compare",
        help="compare a results.json with a baseline one, metric by metric",
        description=f"Exit code {exit_codes.OK}: every metric within tolerance; {exit_codes.CHECK_FAILED}: "
        f"a metric moved beyond it, is missing or new; {exit_codes.NOT_COMPARABLE}: the runs are not "
        "comparable (differing model, data, templates, task, samples, scoring or editing settings; each "
        f"is named); {exit_codes.USAGE}: an input is not a results.json or an option is wrong.",
    )
    compare.add_argument("results", help="results.json (or the run directory holding it)")
    compare.add_argument("--baseline", required=True, help="the results.json to compare against")
    compare.add_argument("--tolerance", action="append", metavar="PATTERN=ABS", help=PATTERN_HELP)
    compare.add_argument(
        "--tolerance-from-stderr",
        type=_stderr_factor,
        default=0.0,
        metavar="K",
        help="let each metric move K times the baseline's stored standard error of it (never less than its "
        "--tolerance); metrics the baseline has no stderr for keep their --tolerance",
    )
    compare.add_argument(
        "--allow-config-mismatch",
        action="append",
        metavar="FIELD",
        choices=list(REFUSAL_FIELDS),
        help="compare although FIELD differs (noted instead of refused): %(choices)s",
    )
    compare.add_argument("--all", action="store_true", help="print every metric, not only those not OK")
    compare.add_argument("--markdown", action="store_true")
    compare.set_defaults(handler=_compare)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="harness",
        description="Evaluate knowledge editors on editing tasks.",
        epilog=exit_codes.HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_leaderboard(sub)
    _add_merge(sub)
    _add_train(sub)
    _add_ls(sub)
    _add_plugins(sub)
    _add_new(sub)
    _add_validate(sub)
    _add_score(sub)
    _add_report(sub)
    _add_compare(sub)
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
        return exit_codes.INTERRUPTED
    except Exception as error:  # noqa: BLE001 - one clear line instead of a traceback
        if os.environ.get("HARNESS_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        print("(set HARNESS_DEBUG=1 for a traceback)", file=sys.stderr)
        return exit_codes.USAGE if isinstance(error, USAGE_ERRORS) else exit_codes.FAILED


if __name__ == "__main__":
    sys.exit(main())
