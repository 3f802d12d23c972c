"""The README's result tables, in Markdown, from the committed results.json
files (so that no number is copied by hand):

    python -m experiments.tables [--out docs/results]
"""

import argparse
import os

from experiments import batch_scaling, models, paired
from keras_lars.train import records

NAMES = {"sgd": "SGD + momentum", "lars": "LARS", "clars": "CLARS"}
EPOCHS_SHOWN = (1, 2, 3, 5)  # and the last


def _k(batch):
    batch = int(batch)
    return f"{batch // 1024}K" if batch >= 1024 else str(batch)


def _cell(mean, low, high, diverged=0, runs=3):
    text = f"{mean:.3f} ({low:.3f}-{high:.3f})"
    return text + (f", {diverged}/{runs} diverged" if diverged else "")


def _row(cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _train_top1(runs_dir, point):
    """Mean and range of the final train top-1 of `point`'s seeds, from their
    run files: with BatchNorm at few steps, test top-1 (BatchNorm's moving
    statistics) can lag what the optimizer reached."""
    finals = []
    for run_id in point["run_ids"]:
        epochs = records.read_json(os.path.join(runs_dir, run_id + ".json"))["epochs"]
        finals.append(epochs[-1]["train_top1"] if epochs else batch_scaling.CHANCE)
    return _cell(sum(finals) / len(finals), min(finals), max(finals))


def _good_lrs(e):
    """The good-LR interval's ratio, ">=" where an end is the grid's own."""
    r = e["good_lr_range"]
    return (">=" if r.get("low_open") or r.get("high_open") else "") + f"{r['ratio']:g}x"


COMPARISON_LABELS = {"lars-sgd": "LARS - SGD", "clars-lars": "CLARS - LARS", "clars-sgd": "CLARS - SGD"}


def batch_scaling_tables(results, runs_dir=None):
    """Per model: test top-1 at the c each method chose on validation, the
    seed-paired differences, the chosen c, the intervals of good LRs, the
    diverged runs, train top-1 and (with BatchNorm) precise-BN test top-1."""
    lines = []
    for model, result in results["models"].items():
        batches = result["batches"]
        lines += [f"{batch_scaling.TITLES.get(model, model)}: test top-1 after {result['epochs']} epochs at the c "
                  "chosen on validation, mean (min-max) over seeds; seed-paired differences of test top-1, mean "
                  "[95% t interval], pairs won; c in gamma = c B/256; interval of good LRs on validation (largest/"
                  f"smallest LR within {batch_scaling.GOOD_LR_TOLERANCE} of the best; >=: an end is the grid's)", "",
                  _row(["global batch"] + [_k(b) for b in batches]), _row(["---"] * (len(batches) + 1))]
        methods = result["methods"]

        def cells(cell):
            return lambda per_batch: [cell(per_batch[str(b)]) if str(b) in per_batch else "-" for b in batches]

        for method, per_batch in methods.items():
            def test(e):
                best = next(p for p in e["points"] if p["best"])
                return _cell(e["best_test_top1"], *e["best_range"], sum(best["diverged"]), len(best["diverged"]))
            lines.append(_row([NAMES[method]] + cells(test)(per_batch)))
        for key, per_batch in result.get("paired", {}).items():
            lines.append(_row([f"{COMPARISON_LABELS[key]} (paired)"] +
                              [paired.text(per_batch[str(b)]) if str(b) in per_batch else "-" for b in batches]))
        rows = (
            ("chosen c (validation top-1)", lambda e: f"{e['best_c']:g} ({e['best_validation_top1']:.3f})"),
            ("good LRs", _good_lrs),
            ("diverged runs", lambda e: f"{sum(sum(p['diverged']) for p in e['points'])}/"
                                        f"{sum(len(p['diverged']) for p in e['points'])}"),
        )
        for label, cell in rows:
            for method, per_batch in methods.items():
                lines.append(_row([f"{NAMES[method]}: {label}"] + cells(cell)(per_batch)))
        if runs_dir is not None:
            for method, per_batch in methods.items():
                lines.append(_row([f"{NAMES[method]}: train top-1 (last epoch, training mode)"] +
                                  cells(lambda e: _train_top1(runs_dir, next(p for p in e["points"] if p["best"])))(
                                      per_batch)))
        if result.get("batch_norm_momentum") is not None:
            for method, per_batch in methods.items():
                lines.append(_row([f"{NAMES[method]}: test top-1, precise BatchNorm statistics"] +
                                  cells(_precise)(per_batch)))
        lines.append("")
    return "\n".join(lines)


def _precise(e):
    best = next(p for p in e["points"] if p["best"])
    values = [batch_scaling.CHANCE if v is None else v for v in best["final_test_top1_precise_bn"]]
    return _cell(sum(values) / len(values), min(values), max(values))


def batch_norm_before_after(before, after, batches=(8192, 16384)):
    """The BatchNorm models' test top-1 at `batches`: before issue 44 (Keras's
    momentum 0.99, c chosen on test) against after (momentum 0.9, c chosen
    on validation; and precise BatchNorm statistics), per method."""
    lines = []
    for model in [m for m in after["models"] if m in models.BATCH_NORM_MODELS and m in before["models"]]:
        old, new = before["models"][model], after["models"][model]
        lines += [f"{batch_scaling.TITLES.get(model, model)}: test top-1 at each method's chosen c, mean (min-max) "
                  "over 3 seeds", "",
                  _row(["method, B", "before: momentum 0.99, chosen on test", "after: momentum 0.9, chosen on "
                        "validation", "after, precise BatchNorm statistics"]), _row(["---"] * 4)]
        for method in new["methods"]:
            for batch in batches:
                if str(batch) not in new["methods"][method] or str(batch) not in old["methods"].get(method, {}):
                    continue
                o, n = old["methods"][method][str(batch)], new["methods"][method][str(batch)]
                lines.append(_row([f"{NAMES[method]}, {_k(batch)}", _cell(o["best_test_top1"], *o["best_range"]),
                                   _cell(n["best_test_top1"], *n["best_range"]), _precise(n)]))
        lines.append("")
    return "\n".join(lines)


def warmup_tables(results):
    lines = []
    for model, result in results["models"].items():
        last = result["epochs"]
        shown = [e for e in EPOCHS_SHOWN if e < last] + [last]
        for batch, entry in result["batches"].items():
            lines += [f"{batch_scaling.TITLES.get(model, model)}, B = {_k(batch)}: test top-1, mean of the seeds "
                      "(a diverged seed counts as 0.1 from then on)", "",
                      _row(["run (gamma)"] + [f"epoch {e}" for e in shown[:-1]] + [f"epoch {last} (range)"]),
                      _row(["---"] * (len(shown) + 1))]
            for run in entry["runs"].values():
                curves = [[batch_scaling.CHANCE if v is None else v for v in c] for c in run["test_top1_per_epoch"]]
                means = [sum(c[e - 1] for c in curves) / len(curves) for e in shown]
                finals = [c[-1] for c in curves]
                final = _cell(means[-1], min(finals), max(finals), sum(run["diverged"]), len(run["diverged"]))
                lines.append(_row([f"{run['label']} ({run['learning_rate']:g})"] + [f"{m:.3f}" for m in means[:-1]] + [final]))
            for key, per_epoch in entry.get("paired", {}).items():
                a, b = (entry["runs"][k]["label"] for k in key.split("-", 1))
                cells = [paired.text(per_epoch[str(e)]) if str(e) in per_epoch else "" for e in shown]
                lines.append(_row([f"{a} minus {b} (paired)"] + cells))
            lines.append("")
    return "\n".join(lines)


def longer_training_tables(results):
    lines = []
    for model, result in results["models"].items():
        budgets = result["budgets"]
        small = next(iter(result["methods"].values()))["small_batch"]
        lines += [f"{batch_scaling.TITLES.get(model, model)}, B = {_k(result['batch_size'])}: final test top-1, "
                  "mean (min-max) over seeds", "",
                  _row(["method"] + [f"{e} epochs" for e in budgets] + [f"B = {small['batch_size']}, {small['epochs']} epochs"]),
                  _row(["---"] * (len(budgets) + 2))]
        for method, entry in result["methods"].items():
            cells = [entry["budgets"][str(e)] for e in budgets]
            lines.append(_row([NAMES[method]] + [_cell(c["mean"], c["min"], c["max"], sum(c["diverged"]), len(c["diverged"]))
                                                 for c in cells] + [f"{entry['small_batch']['best_test_top1']:.3f}"]))
        lines.append("")
    return "\n".join(lines)


TABLES = {"batch_scaling": batch_scaling_tables, "warmup": warmup_tables, "longer_training": longer_training_tables}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/results")
    args = parser.parse_args(argv)
    for name, table in TABLES.items():
        path = os.path.join(args.out, name, "results.json")
        results = records.read_json(path) if os.path.exists(path) else {}
        if name == "batch_scaling" and "models" in results:
            print(f"## {name}\n\n{table(results, os.path.join(args.out, name, 'runs'))}")
            before = os.path.join(args.out, name, "results_before_issue44.json")
            if os.path.exists(before):
                print(f"## BatchNorm before and after\n\n{batch_norm_before_after(records.read_json(before), results)}")
        elif "models" in results:
            print(f"## {name}\n\n{table(results)}")
        else:
            print(f"## {name}\n\n(no results in this layout: rerun python -m experiments.{name})\n")


if __name__ == "__main__":
    main()
