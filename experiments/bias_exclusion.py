"""The exclusion rule in networks without normalization: LARS and CLARS with
biases excluded from layer adaptation (the library's default: a bias gets
the global LR gamma, as in the MLPerf reference) against biases adapted
(a bias gets its own trust ratio, as every other tensor), weight decay
excluding biases in both.

    python -m experiments.bias_exclusion [--models cnn3_nobn,mlp3_nobn] [--jobs N] [--quick] [--out docs/results]

At B = 512, 2K and 8K, each (model, method, batch, variant) tuned by the
rule of `experiments.batch_scaling` (the same grid, seeds and validation
split). Reports test top-1 at each chosen c, the seed-paired difference
adapted - excluded, and the dead runs (diverged, or ending below
`batch_scaling.LEARNED`) among all runs of each tuning. The default
variant's runs are batch-scaling runs and live in its cache.
"""

import numpy as np

from experiments import batch_scaling, cli, paired, pool, runs

NAME = "bias_exclusion"
MODELS = ("cnn3_nobn", "mlp3_nobn")
METHODS = ("lars", "clars")
BATCHES = (512, 2048, 8192)
VARIANTS = {"excluded": False, "adapted": True}  # name: RunSpec.adapt_biases
QUICK_MODELS = ("mlp3_nobn",)


def _settings(quick, model):
    s = batch_scaling.settings(quick, model)
    s["batches"] = s["batches"] if quick else BATCHES
    return s


def _caches(out):
    return f"{out}/{batch_scaling.NAME}/runs", f"{runs.claim_dir(out, NAME)}/runs"


def _train(model, method, batch, adapt, s, out, jit):
    cache = _caches(out)[1 if adapt else 0]

    def train(c, seed):
        spec = batch_scaling.spec(model, method, batch, c, seed, s["epochs"], s["max_steps"], adapt_biases=adapt)
        return runs.run(spec, cache, jit_compile=jit)

    return train


def _tune(model, method, batch, adapt, s, out, jit):
    train = _train(model, method, batch, adapt, s, out, jit)
    grid, seeded, best = batch_scaling.tune(s["grids"][method], s["seeds"], batch_scaling._all_seeds(batch, s),
                                            s["max_extensions"], train)
    return grid, seeded, best, train


def _tune_task(args):
    runs.configure_runtime()
    _tune(*args)
    return args[:4]


def _cell(model, method, batch, adapt, s, out, jit):
    grid, seeded, best, train = _tune(model, method, batch, adapt, s, out, jit)
    runs = [train(c, seed) for c in grid for seed in (s["seeds"] if c in seeded else s["seeds"][:1])]
    at_best = [train(best, seed) for seed in s["seeds"]]
    tests = [batch_scaling.score(r, "final_test_top1") for r in at_best]
    dead = [r["run_id"] for r in runs if batch_scaling.score(r) == batch_scaling.CHANCE]
    return dict(best_c=best, grid=grid, seeds=list(s["seeds"]), test_top1=tests, mean=float(np.mean(tests)),
                min=float(min(tests)), max=float(max(tests)),
                validation_top1=float(np.mean([batch_scaling.score(r) for r in at_best])),
                runs=len(runs), dead=len(dead), dead_at_best=sum(t == batch_scaling.CHANCE for t in tests),
                dead_run_ids=dead, run_ids=[r["run_id"] for r in at_best])


def run_all(out, quick=False, models=MODELS, jobs=1):
    """Tunes every (model, method, batch, variant) with `jobs` processes and
    writes results.json; returns it."""
    jit = not quick
    tasks = [(model, method, batch, adapt, _settings(quick, model), out, jit)
             for model in models for batch in _settings(quick, model)["batches"] for method in METHODS
             for adapt in VARIANTS.values()]
    pool.parallel(_tune_task, tasks, jobs)
    measured = {}
    for model in models:
        s = _settings(quick, model)
        entry = measured.setdefault(model, dict(batches=list(s["batches"]), methods={}))
        for method in METHODS:
            for batch in s["batches"]:
                cells = {name: _cell(model, method, batch, adapt, s, out, jit) for name, adapt in VARIANTS.items()}
                cells["paired"] = paired.paired_difference(
                    cells["adapted"]["test_top1"], cells["excluded"]["test_top1"], s["seeds"], s["seeds"])
                entry["methods"].setdefault(method, {})[str(batch)] = cells
    return runs.write_models(f"{runs.claim_dir(out, NAME)}/results.json", measured, MODELS)


def table(results):
    """Markdown: per model, test top-1 at the chosen c of each variant, the
    paired difference and the dead runs."""
    lines = []
    for model, entry in results["models"].items():
        lines += [f"{batch_scaling.TITLES.get(model, model)}: test top-1 at the c chosen on validation, mean "
                  "(min-max) over seeds; adapted - excluded paired by seed, mean [95% t interval], pairs won; "
                  "dead runs (diverged or at chance) of all the tuning's runs", "",
                  "| method, B | biases excluded (default): top-1 (c) | biases adapted: top-1 (c) | "
                  "adapted - excluded | dead runs: excluded | dead runs: adapted |", "| --- | --- | --- | --- | --- | --- |"]
        for method, per_batch in entry["methods"].items():
            for batch, cells in per_batch.items():
                e, a = cells["excluded"], cells["adapted"]
                lines.append(f"| {method.upper()}, {batch} | {e['mean']:.3f} ({e['min']:.3f}-{e['max']:.3f}), "
                             f"c = {e['best_c']:g} | {a['mean']:.3f} ({a['min']:.3f}-{a['max']:.3f}), "
                             f"c = {a['best_c']:g} | {paired.text(cells['paired'])} | {e['dead']}/{e['runs']} | "
                             f"{a['dead']}/{a['runs']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    args = cli.parse_args(__doc__.splitlines()[0], argv, models=MODELS, quick_models=QUICK_MODELS)
    results = run_all(args.out, args.quick, args.models, args.jobs)
    path = f"{runs.claim_dir(args.out, NAME)}/table.md"
    with open(path, "w") as f:
        f.write(table(results))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
