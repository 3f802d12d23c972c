"""Claim 5 (LARS Table 5): at the largest batch, training longer recovers
the accuracy lost to fewer steps.

    python -m experiments.longer_training [--models mlp3,mlp3_nobn] [--jobs N] [--quick] [--out docs/results]

Each model of `experiments.batch_scaling` at B = 16384 (3 steps per epoch)
for 10, 20 and 40 epochs, each method at its best LR of the 10-epoch grid
(LR not re-tuned, as in Table 5; warmup stays 2 epochs), three seeds; the
reference line is each method's best at B = 512 after 10 epochs.
"""

from experiments import batch_scaling, cli, plots, pool, runs

NAME = "longer_training"
BATCH = 16384
EPOCH_BUDGETS = (10, 20, 40)
SEEDS = (0, 1, 2)
QUICK = dict(batch=1024, budgets=(2, 3), seeds=(0,))
MODELS = ("mlp3", "mlp3_nobn")  # the CNNs' budget left this claim out (docs/results.md)


def run_all(out, quick=False, models=MODELS, jobs=1):
    directory = runs.claim_dir(out, NAME)
    s = QUICK if quick else dict(batch=BATCH, budgets=EPOCH_BUDGETS, seeds=SEEDS)
    scaling = batch_scaling.run_grid(out, quick, models, jobs)
    q = batch_scaling.settings(quick)
    small = str(q["batches"][0])
    plan = [(model, method, scaling["models"][model]["methods"][method][str(s["batch"])]["best_c"], epochs, seed)
            for model in models for method in runs.METHODS for epochs in s["budgets"] for seed in s["seeds"]]
    specs = [batch_scaling.spec(model, method, s["batch"], c, seed, epochs, q["max_steps"])
             for model, method, c, epochs, seed in plan]
    tasks = [(spec, f"{out}/{batch_scaling.NAME}/runs" if spec.epochs == q["epochs"] else f"{directory}/runs", not quick)
             for spec in specs]
    finals = {key: r["final_test_top1"] for key, r in zip(plan, pool.run_many(tasks, jobs))}
    steps = {(key[0], key[3]): spec.steps_per_epoch * spec.epochs for key, spec in zip(plan, specs)}
    measured = {}
    for model in models:
        methods = {}
        for method in runs.METHODS:
            c = scaling["models"][model]["methods"][method][str(s["batch"])]["best_c"]
            per_budget = {}
            for epochs in s["budgets"]:
                tops = [finals[model, method, c, epochs, seed] for seed in s["seeds"]]
                scores = [batch_scaling.CHANCE if t is None else t for t in tops]
                per_budget[str(epochs)] = dict(seeds=list(s["seeds"]), final_test_top1=tops,
                                               diverged=[t is None for t in tops],
                                               steps=steps[model, epochs],
                                               mean=sum(scores) / len(scores), min=min(scores), max=max(scores))
            reference = scaling["models"][model]["methods"][method][small]
            methods[method] = dict(c=c, learning_rate=c * s["batch"] / 256, budgets=per_budget,
                                   small_batch=dict(batch_size=int(small), epochs=q["epochs"],
                                                    best_test_top1=reference["best_test_top1"]))
        measured[model] = dict(batch_size=s["batch"], budgets=list(s["budgets"]), methods=methods)
    return runs.write_models(f"{directory}/results.json", measured, MODELS)


def plot(results, out):
    plt = plots.pyplot()
    directory = runs.claim_dir(out, NAME)
    models = list(results["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.3), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models):
        _panel(ax, model, results["models"][model])
    axes[0][0].set_ylabel("final test top-1 (3 seeds: mean, min-max)")
    fig.tight_layout()
    plots.save(fig, f"{directory}/accuracy_vs_epochs.png")


def _panel(ax, model, result):
    budgets = result["budgets"]
    for method, entry in result["methods"].items():
        color = batch_scaling.COLORS[method]
        cells = [entry["budgets"][str(e)] for e in budgets]
        means = [cell["mean"] for cell in cells]
        ax.errorbar(budgets, means, yerr=[[m - c["min"] for m, c in zip(means, cells)],
                                          [c["max"] - m for m, c in zip(means, cells)]],
                    fmt="-o", color=color, capsize=4, label=f"{batch_scaling.LABELS[method]}, B = {result['batch_size']}")
        ref = entry["small_batch"]
        ax.axhline(ref["best_test_top1"], color=color, ls=":", lw=1.2,
                   label=f"{method.upper()} at B = {ref['batch_size']}, {ref['epochs']} epochs")
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(e) for e in budgets])
    ax.set_xlabel("epochs (LR of the 10-epoch grid, not re-tuned)")
    ax.set_title(f"{batch_scaling.TITLES.get(model, model)}: longer training at B = {result['batch_size']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def main(argv=None):
    args = cli.parse_args(__doc__.splitlines()[0], argv, models=MODELS)
    plot(run_all(args.out, args.quick, args.models, args.jobs), args.out)


if __name__ == "__main__":
    main()
