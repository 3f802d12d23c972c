"""Claim 4 (CLARS Figs. 3-4, Table 1): at a large batch, CLARS without
warmup converges faster in the first epochs than LARS with warmup, and LARS
without warmup at CLARS's eta (0.01) diverges or lags.

    python -m experiments.warmup [--quick] [--out docs/results]

The batch-scaling setting (mlp3, 10 epochs, weight decay 1e-4) at B = 8192
(7 steps per epoch) and B = 16384 (3). As in the paper, LARS and CLARS share
one global LR gamma: the best LARS grid point of `experiments.batch_scaling`
at that batch (CLARS's own best is reported next to it). Five runs, three
seeds each: CLARS (no warmup, eta 0.01); LARS (2-epoch warmup, eta 0.001);
LARS without warmup at eta 0.01 and at eta 0.001; SGD with warmup at its own
best LR. Test top-1 after every epoch.
"""

import dataclasses

import numpy as np

from experiments import batch_scaling, common

NAME = "warmup"
BATCHES = (8192, 16384)
SEEDS = (0, 1, 2)
QUICK = dict(batches=(1024,), seeds=(0,))
RUNS = (
    # (key, label, method, warmup, eta)
    ("clars", "CLARS, no warmup, eta 0.01", "clars", False, 0.01),
    ("lars_warmup", "LARS, warmup, eta 0.001", "lars", True, 0.001),
    ("lars_no_warmup_eta0.01", "LARS, no warmup, eta 0.01", "lars", False, 0.01),
    ("lars_no_warmup_eta0.001", "LARS, no warmup, eta 0.001", "lars", False, 0.001),
    ("sgd_warmup", "SGD+momentum, warmup (own best LR)", "sgd", True, 0.001),
)
COLORS = {"clars": "tab:red", "lars_warmup": "tab:blue", "lars_no_warmup_eta0.01": "tab:purple",
          "lars_no_warmup_eta0.001": "tab:cyan", "sgd_warmup": "tab:gray"}


def run_all(out, quick=False):
    directory = common.claim_dir(out, NAME)
    s = QUICK if quick else dict(batches=BATCHES, seeds=SEEDS)
    scaling = batch_scaling.run_grid(out, quick)  # cached: the tuned LRs
    q = batch_scaling.settings(quick)
    results = dict(model=batch_scaling.MODEL, epochs=q["epochs"], batches={})
    for batch in s["batches"]:
        best = {m: scaling["methods"][m][str(batch)]["best_c"] for m in common.METHODS}
        entry = dict(lars_best_c=best["lars"], clars_best_c=best["clars"], sgd_best_c=best["sgd"], runs={})
        for key, label, method, warmup, eta in RUNS:
            c = best["sgd"] if method == "sgd" else best["lars"]
            curves, finals = [], []
            for seed in s["seeds"]:
                spec = batch_scaling.spec(method, batch, c, seed, q["epochs"], q["max_steps"],
                                          warmup_epochs=batch_scaling.WARMUP_EPOCHS if warmup else 0)
                spec = dataclasses.replace(spec, eta=eta)
                summary = common.run(spec, f"{directory}/runs" if _new(spec) else f"{out}/{batch_scaling.NAME}/runs",
                                     jit_compile=not quick)
                curve = [e["test_top1"] for e in summary["epochs"]]
                curves.append(curve + [None] * (q["epochs"] - len(curve)))
                finals.append(summary["final_test_top1"])
            entry["runs"][key] = dict(label=label, method=method, warmup_epochs=spec.warmup_epochs, eta=eta, c=c,
                                      learning_rate=spec.learning_rate, seeds=list(s["seeds"]),
                                      test_top1_per_epoch=curves, final_test_top1=finals,
                                      diverged=[f is None for f in finals])
        results["batches"][str(batch)] = entry
    common.write_json(f"{directory}/results.json", results)
    return results


def _new(spec):
    """Runs the batch-scaling grid does not have go in this claim's cache."""
    in_grid = spec.eta == batch_scaling.ETAS[spec.method] and spec.warmup_epochs == (
        0 if spec.method == "clars" else batch_scaling.WARMUP_EPOCHS)
    return not in_grid


def plot(results, out):
    plt = common.pyplot()
    directory = common.claim_dir(out, NAME)
    batches = list(results["batches"])
    fig, axes = plt.subplots(1, len(batches), figsize=(6.2 * len(batches), 4.4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        entry = results["batches"][batch]
        for key, run in entry["runs"].items():
            curves = np.array([[np.nan if v is None else v for v in c] for c in run["test_top1_per_epoch"]], float)
            epochs = np.arange(1, curves.shape[1] + 1)
            mean = np.nanmean(np.where(np.isnan(curves), 0.1, curves), axis=0)
            ax.plot(epochs, mean, "-o", ms=3, color=COLORS[key],
                    label=f"{run['label']} (gamma {run['learning_rate']:g})"
                    + (f", diverged {sum(run['diverged'])}/{len(run['diverged'])}" if any(run["diverged"]) else ""))
            ax.fill_between(epochs, np.nanmin(curves, axis=0), np.nanmax(curves, axis=0), color=COLORS[key], alpha=0.15)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test top-1 (mean of seeds; band: min-max)")
        ax.set_title(f"{results['model']}, B = {batch}: LARS and CLARS share gamma = {entry['lars_best_c']} x B/256",
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    common.save(fig, f"{directory}/top1_per_epoch.png")


def main(argv=None):
    args = common.parse_args(__doc__.splitlines()[0], argv)
    plot(run_all(args.out, args.quick), args.out)


if __name__ == "__main__":
    main()
