"""Claim 4 (CLARS Figs. 3-4, Table 1): at a large batch, CLARS without
warmup converges faster in the first epochs than LARS with warmup, and LARS
without warmup at CLARS's eta (0.01) diverges or lags.

    python -m experiments.warmup [--models mlp3,mlp3_nobn] [--jobs N] [--quick] [--out docs/results]

The batch-scaling setting (10 epochs, weight decay 1e-4), with and without
BatchNorm, at B = 8192 (7 steps per epoch) and B = 16384 (3). As in the
paper, LARS and CLARS share one global LR gamma: the best LARS grid point of
`experiments.batch_scaling` at that batch (CLARS's own best is reported next
to it). Five runs, three seeds each: CLARS (no warmup, eta 0.01); LARS
(2-epoch warmup, eta 0.001); LARS without warmup at eta 0.01 and at eta
0.001; SGD with warmup at its own best LR. Test top-1 after every epoch.
"""

import dataclasses

import numpy as np

from experiments import batch_scaling, cli, paired, plots, pool, runs

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


def _specs(model, batch, best, s, q):
    """[(key, spec)] of one (model, batch), every run and seed."""
    found = []
    for key, _, method, warmup, eta in RUNS:
        c = best["sgd"] if method == "sgd" else best["lars"]
        for seed in s["seeds"]:
            spec = batch_scaling.spec(model, method, batch, c, seed, q["epochs"], q["max_steps"],
                                      warmup_epochs=batch_scaling.WARMUP_EPOCHS if warmup else 0)
            found.append((key, dataclasses.replace(spec, eta=eta)))
    return found


def run_all(out, quick=False, models=batch_scaling.MODELS, jobs=1):
    directory = runs.claim_dir(out, NAME)
    s = QUICK if quick else dict(batches=BATCHES, seeds=SEEDS)
    scaling = batch_scaling.run_grid(out, quick, models, jobs)  # cached: the tuned LRs
    q = batch_scaling.settings(quick)
    grid_cache = f"{out}/{batch_scaling.NAME}/runs"
    plan = {}
    for model in models:
        for batch in s["batches"]:
            best = {m: scaling["models"][model]["methods"][m][str(batch)]["best_c"] for m in runs.METHODS}
            plan[model, batch] = best, _specs(model, batch, best, s, q)
    tasks = [(spec, f"{directory}/runs" if _new(spec) else grid_cache, not quick)
             for _, specs in plan.values() for _, spec in specs]
    summaries = iter(pool.run_many(tasks, jobs))
    measured = {}
    for (model, batch), (best, specs) in plan.items():
        entry = dict(lars_best_c=best["lars"], clars_best_c=best["clars"], sgd_best_c=best["sgd"], runs={})
        for key, label, method, _, eta in RUNS:
            done = [(spec, next(summaries)) for k, spec in specs if k == key]
            curves = [[e["test_top1"] for e in r["epochs"]] for _, r in done]
            spec = done[0][0]
            validation = [[e.get("validation_top1") for e in r["epochs"]] for _, r in done]
            entry["runs"][key] = dict(
                label=label, method=method, warmup_epochs=spec.warmup_epochs, eta=eta,
                c=spec.learning_rate * 256 / batch, learning_rate=spec.learning_rate, seeds=list(s["seeds"]),
                test_top1_per_epoch=[c + [None] * (q["epochs"] - len(c)) for c in curves],
                validation_top1_per_epoch=[c + [None] * (q["epochs"] - len(c)) for c in validation],
                final_test_top1=[r["final_test_top1"] for _, r in done],
                final_test_top1_precise_bn=[r.get("final_test_top1_precise_bn") for _, r in done],
                diverged=[r["diverged"] for _, r in done], run_ids=[r["run_id"] for _, r in done])
        entry["paired"] = paired_differences(entry["runs"], q["epochs"])
        measured.setdefault(model, dict(epochs=q["epochs"], batches={}))["batches"][str(batch)] = entry
    return runs.write_models(f"{directory}/results.json", measured, batch_scaling.MODELS)


# Claim 4's seed-paired comparisons (a - b), at epoch 1 (the early lead) and at the end.
COMPARISONS = (("clars", "lars_warmup"), ("clars", "lars_no_warmup_eta0.001"), ("lars_no_warmup_eta0.01", "lars_warmup"))


def paired_differences(entries, epochs):
    """{"clars-lars_warmup": {"1": difference, "<epochs>": difference}, ...}:
    test top-1 after epoch 1 and after the last, paired by seed (a diverged
    seed counting as chance from the epoch it diverged on)."""
    found = {}
    for a, b in COMPARISONS:
        for epoch in (1, epochs):
            scores = [[batch_scaling.CHANCE if c[epoch - 1] is None else c[epoch - 1]
                       for c in entries[k]["test_top1_per_epoch"]] for k in (a, b)]
            found.setdefault(f"{a}-{b}", {})[str(epoch)] = paired.paired_difference(
                scores[0], scores[1], entries[a]["seeds"], entries[b]["seeds"])
    return found


def _new(spec):
    """Runs the batch-scaling grid does not have go in this claim's cache."""
    in_grid = spec.eta == batch_scaling.ETAS[spec.method] and spec.warmup_epochs == (
        0 if spec.method == "clars" else batch_scaling.WARMUP_EPOCHS)
    return not in_grid


def plot(results, out):
    plt = plots.pyplot()
    directory = runs.claim_dir(out, NAME)
    models = list(results["models"])
    batches = list(results["models"][models[0]]["batches"])
    fig, axes = plt.subplots(len(models), len(batches), figsize=(6.2 * len(batches), 4.4 * len(models)),
                             squeeze=False)
    for row, model in zip(axes, models):
        for ax, batch in zip(row, batches):
            _panel(ax, model, batch, results["models"][model]["batches"][batch])
    fig.tight_layout()
    plots.save(fig, f"{directory}/top1_per_epoch.png")


def _panel(ax, model, batch, entry):
    for key, run in entry["runs"].items():
        curves = np.array([[np.nan if v is None else v for v in c] for c in run["test_top1_per_epoch"]], float)
        epochs = np.arange(1, curves.shape[1] + 1)
        # A diverged seed counts as chance from the epoch it diverged on.
        curves = np.where(np.isnan(curves), batch_scaling.CHANCE, curves)
        ax.plot(epochs, curves.mean(axis=0), "-o", ms=3, color=COLORS[key],
                label=f"{run['label']} (gamma {run['learning_rate']:g})"
                + (f", diverged {sum(run['diverged'])}/{len(run['diverged'])}" if any(run["diverged"]) else ""))
        ax.fill_between(epochs, curves.min(axis=0), curves.max(axis=0), color=COLORS[key], alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (mean of seeds; band: min-max)")
    ax.set_title(f"{batch_scaling.TITLES.get(model, model)}, B = {batch}:\nLARS and CLARS share "
                 f"gamma = {entry['lars_best_c']:g} x B/256", fontsize=9)
    ax.grid(alpha=0.3)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower right")


def main(argv=None):
    args = cli.parse_args(__doc__.splitlines()[0], argv, models=batch_scaling.MODELS,
                             quick_models=batch_scaling.QUICK_MODELS)
    plot(run_all(args.out, args.quick, args.models, args.jobs), args.out)


if __name__ == "__main__":
    main()
