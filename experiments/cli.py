"""The command line every experiment takes (`parse_args`)."""

import argparse

from experiments.runs import configure_runtime


def parse_args(description, argv=None, models=None, jobs=None, quick_models=None):
    """The flags every experiment takes: --out, --quick, --models when
    `models` (the claim's models) is given, and --jobs when `jobs` is true
    (default: when `models` is given). Configures the runtime. Without
    --models, --quick runs `quick_models` (default: all of `models`)."""
    parser = argparse.ArgumentParser(description=description)
    if models:
        parser.add_argument(
            "--models",
            default=None,
            help="comma-separated subset of " + ", ".join(models) + " (default: all"
            + (f"; with --quick: {','.join(quick_models)}" if quick_models else "") + ")",
        )
    if jobs or (jobs is None and models):
        parser.add_argument("--jobs", type=positive_int, default=1, help=JOBS_HELP)
    parser.add_argument(
        "--out",
        default=None,
        help="results folder (default: docs/results, or runs/experiments_quick with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny grid, 2 steps per epoch, no XLA: checks the pipeline, not the science",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = "runs/experiments_quick" if args.quick else "docs/results"
    if models:
        if args.models is None:
            args.models = ",".join(quick_models if args.quick and quick_models else models)
        args.models = tuple(m for m in args.models.split(",") if m)
        unknown = sorted(set(args.models) - set(models))
        if unknown or not args.models:
            parser.error(f"--models {','.join(unknown) or '(empty)'} is not accepted; accepted: {', '.join(models)}")
    configure_runtime()
    return args


JOBS_HELP = "training processes at a time (default 1; each uses one thread, so up to the core count)"


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1. Received: {text!r}")
    return value
