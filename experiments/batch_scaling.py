"""Claim 2 (LARS Tables 1, 3, 4 and Fig. 4; CLARS Fig. 1): test accuracy
against the global batch at a fixed epoch budget, each method's LR tuned on
its own grid at every batch.

    python -m experiments.batch_scaling [--quick] [--out docs/results]

Model: mlp3 (BatchNorm MLP) on Fashion-MNIST, 10 epochs: the only model for
which 3 methods x 6 batches x 5+ LRs (about 100 runs) fit this machine's
budget (ResNet-8 trains at ~650-1,300 img/s here, mlp3 at 15,000-45,000).
The peak LR is gamma = c * B / 256 (linear scaling, Goyal et al.; the CLARS
paper's gamma_scale for LARS and CLARS too), c on a grid of 5 points a factor
2 apart, the same 5 for LARS and CLARS and a grid of equal width for SGD.
Same schedule shape (warmup then polynomial decay, power 2), weight decay,
momentum and data order for all; CLARS has no warmup (it replaces it).
Where the best point of a (method, batch) lies on an edge of the grid, the
grid is extended by factor-2 steps beyond that edge until the best is
interior (at most 3 steps; the same rule for every method). The best c per
(method, batch) is picked by final test top-1 (there is no separate
validation split, as in the papers), and the best runs at the smallest and
largest batch are repeated with seeds 1 and 2.
"""


import numpy as np

from experiments import common

NAME = "batch_scaling"
MODEL = "mlp3"
EPOCHS = 10
WARMUP_EPOCHS = 2
WEIGHT_DECAY = 1e-4
BATCHES = (512, 1024, 2048, 4096, 8192, 16384)
# c in gamma = c * B / 256.
GRIDS = {
    "sgd": (0.025, 0.05, 0.1, 0.2, 0.4),
    "lars": (0.1, 0.2, 0.4, 0.8, 1.6),
    "clars": (0.1, 0.2, 0.4, 0.8, 1.6),
}
ETAS = {"sgd": 0.001, "lars": 0.001, "clars": 0.01}
SEEDS = (0, 1, 2)
MAX_EXTENSIONS = 3
GOOD_LR_TOLERANCE = 0.02  # top-1, absolute
FLOOR = 0.5  # the accuracy plot's lower limit
LABELS = {"sgd": "SGD+momentum (warmup)", "lars": "LARS (warmup, eta 0.001)", "clars": "CLARS (no warmup, eta 0.01)"}
COLORS = {"sgd": "tab:gray", "lars": "tab:blue", "clars": "tab:red"}

QUICK = dict(batches=(256, 1024), grids={m: g[2:3] for m, g in GRIDS.items()}, seeds=(0, 1), max_steps=2, epochs=2,
             max_extensions=0)


def spec(method, batch, c, seed=0, epochs=EPOCHS, max_steps=0, warmup_epochs=None):
    """The run for (method, batch, grid point c): gamma = c * batch / 256."""
    if warmup_epochs is None:
        warmup_epochs = 0 if method == "clars" else WARMUP_EPOCHS
    return common.RunSpec(
        method=method,
        batch_size=batch,
        learning_rate=c * batch / 256,
        epochs=epochs,
        warmup_epochs=warmup_epochs,
        model=MODEL,
        eta=ETAS[method],
        weight_decay=WEIGHT_DECAY,
        seed=seed,
        max_steps=max_steps,
    )


def settings(quick):
    if quick:
        return QUICK
    return dict(batches=BATCHES, grids=GRIDS, seeds=SEEDS, max_steps=0, epochs=EPOCHS)


def _tune(method, batch, s, cache, jit):
    """The grid actually run for (method, batch): the base grid, extended by a
    factor-2 step beyond whichever edge holds the best point, until the best
    is interior (at most `MAX_EXTENSIONS` steps). The same rule for every
    method, so that none is tuned more than another."""
    grid = list(s["grids"][method])
    run = lambda c: common.run(spec(method, batch, c, 0, s["epochs"], s["max_steps"]), cache, jit_compile=jit)  # noqa: E731
    scores = {c: _score(run(c)) for c in grid}
    for _ in range(s.get("max_extensions", MAX_EXTENSIONS)):
        best = max(grid, key=lambda c: scores[c])
        if best == grid[0]:
            grid.insert(0, grid[0] / 2)
            scores[grid[0]] = _score(run(grid[0]))
        elif best == grid[-1]:
            grid.append(grid[-1] * 2)
            scores[grid[-1]] = _score(run(grid[-1]))
        else:
            break
    return grid


def good_lr_range(points, tolerance=GOOD_LR_TOLERANCE):
    """LARS Fig. 4's "interval of good LRs": the largest and smallest LR of
    the contiguous run of grid points around the best whose final top-1 is
    within `tolerance` of the best, and their ratio."""
    ordered = sorted(points, key=lambda p: p["learning_rate"])
    scores = [-1.0 if p["final_test_top1"] is None else p["final_test_top1"] for p in ordered]
    best = max(range(len(ordered)), key=lambda i: scores[i])
    low = high = best
    while low > 0 and scores[low - 1] >= scores[best] - tolerance:
        low -= 1
    while high < len(ordered) - 1 and scores[high + 1] >= scores[best] - tolerance:
        high += 1
    lo, hi = ordered[low]["learning_rate"], ordered[high]["learning_rate"]
    return dict(tolerance=tolerance, low=lo, high=hi, ratio=hi / lo)


def _score(summary):
    top1 = summary["final_test_top1"]
    return -1.0 if top1 is None else top1


def run_grid(out, quick=False, methods=common.METHODS):
    """Runs (or reads) every grid point and the seed repeats; returns the
    results dict written to results.json."""
    s = settings(quick)
    directory = common.claim_dir(out, NAME)
    cache = f"{directory}/runs"
    jit = not quick
    results = dict(
        model=MODEL, epochs=s["epochs"], warmup_epochs=WARMUP_EPOCHS, weight_decay=WEIGHT_DECAY,
        base_grids={m: list(s["grids"][m]) for m in methods}, max_extensions=s.get("max_extensions", MAX_EXTENSIONS), etas={m: ETAS[m] for m in methods},
        batches=list(s["batches"]), methods={},
    )
    # Extremes first, so that a suite stopped early already spans the range.
    order = sorted(s["batches"], key=lambda b: (b not in (s["batches"][0], s["batches"][-1]), b))
    grids = {}
    for batch in order:
        for method in methods:
            grids[method, batch] = _tune(method, batch, s, cache, jit)
    for method in methods:
        per_batch = {}
        for batch in s["batches"]:
            points = []
            for c in grids[method, batch]:
                summary = common.run(spec(method, batch, c, 0, s["epochs"], s["max_steps"]), cache, jit_compile=jit)
                points.append(dict(c=c, learning_rate=summary["spec"]["learning_rate"], final_test_top1=summary["final_test_top1"],
                                   diverged=summary["diverged"], seconds=summary["seconds"], run_id=summary["run_id"]))
            best = max(points, key=_score)
            per_batch[str(batch)] = dict(points=points, best_c=best["c"], best_test_top1=best["final_test_top1"],
                                         extended=len(points) > len(s["grids"][method]),
                                         good_lr_range=good_lr_range(points))
        results["methods"][method] = per_batch
    for method in methods:
        for batch in (s["batches"][0], s["batches"][-1]):
            entry = results["methods"][method][str(batch)]
            tops = [common.run(spec(method, batch, entry["best_c"], seed, s["epochs"], s["max_steps"]), cache, jit_compile=jit)["final_test_top1"]
                    for seed in s["seeds"]]
            entry["seeds"] = dict(seeds=list(s["seeds"]), final_test_top1=tops, **_spread(tops))
    common.write_json(f"{directory}/results.json", results)
    return results


def _spread(values):
    finite = [v for v in values if v is not None]
    if not finite:
        return dict(mean=None, min=None, max=None)
    return dict(mean=float(np.mean(finite)), min=float(min(finite)), max=float(max(finite)))


def plot(results, out):
    plt = common.pyplot()
    directory = common.claim_dir(out, NAME)
    batches = results["batches"]
    methods = list(results["methods"])
    # Accuracy against batch: best grid point per batch, every grid point faint.
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    floor = FLOOR
    for i, method in enumerate(methods):
        per_batch = results["methods"][method]
        shift = 2 ** (0.06 * (i - 1))  # side by side at each batch
        for batch in batches:
            for point in per_batch[str(batch)]["points"]:
                top1 = point["final_test_top1"]
                below = top1 is None or top1 < floor
                ax.scatter(batch * shift, floor + 0.004 if below else top1, s=16, color=COLORS[method], alpha=0.35,
                           marker="v" if below else "o", linewidths=1)
        best = [per_batch[str(b)]["best_test_top1"] or 0.1 for b in batches]
        ax.plot([b * shift for b in batches], best, "-o", color=COLORS[method], label=LABELS[method], lw=2)
        for b in (batches[0], batches[-1]):
            seeds = per_batch[str(b)].get("seeds")
            if seeds and seeds["mean"] is not None:
                ax.errorbar(b * shift, seeds["mean"], yerr=[[seeds["mean"] - seeds["min"]], [seeds["max"] - seeds["mean"]]],
                            color=COLORS[method], capsize=4, lw=1.2, marker="_", ms=10)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [f"{b // 1024}K" if b >= 1024 else str(b) for b in batches])
    ax.set_xlabel("global batch size (examples per step)")
    ax.set_ylabel(f"test top-1 after {results['epochs']} epochs")
    ax.set_ylim(floor, None)
    ax.grid(alpha=0.3)
    ax.set_title(f"Fashion-MNIST, {results['model']}: best LR per batch (line, seed 0), every grid point (dots;\n"
                 f"triangles: below {floor} or diverged), 3-seed mean and range at the smallest and largest batch (bars)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    common.save(fig, f"{directory}/accuracy_vs_batch.png")
    # LARS Fig. 4: accuracy against LR at the largest batches.
    shown = batches[-2:]
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 3.8), squeeze=False)
    for ax, batch in zip(axes[0], shown):
        for method in methods:
            points = results["methods"][method][str(batch)]["points"]
            lrs = [p["learning_rate"] for p in points]
            tops = [p["final_test_top1"] if p["final_test_top1"] is not None else 0.1 for p in points]
            ax.plot(lrs, tops, "-o", color=COLORS[method], label=LABELS[method])
            for p, lr, top in zip(points, lrs, tops):
                if p["final_test_top1"] is None:
                    ax.plot(lr, top, "x", color="black", ms=8)
            best = results["methods"][method][str(batch)]
            ax.plot(best["best_c"] * batch / 256, best["best_test_top1"] or 0.1, "*", color=COLORS[method], ms=14,
                    markeredgecolor="black")
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate gamma (after linear scaling)")
        ax.set_ylabel(f"test top-1 after {results['epochs']} epochs")
        ax.set_title(f"B = {batch}: accuracy against LR (star: best; x: diverged)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    common.save(fig, f"{directory}/accuracy_vs_lr.png")


def main(argv=None):
    args = common.parse_args(__doc__.splitlines()[0], argv)
    plot(run_grid(args.out, args.quick), args.out)


if __name__ == "__main__":
    main()
