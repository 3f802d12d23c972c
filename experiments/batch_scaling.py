"""Claim 2 (LARS Tables 1, 3, 4 and Fig. 4; CLARS Fig. 1): test accuracy
against the global batch at a fixed epoch budget, each method's LR tuned on
its own grid at every batch, with and without BatchNorm.

    python -m experiments.batch_scaling [--models mlp3,mlp3_nobn] [--jobs N] [--quick] [--out docs/results]

Models: mlp3 (BatchNorm MLP) and mlp3_nobn (the same MLP without BatchNorm,
biases on), Fashion-MNIST, 10 epochs: the paper's AlexNet-BN / AlexNet pair
in the only size for which 3 methods x 6 batches x 5+ LRs x 3 seeds fit
this machine's budget (ResNet-8 trains at ~650-1,300 img/s here, the MLPs
at 20,000-40,000 on one thread).

The peak LR is gamma = c * B / 256 (linear scaling, Goyal et al.; the CLARS
paper's gamma_scale for LARS and CLARS too), c on a base grid of 5 points a
factor 2 apart, the same 5 for LARS and CLARS and a grid of equal width for
SGD. Same schedule shape (warmup then polynomial decay, power 2), weight
decay, momentum and data order for all; CLARS has no warmup (it replaces
it). The rule, the same for every method and model:

- every grid point runs with seed 0; at B >= 4096 every grid point also runs
  with seeds 1 and 2, below that the best seed-0 point and both its
  neighbours do (and the neighbours of whichever point is then best; points
  seeded before an extension stay seeded, so every trained run is reported);
- a point's score is the mean final VALIDATION top-1 over the seeds it ran
  (the last 10,000 training images, held out from training: `VALIDATION_EXAMPLES`),
  a diverged run counting as chance (0.1); the best point is the best seed
  mean among the points with 3 seeds; test top-1 is read only to report
  the chosen points, never to choose;
- where the best lies on an edge of the grid or next to one, the grid is
  extended by a factor-2 step beyond that edge, until the best has
  `MARGIN` (2) grid points on either side (at most `MAX_EXTENSIONS` steps,
  a safety cap). One point per side is not enough: accuracy against LR is
  not unimodal near the divergence edge (mlp3, LARS, B = 16384 scored
  0.529 / 0.588 / 0.577 at c = 0.1 / 0.2 / 0.4, and 0.05 had not been
  tried);
- claim 2b's interval of good LRs (`good_lr_range`, on validation) is then
  widened with seed-0 runs: while it reaches an end of the grid, the grid
  is extended by a factor 2 beyond that end (at most `MAX_EXTENSIONS`
  steps a side); an interval that still reaches an end is reported as open
  there ("at least").

BatchNorm (mlp3, cnn3) uses the trainer's momentum, 0.9 (MLPerf's), and
every run also records its final top-1 under precise BatchNorm statistics
(`experiments.precise_bn`). Runs made before these rules (test-set
selection, Keras's momentum 0.99) are kept in the runs folder; their
tables are in `results_before_issue44.json`.
"""

import os

import numpy as np

from experiments import cli, models, paired, plots, pool, runs
from keras_lars.train import records
from keras_lars.train.models import BN_MOMENTUM

NAME = "batch_scaling"
MODELS = ("mlp3", "mlp3_nobn", "cnn3", "cnn3_nobn")
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
ALL_SEEDS_FROM_BATCH = 4096  # every grid point gets every seed from this batch up
# Seeds that never choose: run at every method's chosen c of (model, batch)
# where a verdict turns on the 3 tuning seeds' interval, and paired with
# them in the comparisons. Empty until such a cell is found.
FRESH_SEEDS = {}
MAX_EXTENSIONS = 8
MARGIN = 2  # grid points required on either side of the best
CHANCE = 0.1  # the top-1 a diverged run counts as
# A final top-1 below this learned nothing (a net predicting one class of ten
# scores 0.1 on the balanced test set): it counts as CHANCE, so that a grid
# at chance everywhere extends towards smaller LRs (ties: the smaller LR).
LEARNED = 0.105
GOOD_LR_TOLERANCE = 0.02  # top-1, absolute
VALIDATION_EXAMPLES = 10000  # the last 10,000 of the 60,000 training images
FLOOR = 0.5  # the accuracy plot's lower limit, unless a best point lies lower
LABELS = {"sgd": "SGD+momentum (warmup)", "lars": "LARS (warmup, eta 0.001)", "clars": "CLARS (no warmup, eta 0.01)"}
COLORS = {"sgd": "tab:gray", "lars": "tab:blue", "clars": "tab:red"}

# The CNNs' grid, sized to about 4 hours of a 2-core machine (docs/results.md):
# four batches, CLARS at the two largest only, and every batch tuned by the
# rule below B = ALL_SEEDS_FROM_BATCH (3 seeds at the best and its neighbours).
CNN_BATCHES = (512, 2048, 8192, 16384)
CNN_PLAN = dict(batches=CNN_BATCHES, method_batches=dict(sgd=CNN_BATCHES, lars=CNN_BATCHES, clars=(8192, 16384)),
                all_seeds_from_batch=None)
PLANS = {"cnn3": CNN_PLAN, "cnn3_nobn": CNN_PLAN}
TITLES = {"mlp3": "mlp3: MLP with BatchNorm", "mlp3_nobn": "mlp3_nobn: MLP without BatchNorm",
          "cnn3": "cnn3: CNN with BatchNorm", "cnn3_nobn": "cnn3_nobn: CNN without BatchNorm"}

# --quick checks the pipeline on one MLP with BatchNorm and one CNN without.
QUICK_MODELS = ("mlp3", "cnn3_nobn")
QUICK = dict(batches=(1024,), grids={m: g[1:2] for m, g in GRIDS.items()}, seeds=(0, 1), max_steps=2, epochs=2,
             all_seeds_from_batch=1024, max_extensions=0)


def spec(model, method, batch, c, seed=0, epochs=EPOCHS, max_steps=0, warmup_epochs=None, adapt_biases=False):
    """The run for (model, method, batch, grid point c): gamma = c * batch / 256."""
    if warmup_epochs is None:
        warmup_epochs = 0 if method == "clars" else WARMUP_EPOCHS
    return runs.RunSpec(
        validation_examples=VALIDATION_EXAMPLES,
        batch_norm_momentum=BN_MOMENTUM if model in models.BATCH_NORM_MODELS else None,
        adapt_biases=adapt_biases,
        method=method,
        batch_size=batch,
        learning_rate=c * batch / 256,
        epochs=epochs,
        warmup_epochs=warmup_epochs,
        model=model,
        eta=ETAS[method],
        weight_decay=WEIGHT_DECAY,
        seed=seed,
        max_steps=max_steps,
    )


def settings(quick, model=None):
    """The grid of `model` (the MLPs' when None): batches, per-method batches,
    LR grids, seeds, the batch from which every grid point gets every seed
    (None: never), extensions, epochs, the step cap and the fresh seeds."""
    if quick:
        s = dict(QUICK, fresh_seeds={})
    else:
        s = dict(batches=BATCHES, grids=GRIDS, seeds=SEEDS, max_steps=0, epochs=EPOCHS,
                 all_seeds_from_batch=ALL_SEEDS_FROM_BATCH, max_extensions=MAX_EXTENSIONS, fresh_seeds=FRESH_SEEDS)
        s.update(PLANS.get(model, {}))
    s.setdefault("method_batches", {method: s["batches"] for method in runs.METHODS})
    return s


def _all_seeds(batch, s):
    return s["all_seeds_from_batch"] is not None and batch >= s["all_seeds_from_batch"]


def score(summary, key="final_validation_top1"):
    """The tuning score of a run: its final validation top-1 (or `key`),
    `CHANCE` if it diverged or is below `LEARNED`."""
    return _chance(summary[key])


def _chance(value):
    return CHANCE if value is None or value < LEARNED else value


def _neighbours(grid, c):
    i = grid.index(c)
    return set(grid[max(i - 1, 0):i + 2])


def tune(grid, seeds, all_seeds, max_extensions, train, margin=MARGIN):
    """The tuning rule of this module's docstring, for one (model, method,
    batch). `train(c, seed)` returns a run summary (cached). Returns (grid
    actually run, sorted; set of points run with every seed; best c)."""
    grid, seeded = sorted(grid), set()  # seeded: kept across extensions, so that every run is reported
    for extension in range(max_extensions + 1):
        first = {c: score(train(c, seeds[0])) for c in grid}
        seeded |= set(grid) if all_seeds else _neighbours(grid, max(grid, key=lambda c: (first[c], -c)))
        while True:
            means = {c: float(np.mean([score(train(c, seed)) for seed in seeds])) for c in seeded}
            best = max(sorted(seeded), key=lambda c: means[c])  # ties: the smaller LR
            if _neighbours(grid, best) <= seeded:
                break
            seeded |= _neighbours(grid, best)
        i = grid.index(best)
        if extension == max_extensions or margin <= i < len(grid) - margin:
            return grid, seeded, best
        grid = sorted(grid + [grid[0] / 2 if i < len(grid) - 1 - i else grid[-1] * 2])  # the nearer edge


def _interval(scores, best, tolerance):
    """(low, high) indices of the contiguous run around index `best` of
    `scores` (ordered by LR) within `tolerance` of `scores[best]`."""
    low = high = best
    while low > 0 and scores[low - 1] >= scores[best] - tolerance:
        low -= 1
    while high < len(scores) - 1 and scores[high + 1] >= scores[best] - tolerance:
        high += 1
    return low, high


def good_lr_range(points, tolerance=GOOD_LR_TOLERANCE):
    """LARS Fig. 4's "interval of good LRs": the largest and smallest LR of
    the contiguous run of grid points around the best whose score (seed
    mean of validation top-1) is within `tolerance` of the best's, their
    ratio, and whether each end is the grid's own (`low_open`, `high_open`:
    the interval may reach further, its ratio is a lower bound)."""
    ordered = sorted(points, key=lambda p: p["learning_rate"])
    best = next(i for i, p in enumerate(ordered) if p.get("best"))
    low, high = _interval([p["mean"] for p in ordered], best, tolerance)
    lo, hi = ordered[low]["learning_rate"], ordered[high]["learning_rate"]
    return dict(tolerance=tolerance, low=lo, high=hi, ratio=hi / lo, low_open=low == 0,
                high_open=high == len(ordered) - 1)


def widen_for_interval(grid, seeded, best, seeds, max_extensions, train, tolerance=GOOD_LR_TOLERANCE):
    """Claim 2b's extension: the grid (sorted) after factor-2 steps with
    `seeds[0]` beyond each end that the interval of good LRs reaches, at
    most `max_extensions` a side. A point's score is its seed mean over
    `seeds` when in `seeded`, else its `seeds[0]` score."""
    grid = sorted(grid)
    added = {"low": 0, "high": 0}
    while True:
        scores = [float(np.mean([score(train(c, seed)) for seed in (seeds if c in seeded else seeds[:1])]))
                  for c in grid]
        low, high = _interval(scores, grid.index(best), tolerance)
        if low == 0 and added["low"] < max_extensions:
            grid, added["low"] = [grid[0] / 2] + grid, added["low"] + 1
        elif high == len(grid) - 1 and added["high"] < max_extensions:
            grid, added["high"] = grid + [grid[-1] * 2], added["high"] + 1
        else:
            return grid


def _point(c, summaries, best):
    validation = [s["final_validation_top1"] for s in summaries]
    scores = [score(s) for s in summaries]
    tests = [score(s, "final_test_top1") for s in summaries]
    point = dict(c=c, learning_rate=summaries[0]["spec"]["learning_rate"], best=best,
                 seeds=[s["spec"]["seed"] for s in summaries], final_validation_top1=validation,
                 final_test_top1=[s["final_test_top1"] for s in summaries],
                 diverged=[s["diverged"] for s in summaries], mean=float(np.mean(scores)),
                 min=float(min(scores)), max=float(max(scores)), test_mean=float(np.mean(tests)),
                 test_min=float(min(tests)), test_max=float(max(tests)),
                 seconds=sum(s["seconds"] for s in summaries), run_ids=[s["run_id"] for s in summaries])
    if "final_test_top1_precise_bn" in summaries[0]:
        point["final_test_top1_precise_bn"] = [s["final_test_top1_precise_bn"] for s in summaries]
    return point


def _train(model, method, batch, s, cache, jit):
    def train(c, seed):
        return runs.run(spec(model, method, batch, c, seed, s["epochs"], s["max_steps"]), cache, jit_compile=jit)

    return train


def _tune(model, method, batch, s, cache, jit, train=None):
    """(grid, seeded, best) of one (model, method, batch): `tune`, then
    `widen_for_interval`, then the fresh seeds at the best (`FRESH_SEEDS`);
    `train` defaults to training (cached) runs."""
    train = train or _train(model, method, batch, s, cache, jit)
    grid, seeded, best = tune(s["grids"][method], s["seeds"], _all_seeds(batch, s), s["max_extensions"], train)
    grid = widen_for_interval(grid, seeded, best, s["seeds"], s["max_extensions"], train)
    for seed in s["fresh_seeds"].get((model, batch), ()):
        train(best, seed)
    return grid, seeded, best


class _NotCached(Exception):
    pass


def _cached(model, method, batch, s, cache, jit):
    """Whether the tuning of (model, method, batch) reads only cached runs."""
    def train(c, seed):
        summary = runs.read_cached(spec(model, method, batch, c, seed, s["epochs"], s["max_steps"]), cache)
        if summary is None:
            raise _NotCached
        return summary

    try:
        _tune(model, method, batch, s, cache, jit, train)
        return True
    except _NotCached:
        return False


def _tune_task(args):
    runs.configure_runtime()
    _tune(*args)
    return args[:3]


def run_model(model, s, cache, jit):
    """The results dict of one model, from its (cached) runs."""
    methods = {}
    for method in runs.METHODS:
        for batch in s["method_batches"][method]:
            grid, seeded, best = _tune(model, method, batch, s, cache, jit)
            train = _train(model, method, batch, s, cache, jit)
            points = [_point(c, [train(c, seed) for seed in (s["seeds"] if c in seeded else s["seeds"][:1])], c == best)
                      for c in grid]
            entry = next(p for p in points if p["best"])
            fresh = s["fresh_seeds"].get((model, batch), ())
            if fresh:  # test numbers over every seed; the tuning score (`mean`, `min`, `max`) keeps the tuning seeds'
                tuning = {k: entry[k] for k in ("mean", "min", "max")}
                entry.update(_point(best, [train(best, seed) for seed in (*s["seeds"], *fresh)], True),
                             fresh_seeds=list(fresh), **tuning)
            methods.setdefault(method, {})[str(batch)] = dict(
                points=points, best_c=best, best_validation_top1=entry["mean"], best_test_top1=entry["test_mean"],
                best_range=[entry["test_min"], entry["test_max"]],
                extended=[c for c in grid if c not in s["grids"][method]], good_lr_range=good_lr_range(points))
    return dict(paired=paired_differences(methods), epochs=s["epochs"], warmup_epochs=WARMUP_EPOCHS, weight_decay=WEIGHT_DECAY,
                validation_examples=VALIDATION_EXAMPLES,
                batch_norm_momentum=BN_MOMENTUM if model in models.BATCH_NORM_MODELS else None,
                base_grids={m: list(s["grids"][m]) for m in runs.METHODS}, etas=dict(ETAS),
                seeds=list(s["seeds"]), all_seeds_from_batch=s["all_seeds_from_batch"],
                batches=list(s["batches"]), method_batches={m: list(b) for m, b in s["method_batches"].items()},
                methods=methods)


# The seed-paired comparisons of the tables: (a, b) for a - b.
COMPARISONS = (("lars", "sgd"), ("clars", "lars"), ("clars", "sgd"))


def paired_differences(methods):
    """{"lars-sgd": {batch: paired difference}, ...}: test top-1 at each
    method's chosen c, paired by seed (a diverged run counting as chance),
    for every batch both methods ran (`experiments.paired`)."""
    found = {}
    for a, b in COMPARISONS:
        if a not in methods or b not in methods:
            continue
        for batch in methods[a]:
            if batch not in methods[b]:
                continue
            best = [next(p for p in methods[m][batch]["points"] if p["best"]) for m in (a, b)]
            scores = [[_chance(t) for t in p["final_test_top1"]] for p in best]
            found.setdefault(f"{a}-{b}", {})[batch] = paired.paired_difference(
                scores[0], scores[1], best[0]["seeds"], best[1]["seeds"])
    return found


def run_grid(out, quick=False, models=MODELS, jobs=1):
    """Runs (or reads) every point of `models`, with `jobs` processes (one
    (model, method, batch) tuning each at a time), and merges them into
    results.json (whose other models are kept); returns the merged results."""
    directory = runs.claim_dir(out, NAME)
    cache, jit = f"{directory}/runs", not quick
    tasks = []
    for model in models:
        s = settings(quick, model)
        # Extremes first, so that a suite stopped early already spans the range.
        order = sorted(s["batches"], key=lambda b: (b not in (s["batches"][0], s["batches"][-1]), b))
        tasks += [(model, method, batch, s, cache, jit) for batch in order for method in runs.METHODS
                  if batch in s["method_batches"][method]]
    todo = [task for task in tasks if not _cached(*task)]  # no process started for what is cached
    pool.parallel(_tune_task, todo, jobs)
    measured = {model: run_model(model, settings(quick, model), cache, jit) for model in models}
    return runs.write_models(f"{directory}/results.json", measured, MODELS)


def plot(results, out):
    plt = plots.pyplot()
    directory = runs.claim_dir(out, NAME)
    models = list(results["models"])
    columns = min(len(models), 2)
    rows = -(-len(models) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.4 * columns, 4.8 * rows), squeeze=False)
    for ax, model in zip(axes.flat, models):
        _accuracy_vs_batch(ax, model, results["models"][model])
    for row in axes:
        row[0].set_ylabel(f"test top-1 after {results['models'][models[0]]['epochs']} epochs")
    for ax in axes.flat[len(models):]:
        ax.set_visible(False)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Fashion-MNIST: test top-1 at the LR chosen on validation (line: mean of 3 seeds; bars: min-max);\n"
                 "every grid point's validation top-1 (open dots: seed mean; triangles: below the axis or diverged)",
                 fontsize=9)
    fig.tight_layout()
    plots.save(fig, f"{directory}/accuracy_vs_batch.png")
    # LARS Fig. 4: accuracy against LR at the largest batches, one row per model.
    shown = 2
    fig, axes = plt.subplots(len(models), shown, figsize=(5.2 * shown, 3.8 * len(models)), squeeze=False)
    for row, model in zip(axes, models):
        for ax, batch in zip(row, results["models"][model]["batches"][-shown:]):
            _accuracy_vs_lr(ax, model, results["models"][model], batch)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    plots.save(fig, f"{directory}/accuracy_vs_lr.png")
    before = f"{directory}/results_before_issue44.json"
    if os.path.exists(before) and any(m in models.BATCH_NORM_MODELS for m in models):
        plot_batch_norm_before_after(records.read_json(before), results, directory)


def _best(entry):
    return next(p for p in entry["points"] if p["best"])


def plot_batch_norm_before_after(before, after, directory, batches=(8192, 16384)):
    """batch_norm_before_after.png: the BatchNorm models' test top-1 at each
    method's chosen c at `batches`, before issue 44 (momentum 0.99, chosen on
    test), after (momentum 0.9, chosen on validation) and after with precise
    BatchNorm statistics; bars: seed means, dots: seeds."""
    plt = plots.pyplot()
    models = [m for m in after["models"] if m in models.BATCH_NORM_MODELS and m in before["models"]]
    if not models:
        return
    kinds = (("before: momentum 0.99, chosen on test", "final_test_top1", before, "tab:gray"),
             ("after: momentum 0.9, chosen on validation", "final_test_top1", after, "tab:blue"),
             ("after, precise BatchNorm statistics", "final_test_top1_precise_bn", after, "tab:green"))
    fig, axes = plt.subplots(1, len(models), figsize=(6.4 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        labels, x = [], 0
        for batch in batches:
            for method in runs.METHODS:
                cells = [r["models"][model]["methods"].get(method, {}).get(str(batch)) for _, _, r, _ in kinds]
                if any(c is None for c in cells):
                    continue
                for i, ((label, key, _, color), cell) in enumerate(zip(kinds, cells)):
                    values = [CHANCE if v is None else v for v in _best(cell)[key]]
                    ax.bar(x + 0.27 * (i - 1), np.mean(values), 0.25, color=color, label=label if x == 0 else None)
                    ax.scatter([x + 0.27 * (i - 1)] * len(values), values, s=9, color="black", zorder=3)
                labels.append(f"{method.upper()}\n{batch // 1024}K")
                x += 1
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("test top-1 after 10 epochs (bar: mean; dots: seeds)")
        ax.set_title(f"{TITLES.get(model, model)}: BatchNorm evaluation before and after issue 44", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.legend(*axes[0][0].get_legend_handles_labels(), fontsize=8, loc="upper center", ncol=3)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    plots.save(fig, f"{directory}/batch_norm_before_after.png")


def _accuracy_vs_batch(ax, model, result):
    batches = result["batches"]
    method_batches = result.get("method_batches", {m: batches for m in result["methods"]})
    lowest = min(e["best_range"][0] for per_batch in result["methods"].values() for e in per_batch.values())
    floor = min(FLOOR, max(0.0, round(lowest - 0.05, 1)))
    for i, method in enumerate(result["methods"]):
        per_batch = result["methods"][method]
        shift = 2 ** (0.06 * (i - 1))  # side by side at each batch
        batches_run = method_batches[method]
        for batch in batches_run:
            for point in per_batch[str(batch)]["points"]:
                below = point["mean"] < floor
                ax.scatter(batch * shift, floor + 0.004 if below else point["mean"], s=16, facecolors="none",
                           edgecolors=COLORS[method], alpha=0.5, marker="v" if below else "o", linewidths=1)
        best = [per_batch[str(b)] for b in batches_run]
        means = [e["best_test_top1"] for e in best]
        ax.errorbar([b * shift for b in batches_run], means, color=COLORS[method], label=LABELS[method], lw=2,
                    marker="o", capsize=3,
                    yerr=[[m - e["best_range"][0] for m, e in zip(means, best)],
                          [e["best_range"][1] - m for m, e in zip(means, best)]])
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [f"{b // 1024}K" if b >= 1024 else str(b) for b in batches])
    ax.set_xlabel("global batch size (examples per step)")
    ax.set_ylim(floor, None)
    ax.grid(alpha=0.3)
    ax.set_title(TITLES.get(model, model), fontsize=10)


def _accuracy_vs_lr(ax, model, result, batch):
    for method in result["methods"]:
        if str(batch) not in result["methods"][method]:
            continue
        entry = result["methods"][method][str(batch)]
        points = entry["points"]
        lrs = np.array([p["learning_rate"] for p in points])
        ax.plot(lrs, [p["mean"] for p in points], "-o", ms=4, color=COLORS[method], label=LABELS[method])
        ax.plot(entry["best_c"] * batch / 256, entry["best_test_top1"], "D", color=COLORS[method], ms=6,
                markeredgecolor="black")
        ax.fill_between(lrs, [p["min"] for p in points], [p["max"] for p in points], color=COLORS[method], alpha=0.15)
        for p in points:
            if any(p["diverged"]):
                ax.plot(p["learning_rate"], p["mean"], "x", color="black", ms=8)
        ax.plot(entry["best_c"] * batch / 256, entry["best_validation_top1"], "*", color=COLORS[method], ms=14,
                markeredgecolor="black")
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate gamma (after linear scaling)")
    ax.set_ylabel(f"validation top-1 after {result['epochs']} epochs")
    ax.set_title(f"{TITLES.get(model, model)}, B = {batch}\n(seed mean, band: min-max; star: chosen; diamond: its "
                 "test top-1; x: a seed diverged)", fontsize=9)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)


def main(argv=None):
    args = cli.parse_args(__doc__.splitlines()[0], argv, models=MODELS, quick_models=QUICK_MODELS)
    plot(run_grid(args.out, args.quick, args.models, args.jobs), args.out)


if __name__ == "__main__":
    main()
