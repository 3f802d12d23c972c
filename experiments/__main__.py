"""Runs every claim, cheapest evidence first:

    python -m experiments [--quick] [--out docs/results] [--only NAME,NAME] [--jobs N]

Each run is cached under OUT/<claim>/runs/, so an interrupted suite resumes
where it stopped, and a rerun with every result present only redraws the
plots. Writes OUT/suite.json (per claim: wall time of this invocation and the
summed training time of its runs).
"""

import argparse
import glob
import json
import os
import time

CLAIMS = ("batch_scaling", "bias_exclusion", "warmup", "longer_training", "gradient_variance", "trust_ratios", "self_supervised")
PARALLEL = ("batch_scaling", "bias_exclusion", "warmup", "longer_training", "self_supervised")  # the claims that take --jobs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default=",".join(CLAIMS), help="comma-separated subset of " + ", ".join(CLAIMS))
    from experiments import cli, runs
    from keras_lars.train import records

    parser.add_argument("--jobs", type=cli.positive_int, default=1, help=cli.JOBS_HELP + f"; for {', '.join(PARALLEL)}")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(CLAIMS))
    if unknown:
        parser.error(f"unknown claim(s) {unknown}; accepted: {', '.join(CLAIMS)}")
    import importlib

    out = args.out or ("runs/experiments_quick" if args.quick else "docs/results")
    suite = {}
    for name in names:
        start = time.time()
        module = importlib.import_module(f"experiments.{name}")
        jobs = ["--jobs", str(args.jobs)] if name in PARALLEL else []
        module.main(["--out", out] + (["--quick"] if args.quick else []) + jobs)
        files = glob.glob(os.path.join(out, name, "runs", "*.json"))
        trained = sum(json.load(open(p)).get("seconds", 0) for p in files)
        suite[name] = dict(wall_seconds=round(time.time() - start, 1), runs=len(files), training_seconds=round(trained, 1))
        print(f"{name}: {suite[name]}")
    records.write_json(os.path.join(out, "suite.json"), suite, indent=runs.RUN_FILE_INDENT)


if __name__ == "__main__":
    main()
