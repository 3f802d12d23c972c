"""Claim 5 (LARS Table 5): at the largest batch, training longer recovers
the accuracy lost to fewer steps.

    python -m experiments.longer_training [--quick] [--out docs/results]

mlp3 at B = 16384 (3 steps per epoch) for 10, 20 and 40 epochs, each method
at its best LR of the 10-epoch grid of `experiments.batch_scaling` (LR not
re-tuned, as in Table 5; warmup stays 2 epochs), three seeds; the reference
line is each method's best at B = 512 after 10 epochs.
"""

from experiments import batch_scaling, common

NAME = "longer_training"
BATCH = 16384
EPOCH_BUDGETS = (10, 20, 40)
SEEDS = (0, 1, 2)
QUICK = dict(batch=1024, budgets=(2, 3), seeds=(0,))


def run_all(out, quick=False):
    directory = common.claim_dir(out, NAME)
    s = QUICK if quick else dict(batch=BATCH, budgets=EPOCH_BUDGETS, seeds=SEEDS)
    scaling = batch_scaling.run_grid(out, quick)
    q = batch_scaling.settings(quick)
    small = str(q["batches"][0])
    results = dict(model=batch_scaling.MODEL, batch_size=s["batch"], budgets=list(s["budgets"]), methods={})
    for method in common.METHODS:
        c = scaling["methods"][method][str(s["batch"])]["best_c"]
        per_budget = {}
        for epochs in s["budgets"]:
            finals = []
            for seed in s["seeds"]:
                spec = batch_scaling.spec(method, s["batch"], c, seed, epochs, q["max_steps"])
                cache = f"{out}/{batch_scaling.NAME}/runs" if epochs == q["epochs"] else f"{directory}/runs"
                finals.append(common.run(spec, cache, jit_compile=not quick)["final_test_top1"])
            per_budget[str(epochs)] = dict(seeds=list(s["seeds"]), final_test_top1=finals,
                                           steps=spec.steps_per_epoch * epochs, **batch_scaling._spread(finals))
        results["methods"][method] = dict(
            c=c, learning_rate=c * s["batch"] / 256, budgets=per_budget,
            small_batch=dict(batch_size=int(small), epochs=q["epochs"],
                             best_test_top1=scaling["methods"][method][small]["best_test_top1"]),
        )
    common.write_json(f"{directory}/results.json", results)
    return results


def plot(results, out):
    plt = common.pyplot()
    directory = common.claim_dir(out, NAME)
    fig, ax = plt.subplots(figsize=(6.5, 4.3))
    budgets = results["budgets"]
    for method, entry in results["methods"].items():
        color = batch_scaling.COLORS[method]
        means = [entry["budgets"][str(e)]["mean"] or 0.1 for e in budgets]
        low = [m - (entry["budgets"][str(e)]["min"] or 0.1) for m, e in zip(means, budgets)]
        high = [(entry["budgets"][str(e)]["max"] or 0.1) - m for m, e in zip(means, budgets)]
        ax.errorbar(budgets, means, yerr=[low, high], fmt="-o", color=color, capsize=4,
                    label=f"{batch_scaling.LABELS[method]}, B = {results['batch_size']}")
        ref = entry["small_batch"]
        ax.axhline(ref["best_test_top1"], color=color, ls=":", lw=1.2,
                   label=f"{method.upper()} at B = {ref['batch_size']}, {ref['epochs']} epochs")
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(e) for e in budgets])
    ax.set_xlabel("epochs (LR of the 10-epoch grid, not re-tuned)")
    ax.set_ylabel("final test top-1 (3 seeds: mean, min-max)")
    ax.set_title(f"{results['model']}: longer training at B = {results['batch_size']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    common.save(fig, f"{directory}/accuracy_vs_epochs.png")


def main(argv=None):
    args = common.parse_args(__doc__.splitlines()[0], argv)
    plot(run_all(args.out, args.quick), args.out)


if __name__ == "__main__":
    main()
