"""Retrains committed runs from their specs and compares their numbers
exactly: test, validation and train top-1 and train loss after every
epoch, the final and best test top-1, the final top-1s under precise
BatchNorm statistics, divergence (for `experiments.self_supervised`'s runs:
the pretraining loss per epoch, the probe's and the supervised model's
test top-1, divergence).

    python -m experiments.reproduce RUN.json [RUN.json ...]

Exit status 0 when every run reproduces, 1 when one does not: its line
gives the differing numbers and says whether the software, the runtime or
the machine differs from the run file's "environment" record, or that they
match. Runs of the pinned runtime (`experiments.runtime`) are bit-identical
on machines with AVX2 and the recorded CPU model, for the recorded software
versions.
"""

import argparse
import sys
import tempfile

from experiments import runs, runtime
from keras_lars.train import records

NUMBERS = ("final_test_top1", "best_test_top1", "diverged", "final_validation_top1",
           "final_validation_top1_precise_bn", "final_test_top1_precise_bn")
PER_EPOCH = ("epoch", "train_loss", "train_top1", "test_top1", "validation_top1", "validation_top1_precise_bn",
             "test_top1_precise_bn")
# experiments.self_supervised's runs: the pretraining loss per epoch and the probe.
SELF_SUPERVISED_NUMBERS = ("loss", "probe_test_top1", "supervised_test_top1", "diverged")


def differences(committed, rerun):
    """The (name, committed, rerun) triples in which two run summaries differ."""
    if "kind" in committed.get("spec", {}):
        return [(key, committed.get(key), rerun.get(key)) for key in SELF_SUPERVISED_NUMBERS
                if committed.get(key) != rerun.get(key)]
    found = [(key, committed.get(key), rerun.get(key)) for key in NUMBERS if committed.get(key) != rerun.get(key)]
    if len(committed["epochs"]) != len(rerun["epochs"]):
        found.append(("epochs", len(committed["epochs"]), len(rerun["epochs"])))
    for a, b in zip(committed["epochs"], rerun["epochs"]):
        found += [(f"epoch {a['epoch']} {key}", a.get(key), b.get(key)) for key in PER_EPOCH if a.get(key) != b.get(key)]
    return found


def reproduce(path, log=print):
    """Retrains the run of `path` in a temporary folder; returns the
    differences (empty when it reproduced)."""
    committed = records.read_json(path)
    if "kind" in committed["spec"]:
        from experiments import self_supervised

        spec = self_supervised.Spec(**committed["spec"])
        train = self_supervised.train
    else:
        spec = runs.RunSpec(**committed["spec"])
        train = lambda spec: runs.run(spec, cache, log=lambda *_: None)  # noqa: E731
    if spec.run_id() != committed["run_id"]:
        raise ValueError(f"{path}: its spec gives run id {spec.run_id()!r}, not {committed['run_id']!r}")
    with tempfile.TemporaryDirectory() as cache:
        rerun = train(spec)
    found = differences(committed, rerun)
    if not found:
        log(f"{committed['run_id']}: reproduced exactly")
    else:
        why = runtime.reproducible_on_this_machine(committed.get("environment", {}))
        why = why or "the software, runtime and machine match the record: a real difference"
        log(f"{committed['run_id']}: {len(found)} differences ({why}): {found[:6]}")
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run files (docs/results/CLAIM/runs/*.json)")
    args = parser.parse_args(argv)
    runs.configure_runtime()
    failed = [path for path in args.runs if reproduce(path)]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
