"""Issue 34: LARS in self-supervised pretraining. Linear-probe test top-1 of
a ResNet-8 pretrained SimCLR-style (`examples/simclr`) with LARS, momentum
SGD and AdamW at a small and a large batch, after the same pretraining
budget, next to three baselines: a linear classifier on raw pixels, the
probe on a randomly initialised encoder, and the probe on the same encoder
trained supervised.

    python -m experiments.self_supervised [--jobs N] [--quick] [--out docs/results]

Every pretraining is `EPOCHS` epochs of the 60,000 training images (two
views each), a linear warmup over the first `WARMUP_FRACTION` of the steps
(SimCLR: 10 of 100 epochs), then a cosine to 0. The tuning rule, the same
for every optimizer: the peak LR is c x B/256 (B the global batch of
images) on a grid of c in factor-4 steps around the optimizer's recipe
value (`BASE_C`: SimCLR's 0.3 for LARS and SGD, 1e-3 for AdamW), extended
by factor-4 steps while the best (seed 0) lies on the grid's edge; seeds 1
and 2 then rerun the best point, and the reported number is the mean over
the three seeds. A run whose loss turns non-finite counts as chance (0.1).
The supervised baseline trains the encoder with a softmax classifier (one
augmented view per image, SGD's recipe) under the same rule at B = 256.
"""

import dataclasses
import hashlib
import json
import math
import os
import time

import numpy as np

from experiments import batch_scaling, cli, plots, pool, runs
from keras_lars.train import records

NAME = "self_supervised"
OPTIMIZERS = ("lars", "sgd", "adamw")
BATCHES = (256, 2048)
EPOCHS = 3
WARMUP_FRACTION = 0.1
BASE_C = {"lars": 0.3, "sgd": 0.3, "adamw": 1e-3}
GRID_STEPS = (0.25, 1.0, 4.0)  # x BASE_C
SEEDS = (0, 1, 2)
MAX_EXTENSIONS = 2
SUPERVISED_BATCH = 256
TEMPERATURE = 0.5
ENCODER = "resnet8"
PROBE_EPOCHS = 30
CHANCE = batch_scaling.CHANCE
QUICK = dict(batches=(64, 128), grid_steps=(1.0,), seeds=(0,), epochs=1, max_steps=2, probe_examples=500,
             probe_epochs=2, max_extensions=0, supervised_batch=64)
LABELS = {"lars": "LARS (SimCLR's settings)", "sgd": "SGD + momentum", "adamw": "AdamW (Keras)"}
COLORS = {"lars": "tab:blue", "sgd": "tab:gray", "adamw": "tab:green"}
KINDS = ("simclr", "supervised", "random_encoder", "raw_pixels")


@dataclasses.dataclass(frozen=True)
class Spec:
    """One run: a pretraining and its probe, or a baseline.

    Attributes:
        kind: one of `KINDS`.
        optimizer: one of `OPTIMIZERS` (pretraining and supervised runs).
        batch_size: int, the global batch of images (each gives two views).
        learning_rate: float, the peak LR (0 for the untrained baselines).
        epochs: int, passes over the training images (0: untrained).
        warmup_epochs: float, the linear warmup, in epochs.
        seed: int, seeds the weights, the views and the data order.
        max_steps: int, 0 (all) or a cap on steps per epoch (`--quick`).
        probe_examples: int, 0 (all) or the number of train and test images
            the probe sees (`--quick`).
        probe_epochs: int, the probe's passes over its training features.
    """

    kind: str
    optimizer: str = ""
    batch_size: int = 0
    learning_rate: float = 0.0
    epochs: int = 0
    warmup_epochs: float = 0.0
    temperature: float = TEMPERATURE
    encoder: str = ENCODER
    seed: int = 0
    max_steps: int = 0
    probe_examples: int = 0
    probe_epochs: int = PROBE_EPOCHS

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}. Received: {self.kind!r}")
        if self.kind in ("simclr", "supervised") and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}. Received: {self.optimizer!r}")

    def run_id(self):
        digest = hashlib.sha1(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:8]
        if self.kind in ("random_encoder", "raw_pixels"):
            return f"{self.kind}_s{self.seed}_{digest}"
        return (f"{self.kind}_{self.optimizer}_b{self.batch_size}_lr{self.learning_rate:g}_e{self.epochs}"
                f"_s{self.seed}_{digest}")


def settings(quick):
    s = dict(batches=BATCHES, grid_steps=GRID_STEPS, seeds=SEEDS, epochs=EPOCHS, max_steps=0, probe_examples=0,
             probe_epochs=PROBE_EPOCHS, max_extensions=MAX_EXTENSIONS, supervised_batch=SUPERVISED_BATCH)
    if quick:
        s.update(QUICK)
    return s


def spec(kind, s, optimizer="", batch=0, c=0.0, seed=0):
    """The run of `kind` for grid point c (peak LR c x batch/256) under settings `s`."""
    trained = kind in ("simclr", "supervised")
    return Spec(kind=kind, optimizer=optimizer if trained else "", batch_size=batch if trained else 0,
                learning_rate=c * batch / 256 if trained else 0.0, epochs=s["epochs"] if trained else 0,
                warmup_epochs=WARMUP_FRACTION * s["epochs"] if trained else 0.0, seed=seed,
                max_steps=s["max_steps"] if trained else 0, probe_examples=s["probe_examples"],
                probe_epochs=s["probe_epochs"])


def _example_args(spec):
    from examples.simclr import __main__ as example

    argv = ["--optimizer", spec.optimizer, "--batch", str(spec.batch_size), "--epochs", str(spec.epochs),
            "--learning-rate", repr(spec.learning_rate), "--warmup-epochs", repr(spec.warmup_epochs),
            "--temperature", repr(spec.temperature), "--encoder", spec.encoder, "--seed", str(spec.seed),
            "--verbose", "0"]
    return example.parse_args(argv + (["--steps", str(spec.max_steps)] if spec.max_steps else []))


def _supervised(x, y, x_test, y_test, args):
    """The encoder trained with a softmax on one augmented view per image
    (the example's views and optimizer); returns (encoder, loss per epoch,
    the classifier's test top-1)."""
    import keras

    from examples.simclr import __main__ as example
    from examples.simclr import model as simclr_model
    from examples.simclr import views

    keras.utils.set_random_seed(args.seed)
    steps = len(x) // args.batch if args.steps is None else args.steps
    encoder = simclr_model.encoder(args.encoder)
    inputs = keras.Input(x.shape[1:])
    outputs = keras.layers.Dense(10, activation="softmax", name="classifier")(
        encoder(views.augmenter(seed=args.seed)(inputs)))
    model = keras.Model(inputs, outputs, name="supervised")
    model.compile(optimizer=example.build_optimizer(args.optimizer, args.learning_rate, steps * args.epochs,
                                                    int(round(args.warmup_epochs * steps))),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x[: steps * args.batch], y[: steps * args.batch], batch_size=args.batch, epochs=args.epochs,
                        shuffle=True, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()])
    finite = all(math.isfinite(v) for v in history.history["loss"])
    top1 = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)[1] if finite else None
    return encoder, history.history["loss"], top1


def train(spec):
    """Trains (or builds) the encoder of `spec`, probes it and returns the
    summary dict: {"spec", "run_id", "loss" (per epoch), "diverged",
    "probe_test_top1" (None if diverged), "supervised_test_top1"
    (supervised runs), "seconds" (training), "probe_seconds",
    "images_per_second", "environment"}."""
    import keras

    from examples.simclr import __main__ as example
    from examples.simclr import model as simclr_model
    from examples.simclr import probe

    x, y, x_test, y_test = example.load_fashion_mnist()
    start, losses, encoder, extra = time.time(), [], None, {}
    if spec.kind == "simclr":
        args = _example_args(spec)
        model, history = example.pretrain(x, args)
        encoder, losses = model.encoder, history["loss"]
    elif spec.kind == "supervised":
        encoder, losses, top1 = _supervised(x, y, x_test, y_test, _example_args(spec))
        extra["supervised_test_top1"] = None if top1 is None else float(top1)
    elif spec.kind == "random_encoder":
        keras.utils.set_random_seed(spec.seed)
        encoder = simclr_model.encoder(spec.encoder)
    seconds = time.time() - start
    diverged = len(losses) < spec.epochs or not all(math.isfinite(v) for v in losses)
    n = spec.probe_examples or None
    start, top1 = time.time(), None
    if not diverged:
        top1 = probe.linear_probe(probe.features(encoder, x[:n]), y[:n], probe.features(encoder, x_test[:n]),
                                  y_test[:n], epochs=spec.probe_epochs, seed=spec.seed)
    steps = min(len(x) // spec.batch_size, spec.max_steps or len(x)) if spec.batch_size else 0
    return dict(spec=dataclasses.asdict(spec), run_id=spec.run_id(), loss=[float(v) for v in losses],
                diverged=diverged, probe_test_top1=top1, **extra, seconds=round(seconds, 1),
                probe_seconds=round(time.time() - start, 1),
                images_per_second=round(steps * spec.batch_size * len(losses) / seconds, 1) if losses else None,
                environment=runs.environment())


def run(spec, cache_dir):
    """`train(spec)`, or its cached summary in `cache_dir` (written on the
    first run; replaced when made under other instruction-set caps)."""
    cached = runs.read_cached(spec, cache_dir)
    if cached is not None:
        return cached
    summary = train(spec)
    os.makedirs(cache_dir, exist_ok=True)
    records.write_json(os.path.join(cache_dir, spec.run_id() + ".json"), summary, indent=runs.RUN_FILE_INDENT)
    print(f"{spec.run_id()}: probe {summary['probe_test_top1']} diverged={summary['diverged']} "
          f"{summary['seconds']:.0f} s (+{summary['probe_seconds']:.0f} s probe)", flush=True)
    return summary


def score(summary):
    """Probe test top-1 of a run, `CHANCE` if it diverged."""
    value = summary["probe_test_top1"]
    return CHANCE if value is None else value


def _tune(kind, optimizer, batch, s, cache):
    """(grid run, best c, the summaries of every seed at the best) of one
    (kind, optimizer, batch) under this module's rule."""
    def train_point(c, seed):
        return run(spec(kind, s, optimizer, batch, c, seed), cache)

    seed = s["seeds"][0]
    grid = [BASE_C[optimizer] * step for step in s["grid_steps"]]
    best = max(grid, key=lambda c: (score(train_point(c, seed)), -c))  # ties: the smaller LR
    for _ in range(s["max_extensions"]):
        if grid[0] < best < grid[-1]:
            break
        grid = sorted(grid + [grid[0] / 4 if best == grid[0] else grid[-1] * 4])
        best = max(grid, key=lambda c: (score(train_point(c, seed)), -c))
    return grid, best, [run(spec(kind, s, optimizer, batch, best, seed), cache) for seed in s["seeds"]]


def _tune_task(task):
    runs.configure_runtime()
    _tune(*task)
    return task[:3]


def _cell(kind, optimizer, batch, s, cache):
    grid, best, at_best = _tune(kind, optimizer, batch, s, cache)
    first = {c: run(spec(kind, s, optimizer, batch, c, s["seeds"][0]), cache) for c in grid}
    points = [dict(c=c, learning_rate=c * batch / 256, probe_test_top1=score(r), diverged=r["diverged"],
                   run_id=r["run_id"]) for c, r in first.items()]
    scores = [score(r) for r in at_best]
    cell = dict(points=points, best_c=best, best_learning_rate=best * batch / 256, mean=float(np.mean(scores)),
                min=float(min(scores)), max=float(max(scores)), seeds=[r["spec"]["seed"] for r in at_best],
                run_ids=[r["run_id"] for r in at_best], seconds=sum(r["seconds"] for r in at_best))
    if kind == "supervised":
        cell["supervised_test_top1"] = [r.get("supervised_test_top1") for r in at_best]
    return cell


def _tasks(s, cache):
    """Every tuning, largest batch first (the costliest steps start early)."""
    tasks = [("simclr", optimizer, batch, s, cache) for batch in sorted(s["batches"], reverse=True)
             for optimizer in OPTIMIZERS]
    return tasks + [("supervised", "sgd", s["supervised_batch"], s, cache)]


def run_all(out, quick=False, jobs=1):
    """Runs (or reads) every run and writes OUT/self_supervised/results.json."""
    directory = runs.claim_dir(out, NAME)
    cache, s = f"{directory}/runs", settings(quick)
    tasks = _tasks(s, cache)
    pool.parallel(_tune_task, tasks, jobs)
    baselines = {}
    for kind in ("raw_pixels", "random_encoder"):
        seeds = s["seeds"] if kind == "random_encoder" else (0,)  # raw pixels: nothing random but the probe
        summaries = [run(spec(kind, s, seed=seed), cache) for seed in seeds]
        scores = [score(r) for r in summaries]
        baselines[kind] = dict(mean=float(np.mean(scores)), min=float(min(scores)), max=float(max(scores)),
                               run_ids=[r["run_id"] for r in summaries])
    baselines["supervised"] = _cell(*tasks[-1])
    results = dict(epochs=s["epochs"], warmup_fraction=WARMUP_FRACTION, base_c=BASE_C, grid_steps=list(s["grid_steps"]),
                   seeds=list(s["seeds"]), batches=list(s["batches"]), temperature=TEMPERATURE, encoder=ENCODER,
                   probe_epochs=s["probe_epochs"], supervised_batch=s["supervised_batch"],
                   simclr={o: {str(b): _cell("simclr", o, b, s, cache) for b in s["batches"]} for o in OPTIMIZERS},
                   baselines=baselines)
    records.write_json(f"{directory}/results.json", results, indent=runs.RUN_FILE_INDENT)
    return results


BASELINE_LABELS = {"raw_pixels": "linear on raw pixels", "random_encoder": "probe, random encoder",
                   "supervised": "probe, supervised encoder"}
BASELINE_STYLES = {"raw_pixels": ":", "random_encoder": "--", "supervised": "-."}


def plot(results, out):
    """probe top-1 against batch per optimizer (left) and against c (right)."""
    plt = plots.pyplot()
    directory = runs.claim_dir(out, NAME)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.8, 4.8))
    batches = results["batches"]
    for optimizer, cells in results["simclr"].items():
        cells = [cells[str(b)] for b in batches]
        means = np.array([c["mean"] for c in cells])
        errors = np.array([means - [c["min"] for c in cells], [c["max"] for c in cells] - means])
        left.errorbar(batches, means, yerr=errors, marker="o", capsize=4, color=COLORS[optimizer],
                      label=LABELS[optimizer])
        for b, style in zip(batches, ("-", "--")):
            points = results["simclr"][optimizer][str(b)]["points"]
            right.plot([p["c"] / BASE_C[optimizer] for p in points], [p["probe_test_top1"] for p in points], style,
                       marker="o", color=COLORS[optimizer], label=f"{LABELS[optimizer]}, B = {b}")
    for kind, baseline in results["baselines"].items():
        left.axhline(baseline["mean"], color="black", linestyle=BASELINE_STYLES[kind], linewidth=1,
                     label=f"{BASELINE_LABELS[kind]} ({baseline['mean']:.3f})")
    left.set_xscale("log", base=2)
    left.set_xticks(batches, [str(b) for b in batches])
    left.set_xlabel("global batch B (images; two views each)")
    left.set_ylabel(f"linear-probe test top-1 after {results['epochs']} epochs")
    left.set_title("SimCLR-style pretraining, ResNet-8, Fashion-MNIST\n"
                   f"(best c per optimizer, mean and min-max of {len(results['seeds'])} seeds)")
    left.legend(fontsize=8)
    right.set_xscale("log")
    right.set_xlabel("c / recipe c (peak LR = c x B/256; recipe c: LARS, SGD 0.3, AdamW 0.001)")
    right.set_ylabel("probe test top-1 (seed 0; diverged = 0.1)")
    right.set_title("the learning-rate grids")
    right.legend(fontsize=7)
    plots.save(fig, f"{directory}/probe_vs_batch.png")


def table(results):
    """The results table in Markdown."""
    rows = ["| | " + " | ".join(f"B = {b}" for b in results["batches"]) + " |",
            "| --- |" + " --- |" * len(results["batches"])]
    for optimizer, cells in results["simclr"].items():
        rows.append(f"| SimCLR + {LABELS[optimizer]} | " + " | ".join(
            f"{c['mean']:.3f} ({c['min']:.3f}-{c['max']:.3f}), c = {c['best_c']:g}"
            for c in (cells[str(b)] for b in results["batches"])) + " |")
    blank = " |" * (len(results["batches"]) - 1)
    for kind, baseline in results["baselines"].items():
        note = f", c = {baseline['best_c']:g}, B = {results['supervised_batch']}" if kind == "supervised" else ""
        rows.append(f"| baseline: {BASELINE_LABELS[kind]} | {baseline['mean']:.3f} "
                    f"({baseline['min']:.3f}-{baseline['max']:.3f}){note} |" + blank)
    return "\n".join(rows) + "\n"


def main(argv=None):
    args = cli.parse_args(__doc__.splitlines()[0], argv, jobs=True)
    results = run_all(args.out, args.quick, args.jobs)
    plot(results, args.out)
    path = os.path.join(runs.claim_dir(args.out, NAME), "table.md")
    with open(path, "w") as f:
        f.write(table(results))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
