"""Per-layer statistics of LARS and CLARS: reading them, logging them every N
steps (CSV and TensorBoard), and the gradient variance factor M_k offline.

An optimizer built with `layer_statistics=True` records, at every applied
step and for every trainable variable, the values named by its
`statistic_names()` (`keras_lars.update.STATISTICS`, plus
`keras_lars.clars.CLARS_STATISTICS` for CLARS): the quantities of the LARS
paper's Table 2 (||w||, ||g||, their ratio) and Fig. 2 (the local learning
rate), and of the CLARS paper's Fig. 2 (M_k). `read` returns them;
`LayerStatisticsLogger` (a Keras callback) and `LayerStatisticsWriter` (the
trainer's `--layer-statistics-every`) write them to `layer_statistics.csv`
and TensorBoard; `python -m keras_lars.plots RUN_DIR` draws them.
"""

import csv
import dataclasses
import os
import re

import keras
import numpy as np

from keras_lars import _compat
from keras_lars._backend import variable_path

#: The file `LayerStatisticsLogger` and the trainer append rows to.
CSV_NAME = "layer_statistics.csv"
# Statistics spanning orders of magnitude: TensorBoard histograms of log10.
_HISTOGRAMS = ("weight_norm", "gradient_norm", "trust_ratio", "local_learning_rate", "update_ratio",
               "gradient_variance_factor")


@dataclasses.dataclass
class LayerStatistics:
    """One step's statistics.

    Attributes:
        step: int, the optimizer step (`iterations`) they were read at.
        variables: list of str, the variables' paths in the optimizer's
            (the model's) order.
        adapted: bool array (V,), whether each variable's learning rate is
            adapted (not excluded from layer adaptation).
        values: dict statistic name -> float32 array (V,). NaN where a value
            does not exist (CLARS statistics of a variable CLARS does not
            adapt); zeros before the first applied step.
    """

    step: int
    variables: list
    adapted: np.ndarray
    values: dict

    def rows(self):
        """One dict per variable: step, variable, adapted, then the values."""
        for j, path in enumerate(self.variables):
            row = {"step": self.step, "variable": path, "adapted": int(self.adapted[j])}
            row.update({name: float(column[j]) for name, column in self.values.items()})
            yield row


def _lars_optimizer(optimizer):
    from keras_lars.lars import LARS

    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    if not isinstance(inner, LARS) or not inner.layer_statistics:
        raise ValueError(
            "Layer statistics need a keras_lars.LARS or CLARS optimizer built with "
            f"layer_statistics=True; got {type(inner).__name__}"
            + ("" if not isinstance(inner, LARS) else " with layer_statistics=False")
            + "."
        )
    return inner


def check_optimizer(optimizer):
    """Raises ValueError unless `optimizer` (or the optimizer a
    `LossScaleOptimizer` wraps) is LARS/CLARS with `layer_statistics=True`."""
    _lars_optimizer(optimizer)


def read(optimizer, step=None):
    """The statistics of `optimizer`'s last applied step, on the host.

    Args:
        optimizer: a built `LARS`/`CLARS` with `layer_statistics=True`, or a
            `LossScaleOptimizer` around one.
        step: int to report as the step; None: `optimizer.iterations`.

    Returns:
        A `LayerStatistics`.

    Raises:
        ValueError: for another optimizer, statistics off, or an optimizer
            not built yet (no step taken).
    """
    inner = _lars_optimizer(optimizer)
    if not inner.built:
        raise ValueError("The optimizer is not built yet (no step has been taken): no statistics to read.")
    kept = [(v, s) for v, s in zip(_compat.optimizer_variables(inner), inner.layer_statistics_variables) if s is not None]
    table = np.stack([np.asarray(keras.ops.convert_to_numpy(s)) for _, s in kept])
    variables = [v for v, _ in kept]
    return LayerStatistics(
        step=int(keras.ops.convert_to_numpy(inner.iterations)) if step is None else int(step),
        variables=[variable_path(v) for v in variables],
        adapted=np.array(inner.adapts(variables), bool),
        values={name: table[:, j] for j, name in enumerate(inner.statistic_names())},
    )


def gradient_variance_factor(squared_norms, gradient):
    """M_k = ((1/B) sum_i ||g_{k,i}||^2) / ||g_k||^2 for one variable (Huo et
    al., Assumption 2 and Fig. 2), >= 1 by Jensen's inequality.

    Args:
        squared_norms: (B,) per-example squared gradient norms ||g_{k,i}||^2,
            e.g. from `keras_lars.per_example_squared_norms`.
        gradient: the batch's mean gradient g_k, any shape.

    Returns:
        A float.
    """
    squared_norms = np.asarray(squared_norms, np.float64)
    gradient = np.asarray(gradient, np.float64)
    return float(squared_norms.mean() / np.sum(np.square(gradient)))


class LayerStatisticsWriter:
    """Appends statistics to `<directory>/layer_statistics.csv` (one row per
    variable and step) and, optionally, to TensorBoard in `<directory>`:
    for each statistic a histogram over the adapted variables (log10 for
    those spanning orders of magnitude) and scalars for `scalar_variables`.

    Args:
        directory: str, created if missing. An existing CSV is appended to
            (a resumed run), if its columns match.
        tensorboard: bool, also write TensorBoard summaries (needs TensorFlow).
        tensorboard_dir: str, where they go; None: `directory`.
        scalar_variables: None (default: the first and the last adapted
            variables, e.g. the first convolution's and the classifier's
            kernels) or a list of regexes searched in variable paths; one
            TensorBoard scalar per statistic for each variable matched.

    Raises:
        ValueError: at the first `write`, for a regex of `scalar_variables`
            that matches no variable, or a CSV with other columns.
        ImportError: with `tensorboard=True` and no TensorFlow.
    """

    def __init__(self, directory, *, tensorboard=True, tensorboard_dir=None, scalar_variables=None):
        self.directory = directory
        self.csv_path = os.path.join(directory, CSV_NAME)
        self.scalar_variables = None if scalar_variables is None else [re.compile(p) for p in scalar_variables]
        self._summary_writer = None
        if tensorboard:
            try:
                import tensorflow as tf
            except ImportError as error:
                raise ImportError("TensorBoard logging of layer statistics needs TensorFlow; "
                                  "pass tensorboard=False to write only the CSV file.") from error
            self._summary_writer = tf.summary.create_file_writer(tensorboard_dir or directory)
        self._scalar_indices = None

    def write(self, optimizer, step=None):
        """Reads `optimizer`'s statistics (see `read`) and writes them at
        `step` (None: the optimizer's iterations). Returns the
        `LayerStatistics`."""
        statistics = read(optimizer, step)
        if self._scalar_indices is None:
            self._scalar_indices = self._choose_scalars(statistics)
        self._write_csv(statistics)
        if self._summary_writer is not None:
            self._write_tensorboard(statistics)
        return statistics

    def _choose_scalars(self, statistics):
        if self.scalar_variables is None:
            adapted = np.flatnonzero(statistics.adapted)
            return sorted({int(adapted[0]), int(adapted[-1])}) if adapted.size else []
        chosen = []
        for pattern in self.scalar_variables:
            matched = [j for j, path in enumerate(statistics.variables) if pattern.search(path)]
            if not matched:
                raise ValueError(
                    f"scalar_variables pattern {pattern.pattern!r} matches no variable; the variables are "
                    f"{statistics.variables[:3]} ... {statistics.variables[-2:]}."
                )
            chosen += [j for j in matched if j not in chosen]
        return chosen

    def _write_csv(self, statistics):
        columns = ["step", "variable", "adapted"] + list(statistics.values)
        os.makedirs(self.directory, exist_ok=True)
        new = not os.path.exists(self.csv_path) or os.path.getsize(self.csv_path) == 0
        if not new:
            with open(self.csv_path, newline="") as f:
                header = next(csv.reader(f), [])
            if header != columns:
                raise ValueError(
                    f"{self.csv_path} has the columns {header}, not this optimizer's {columns}: "
                    "write to another directory."
                )
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, columns)
            if new:
                writer.writeheader()
            writer.writerows(statistics.rows())

    def _write_tensorboard(self, statistics):
        import tensorflow as tf

        adapted = statistics.adapted
        with self._summary_writer.as_default(step=statistics.step):
            for name, column in statistics.values.items():
                values = column[adapted & np.isfinite(column)]
                if name in _HISTOGRAMS:
                    values = np.log10(values[values > 0])
                    name = f"log10_{name}"
                if values.size:
                    tf.summary.histogram(f"layers/{name}", values)
            for j in self._scalar_indices:
                for name, column in statistics.values.items():
                    tf.summary.scalar(f"{name}/{statistics.variables[j]}", column[j])
        self._summary_writer.flush()

    def close(self):
        if self._summary_writer is not None:
            self._summary_writer.close()


class LayerStatisticsLogger(keras.callbacks.Callback):
    """Writes LARS/CLARS per-layer statistics every N optimizer steps during
    `model.fit` (see `LayerStatisticsWriter` for the files).

    ```python
    model.compile(optimizer=keras_lars.LARS(..., layer_statistics=True), ...)
    model.fit(..., callbacks=[keras_lars.LayerStatisticsLogger("runs/x", every_n_steps=50)])
    ```

    Then `python -m keras_lars.plots runs/x`. The step is the number of
    train batches run (from the optimizer's `iterations` when `fit` starts);
    at each multiple of N (with `steps_per_execution` > 1, at the end of the
    execution that passes it) the values of the last applied step are
    written (with gradient accumulation, of the last full step).

    Args:
        log_dir: str, where `layer_statistics.csv` and the TensorBoard events go.
        every_n_steps: int >= 1.
        tensorboard, scalar_variables: as `LayerStatisticsWriter`.

    Raises:
        ValueError: at construction for a bad `every_n_steps`; at the start of
            training if the model's optimizer has no layer statistics.
    """

    def __init__(self, log_dir, every_n_steps=100, *, tensorboard=True, scalar_variables=None):
        super().__init__()
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"`every_n_steps` must be an int >= 1. Received: {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        self.writer = LayerStatisticsWriter(log_dir, tensorboard=tensorboard, scalar_variables=scalar_variables)
        self._step = self._epoch_start = 0

    def on_train_begin(self, logs=None):
        check_optimizer(self.model.optimizer)
        # Steps are counted here, not read from `iterations` at every batch:
        # on JAX that would need a state sync per step.
        self._step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self._epoch_start = self._step

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._step

    def on_train_batch_end(self, batch, logs=None):
        previous, self._step = self._step, self._epoch_start + batch + 1
        if self._step // self.every_n_steps > previous // self.every_n_steps:
            if hasattr(self.model, "jax_state_sync"):
                self.model.jax_state_sync()  # JAX keeps the state outside the variables during fit
            self.writer.write(self.model.optimizer, self._step)

    def on_train_end(self, logs=None):
        self.writer.close()
