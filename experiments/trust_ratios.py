"""Claim 1 (LARS Table 2 and Fig. 2): ||w|| / ||g|| per layer at iteration 1
spans orders of magnitude, and falls over the first epochs.

    python -m experiments.trust_ratios [--quick] [--out docs/results]

LARS training (eta 0.001, momentum 0.9, weight decay 1e-4, gamma = 0.8 * B / 256,
about MLPerf's 10 at B = 3264, linear warmup then polynomial decay) with
`layer_statistics=True`; `keras_lars.layer_statistics.read` gives ||w|| and
||g|| (the batch gradient, before weight decay) of every variable at
iteration 1 (the initial weights) and at log-spaced steps after it.

- ResNet-8 on Fashion-MNIST (28 x 28), batch 512, 3 epochs (warmup 1).
- ResNet-50 v1.5 on Fashion-MNIST resized to 3 x 64 x 64, batch 128, 40
  steps (0.085 epoch; warmup 10 steps, then decay; test top-1 on the first
  1,000 test images): a whole epoch did not finish in 80 minutes on this
  2-core machine.
"""

import numpy as np

import keras
import keras_lars

from experiments import cli, data, plots, runs
from keras_lars.train import records

NAME = "trust_ratios"
C = 0.8
RESNET50_STEPS = 40


def specs(quick=False):
    if quick:
        return {"resnet8": runs.RunSpec(method="lars", model="resnet8", batch_size=256, learning_rate=C, epochs=1,
                                          warmup_epochs=0.5, max_steps=4, statistics_every=1)}
    return {
        "resnet8": runs.RunSpec(method="lars", model="resnet8", batch_size=512, learning_rate=C * 2, epochs=3,
                                  warmup_epochs=1, statistics_every=1),
        # A whole epoch (468 steps) ran for over 80 minutes here without finishing.
        "resnet50": runs.RunSpec(method="lars", model="resnet50", image_size=64, batch_size=128, learning_rate=C / 2,
                                   epochs=1, warmup_epochs=0.25, max_steps=RESNET50_STEPS, statistics_every=1),
    }


def record_steps(last):
    """1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, ... up to `last`, and `last`."""
    steps, decade = [], 1
    while decade <= last:
        steps += [s * decade for s in (1, 1.5, 2, 3, 5, 7) if s * decade <= last and float(s * decade).is_integer()]
        decade *= 10
    return sorted(set(int(s) for s in steps) | {last})


class StatisticsRecorder(keras.callbacks.Callback):
    """Reads the optimizer's layer statistics after the chosen steps."""

    def __init__(self, steps, steps_per_epoch):
        super().__init__()
        self.steps = set(steps)
        self.steps_per_epoch = steps_per_epoch
        self.step = 0
        self.records = []
        self.variables = self.adapted = None

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step in self.steps:
            stats = keras_lars.layer_statistics.read(self.model.optimizer, self.step)
            self.variables, self.adapted = stats.variables, stats.adapted.tolist()
            self.records.append(
                dict(
                    step=self.step,
                    epoch=self.step / self.steps_per_epoch,
                    **{k: stats.values[k].tolist() for k in ("weight_norm", "gradient_norm", "local_learning_rate")},
                )
            )

    def summary(self):
        return dict(statistics=dict(variables=self.variables, adapted=self.adapted, records=self.records))


def ratios(record):
    w, g = np.array(record["weight_norm"]), np.array(record["gradient_norm"])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(g > 0, w / g, np.nan)


def run_all(out, quick=False):
    directory = runs.claim_dir(out, NAME)
    results = dict(models={})
    for model, spec in specs(quick).items():
        # Epochs of the whole training set, also for a run cut short by max_steps.
        recorder = StatisticsRecorder(record_steps(spec.steps_per_epoch * spec.epochs),
                                      data.TRAIN_EXAMPLES // spec.batch_size)
        summary = runs.run(spec, f"{directory}/runs", callbacks=[recorder], jit_compile=not quick)
        stats = summary["statistics"]
        first = stats["records"][0]
        r = ratios(first)
        kernels = np.array(stats["adapted"])
        results["models"][model] = dict(
            spec=summary["spec"],
            final_test_top1=summary["final_test_top1"],
            seconds=summary["seconds"],
            images_per_second=summary["images_per_second"],
            run_id=summary["run_id"],
            iteration_1=[
                dict(variable=v, adapted=a, weight_norm=w, gradient_norm=g, ratio=None if np.isnan(x) else float(x))
                for v, a, w, g, x in zip(stats["variables"], stats["adapted"], first["weight_norm"], first["gradient_norm"], r)
            ],
            kernel_ratio_range_iteration_1=[float(np.nanmin(r[kernels])), float(np.nanmax(r[kernels]))],
            over_training=[
                dict(step=rec["step"], epoch=rec["epoch"], **_percentiles(ratios(rec)[kernels]))
                for rec in stats["records"]
            ],
            records=stats["records"],
            variables=stats["variables"],
            adapted=stats["adapted"],
        )
    records.write_json(f"{directory}/results.json", results, indent=runs.RUN_FILE_INDENT)
    return results


def _percentiles(values):
    values = values[np.isfinite(values)]
    return dict(zip(("min", "p10", "median", "p90", "max"), np.percentile(values, [0, 10, 50, 90, 100]).tolist()))


def _short(path):
    return path.replace("/kernel", ".w").replace("/gamma", ".gamma").replace("/beta", ".beta").replace("/bias", ".b")


def plot(results, out):
    plt = plots.pyplot()
    directory = runs.claim_dir(out, NAME)
    models = list(results["models"])
    # Table 2: every variable at iteration 1.
    fig, axes = plt.subplots(len(models), 1, figsize=(12, 3.6 * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models):
        rows = results["models"][model]["iteration_1"]
        x = np.arange(len(rows))
        values = [row["ratio"] or np.nan for row in rows]
        colors = ["tab:blue" if row["adapted"] else "tab:gray" for row in rows]
        ax.bar(x, values, color=colors, width=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("||w|| / ||grad L(w)||")
        low, high = results["models"][model]["kernel_ratio_range_iteration_1"]
        ax.set_title(f"{model}: iteration 1 (initial weights). Blue: kernels (adapted), grey: BatchNorm/bias. "
                     f"Kernels span {low:.3g} to {high:.3g} ({high / low:.0f}x)", fontsize=9)
        ticks = [i for i, row in enumerate(rows) if row["adapted"]]
        if len(ticks) > 24:
            ticks = ticks[:: max(1, len(ticks) // 24)] + [ticks[-1]]
        ax.set_xticks(ticks, [_short(rows[i]["variable"]) for i in ticks], rotation=60, ha="right", fontsize=6)
        ax.set_xlabel("variable, in model order")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    plots.save(fig, f"{directory}/ratio_iteration_1.png")
    # Fig. 2: over training.
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        entry = results["models"][model]
        over = entry["over_training"]
        epochs = [o["epoch"] for o in over]
        ax.fill_between(epochs, [o["p10"] for o in over], [o["p90"] for o in over], color="tab:blue", alpha=0.2,
                        label="kernels: 10th-90th percentile")
        ax.plot(epochs, [o["median"] for o in over], color="tab:blue", lw=2, label="kernels: median")
        kernels = [i for i, a in enumerate(entry["adapted"]) if a]
        for index, color in ((kernels[0], "tab:green"), (kernels[-1], "tab:red")):
            series = [ratios(rec)[index] for rec in entry["records"]]
            ax.plot(epochs, series, "--", color=color, label=_short(entry["variables"][index]))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("epoch (log scale; first point: iteration 1)")
        ax.set_ylabel("||w|| / ||grad L(w)||")
        spec = entry["spec"]
        length = f"{spec['max_steps']} steps" if spec["max_steps"] else f"{spec['epochs']} epoch(s)"
        ax.set_title(f"{model}, LARS, B = {spec['batch_size']}, {length}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    plots.save(fig, f"{directory}/ratio_over_training.png")


def main(argv=None):
    args = cli.parse_args(__doc__.splitlines()[0], argv)
    plot(run_all(args.out, args.quick), args.out)


if __name__ == "__main__":
    main()
