"""Claim 3 (CLARS Fig. 2): the gradient variance factor M_k per layer over
the first epochs, larger in the top layers.

    python -m experiments.gradient_variance [--quick] [--out docs/results]

As the paper describes: momentum SGD (Nesterov, beta 0.9), constant LR 0.001,
batch 128, no weight decay; fcn5 and cnn5 (5-layer sigmoid nets) for 10
epochs, ResNet-8 for 6. At step 0 and every half epoch,

    M_k = ((1/n) sum_i ||grad_k f_i(w)||^2) / ||(1/n) sum_i grad_k f_i(w)||^2

over a fixed set of n = 10,000 training examples, from exact per-example
gradients (`keras_lars.per_example_squared_norms`, not the authors'
mini-batches of 8), for every kernel (biases and BatchNorm left out).
ResNet-8 is evaluated with BatchNorm in inference mode (moving statistics),
so each f_i depends on example i alone.
"""

import numpy as np

import keras
import keras_lars

from experiments import cli, data, plots, runs
from keras_lars.train import records

NAME = "gradient_variance"
EPOCHS = {"fcn5": 10, "cnn5": 10, "resnet8": 6}
BATCH = 128
LEARNING_RATE = 0.001
EVAL_EXAMPLES = 10000
CHUNK = 1000
EVALS_PER_EPOCH = 2

QUICK = dict(epochs={"fcn5": 2, "resnet8": 1}, max_steps=2, eval_examples=128, evals_per_epoch=2)


class GradientVarianceProbe(keras.callbacks.Callback):
    """Records M_k for every kernel at step 0 and every `every_n_steps` steps.

    Args:
        x, y: the fixed evaluation examples, NumPy (n, ...) and (n,).
        every_n_steps: int >= 1.
        steps_per_epoch: int, to report the time in epochs.
        chunk: examples per forward/backward pass.
    """

    def __init__(self, x, y, every_n_steps, steps_per_epoch, chunk=CHUNK):
        super().__init__()
        self.x, self.y = x, y
        self.every_n_steps = every_n_steps
        self.steps_per_epoch = steps_per_epoch
        self.chunk = chunk
        self.loss = keras.losses.SparseCategoricalCrossentropy()
        self.step = 0
        self.records = []

    def _kernels(self):
        return [v for v in self.model.trainable_variables if len(v.shape) >= 2]

    def on_train_begin(self, logs=None):
        self._record()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every_n_steps == 0:
            self._record()

    def _record(self):
        kernels = self._kernels()
        n = len(self.x)
        squared = np.zeros(len(kernels))
        gradient = [np.zeros(v.shape, np.float64) for v in kernels]
        for start in range(0, n, self.chunk):
            x, y = self.x[start:start + self.chunk], self.y[start:start + self.chunk]
            per_example, gradients, _ = keras_lars.per_example_squared_norms(
                self.model, x, y, self.loss, kernels, training=False
            )
            squared += [float(np.sum(s)) for s in per_example]
            # `gradients` is the chunk's mean gradient.
            gradient = [total + len(x) * np.asarray(g, np.float64) for total, g in zip(gradient, gradients)]
        mean_squared = squared / n
        gradient_squared = np.array([np.sum(np.square(total / n)) for total in gradient])
        self.records.append(
            dict(
                step=self.step,
                epoch=self.step / self.steps_per_epoch,
                gradient_variance_factor=(mean_squared / gradient_squared).tolist(),
                mean_squared_per_example_norm=mean_squared.tolist(),
                squared_gradient_norm=gradient_squared.tolist(),
            )
        )

    def summary(self):
        return dict(gradient_variance=dict(variables=[v.path for v in self._kernels()], records=self.records))


def spec(model, epochs, max_steps=0):
    return runs.RunSpec(
        method="sgd",  # LARS with no layer adaptation: plain momentum SGD
        batch_size=BATCH,
        learning_rate=LEARNING_RATE,
        epochs=epochs,
        warmup_epochs=0,
        model=model,
        weight_decay=0.0,
        momentum=0.9,
        nesterov=True,
        power=0,  # constant LR
        max_steps=max_steps,
    )


def run_all(out, quick=False):
    directory = runs.claim_dir(out, NAME)
    s = QUICK if quick else dict(epochs=EPOCHS, max_steps=0, eval_examples=EVAL_EXAMPLES, evals_per_epoch=EVALS_PER_EPOCH)
    x, y, _, _ = data.fashion_mnist()
    x_eval, y_eval = x[: s["eval_examples"]], y[: s["eval_examples"]]
    results = dict(batch_size=BATCH, learning_rate=LEARNING_RATE, eval_examples=s["eval_examples"], models={})
    for model, epochs in s["epochs"].items():
        run_spec = spec(model, epochs, s["max_steps"])
        steps = run_spec.steps_per_epoch
        probe = GradientVarianceProbe(x_eval, y_eval, max(1, steps // s["evals_per_epoch"]), steps)
        summary = runs.run(run_spec, f"{directory}/runs", callbacks=[probe], jit_compile=not quick)
        results["models"][model] = dict(
            epochs=epochs,
            final_test_top1=summary["final_test_top1"],
            seconds=summary["seconds"],
            run_id=summary["run_id"],
            **summary["gradient_variance"],
        )
    records.write_json(f"{directory}/results.json", results, indent=runs.RUN_FILE_INDENT)
    return results


def verdict_numbers(results):
    """Per model: the fraction of evaluations after step 0 within the first
    epochs at which the top kernel's M_k exceeds the bottom kernel's, and
    Spearman's rank correlation of M_k with depth, averaged over them."""
    numbers = {}
    for model, entry in results["models"].items():
        records = [r for r in entry["records"] if r["step"] > 0]
        m = np.array([r["gradient_variance_factor"] for r in records])
        depth = np.arange(m.shape[1])
        correlations = [_spearman(depth, row) for row in m]
        numbers[model] = dict(
            top_above_bottom=float(np.mean(m[:, -1] > m[:, 0])) if len(m) else None,
            mean_rank_correlation_with_depth=float(np.mean(correlations)) if correlations else None,
        )
    return numbers


def _spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if np.std(ra) == 0 or np.std(rb) == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def plot(results, out):
    plt = plots.pyplot()
    directory = runs.claim_dir(out, NAME)
    models = list(results["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(5.6 * len(models), 4.4), squeeze=False, layout="constrained")
    for ax, model in zip(axes[0], models):
        entry = results["models"][model]
        epochs = [r["epoch"] for r in entry["records"]]
        m = np.array([r["gradient_variance_factor"] for r in entry["records"]])
        names = entry["variables"]
        colors = plt.cm.viridis(np.linspace(0, 0.95, len(names)))
        for k, name in enumerate(names):
            label = name.split("/")[0] if len(names) <= 8 or k in (0, len(names) - 1) else None
            ax.plot(epochs, m[:, k], "-o", ms=3, color=colors[k], label=label)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("gradient variance factor M_k")
        ax.set_title(f"{model} (dark: bottom layer, yellow: top)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", framealpha=0.7)
    fig.suptitle(f"CLARS Fig. 2 on Fashion-MNIST: exact per-example M_k over {results['eval_examples']:,} "
                 f"training examples (momentum SGD, LR {results['learning_rate']}, batch {results['batch_size']})",
                 fontsize=10)
    plots.save(fig, f"{directory}/gradient_variance.png")


def main(argv=None):
    args = cli.parse_args(__doc__.splitlines()[0], argv)
    results = run_all(args.out, args.quick)
    results["verdict_numbers"] = verdict_numbers(results)
    records.write_json(f"{runs.claim_dir(args.out, NAME)}/results.json", results, indent=runs.RUN_FILE_INDENT)
    plot(results, args.out)


if __name__ == "__main__":
    main()
