"""Plots of per-layer statistics: `python -m keras_lars.plots RUN_DIR`.

Reads `RUN_DIR/layer_statistics.csv` (written by `LayerStatisticsLogger` or
the trainer's `--layer-statistics-every`) and writes matplotlib PNGs into
`RUN_DIR/plots` (or `--out`):

- `norms_step_<S>.png`: ||w||, ||g|| and ||w|| / ||g|| per variable at step S,
  log scale, variables in model order (the LARS paper's Table 2);
- `local_learning_rate.png`: a variable x step heatmap of the local learning
  rate gamma_t * lambda of the adapted variables (the LARS paper's Fig. 2);
- `gradient_variance.png` (CLARS runs): the gradient variance factor M_k and
  the ratio ||g_k|| / n_k per adapted variable over training (the CLARS
  paper's Fig. 2).
"""

import argparse
import csv
import os
import sys

import numpy as np

from keras_lars.layer_statistics import CSV_NAME


class StatisticsTable:
    """A statistics CSV as arrays: `values[name]` is (steps, variables).

    A resumed run may repeat steps: the last row written for a (step,
    variable) wins. Variables keep their first-seen (model) order."""

    def __init__(self, path):
        rows = {}
        variables, adapted = [], {}
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            self.names = [c for c in reader.fieldnames if c not in ("step", "variable", "adapted")]
            for row in reader:
                if row["variable"] not in adapted:
                    variables.append(row["variable"])
                adapted[row["variable"]] = row["adapted"] == "1"
                rows[(int(row["step"]), row["variable"])] = row
        if not rows:
            raise ValueError(f"{path} holds no statistics rows.")
        self.steps = np.array(sorted({step for step, _ in rows}))
        self.variables = variables
        self.adapted = np.array([adapted[v] for v in variables])
        self.values = {}
        for name in self.names:
            table = np.full((len(self.steps), len(variables)), np.nan)
            for i, step in enumerate(self.steps):
                for j, variable in enumerate(variables):
                    row = rows.get((step, variable))
                    if row is not None:
                        table[i, j] = float(row[name])
            self.values[name] = table

    def labels(self):
        """Variable paths without the prefix they all share (the model's name)."""
        first = {v.split("/", 1)[0] for v in self.variables}
        if len(first) == 1 and all("/" in v for v in self.variables):
            return [v.split("/", 1)[1] for v in self.variables]
        return list(self.variables)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def _adapted(table):
    """Indices and labels of the adapted variables."""
    adapted = np.flatnonzero(table.adapted)
    return adapted, [table.labels()[j] for j in adapted]


def plot_norms(table, step, path):
    """||w||, ||g|| and ||w||/||g|| per variable at `step` (Table 2 style)."""
    plt = _pyplot()
    i = int(np.searchsorted(table.steps, step))
    w, g = table.values["weight_norm"][i], table.values["gradient_norm"][i]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = w / g
    labels = [f"{label}{'' if a else '  (not adapted)'}" for label, a in zip(table.labels(), table.adapted)]
    y = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.24 * len(labels)))
    for values, marker, name in ((w, "o", "||w||"), (g, "s", "||g||"), (ratio, "^", "||w|| / ||g||")):
        shown = np.isfinite(values) & (values > 0)
        ax.scatter(values[shown], y[shown], marker=marker, label=name, s=28)
    ax.set_xscale("log")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()  # input layer at the top
    ax.set_xlabel("value (log scale; norms in parameter units, ratio dimensionless)")
    ax.set_title(f"Per-variable norms at optimizer step {table.steps[i]} (LARS paper, Table 2)")
    ax.grid(True, axis="x", which="major", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    _save(fig, path)


def plot_local_learning_rate(table, path):
    """Heatmap of log10(gamma_t * lambda): adapted variables x steps."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    adapted, labels = _adapted(table)
    values = table.values["local_learning_rate"][:, adapted].T
    fig, ax = plt.subplots(figsize=(10, 1.8 + 0.24 * len(labels)))
    positive = values[np.isfinite(values) & (values > 0)]
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
    edges = np.concatenate([[table.steps[0] - 0.5], (table.steps[1:] + table.steps[:-1]) / 2, [table.steps[-1] + 0.5]])
    mesh = ax.pcolormesh(edges, np.arange(len(labels) + 1), np.ma.masked_invalid(values), norm=norm,
                         cmap="viridis", shading="flat")
    ax.set_yticks(np.arange(len(labels)) + 0.5, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("optimizer step")
    ax.set_title("Local learning rate gamma_t * lambda of the adapted variables (LARS paper, Fig. 2)")
    fig.colorbar(mesh, ax=ax, label="local learning rate (log scale)")
    _save(fig, path)


def plot_gradient_variance(table, path):
    """M_k and ||g_k|| / n_k per adapted variable over training (CLARS Fig. 2)."""
    plt = _pyplot()
    adapted, labels = _adapted(table)
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.95, len(adapted)))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    panels = (
        ("gradient_variance_factor", "M_k = mean_i ||g_k,i||^2 / ||g_k||^2 (log scale)", True),
        ("gradient_variance_ratio", "||g_k|| / n_k,  n_k = mean_i ||g_k,i||", False),
    )
    for ax, (name, ylabel, log) in zip(axes, panels):
        for color, j, label in zip(colors, adapted, labels):
            ax.plot(table.steps, table.values[name][:, j], color=color, label=label, lw=1.3)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    axes[0].set_title("Gradient variance factor M_k per layer (CLARS paper, Fig. 2)")
    axes[1].set_title("Batch-gradient norm over mean per-example norm")
    if len(adapted) <= 14:
        axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), title="variable (input first)")
    else:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        mappable = ScalarMappable(norm=Normalize(0, len(adapted) - 1), cmap="viridis")
        fig.colorbar(mappable, ax=axes, label="adapted variable index (0: input side)")
    _save(fig, path)


def plot_run(run_dir, out=None, step=None):
    """Writes the PNGs for one run; returns their paths.

    Args:
        run_dir: a directory holding `layer_statistics.csv`, or the CSV itself.
        out: output directory; None: `<run_dir>/plots`.
        step: the step of the norms plot; None: the first recorded step.

    Raises:
        FileNotFoundError: no statistics file.
        ValueError: an empty file, or a `step` that was not recorded.
    """
    path = run_dir if os.path.isfile(run_dir) else os.path.join(run_dir, CSV_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no {CSV_NAME} in {run_dir}: write one with the trainer's --layer-statistics-every N or "
            "keras_lars.LayerStatisticsLogger."
        )
    table = StatisticsTable(path)
    step = int(table.steps[0]) if step is None else step
    if step not in table.steps:
        raise ValueError(f"step {step} was not recorded; recorded steps: {table.steps[:5].tolist()} ... "
                         f"{table.steps[-3:].tolist()}")
    out = out or os.path.join(os.path.dirname(path), "plots")
    os.makedirs(out, exist_ok=True)
    written = [os.path.join(out, f"norms_step_{step}.png"), os.path.join(out, "local_learning_rate.png")]
    plot_norms(table, step, written[0])
    plot_local_learning_rate(table, written[1])
    if "gradient_variance_factor" in table.values:
        written.append(os.path.join(out, "gradient_variance.png"))
        plot_gradient_variance(table, written[-1])
    return written


def build_parser():
    """The `python -m keras_lars.plots` command line."""
    parser = argparse.ArgumentParser(prog="python -m keras_lars.plots", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help=f"a directory holding {CSV_NAME} (e.g. the trainer's --output-dir)")
    parser.add_argument("--out", default=None, help="output directory (default: RUN_DIR/plots)")
    parser.add_argument("--step", type=int, default=None,
                        help="optimizer step of the norms plot (default: the first recorded)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for path in plot_run(args.run_dir, args.out, args.step):
            print(path)
    except (FileNotFoundError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
