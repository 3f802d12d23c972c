"""A training run of the experiments: its spec, the three optimizers on one
schedule, and cached `model.fit` runs (the data: `experiments.data`; the
networks: `experiments.models`).

A run is described by a `RunSpec` (a frozen dataclass). `run(spec, cache_dir)`
trains it once with `model.fit` and writes `cache_dir/<spec.run_id()>.json`
(the spec, test top-1 and train loss per epoch, wall time, divergence, the
software and CPU it ran on); a later call with the same spec reads that file
instead of training, so a suite resumes where it stopped. The run files are
committed, so a fresh clone trains nothing.

Runs are bit-reproducible on any machine with AVX2 and the CPU model they
record (not across CPU models: docs/results.md, "Reproducibility"):
`configure_runtime()` (called by every entry point before TensorFlow runs an
op) pins the instruction set the kernels use, one thread and op determinism
(`experiments.runtime`), and `run` seeds Python, NumPy and TensorFlow from
`spec.seed` before it builds the datasets (the shuffle's seed pair includes
TensorFlow's global seed, so an unseeded process and one that had trained
another run shuffled differently). `python -m experiments.reproduce RUN.json`
retrains a committed run and compares its numbers exactly.

The three methods differ only in the trust ratio and the warmup:

- "sgd": momentum SGD with coupled L2 weight decay (Goyal et al. 2017), i.e.
  `keras_lars.LARS` with every variable excluded from layer adaptation
  (lambda = 1): the same update, momentum form and decay as LARS otherwise.
- "lars": `keras_lars.LARS` (You et al. 2017, Algorithm 1).
- "clars": `keras_lars.CLARS` (Huo et al. 2021, Eq. 5) with
  `keras_lars.attach_per_example_norms`.

All use `keras_lars.schedules.WarmupPolynomialDecay` (linear warmup from 0,
then polynomial decay of power 2 to `END_LEARNING_RATE`, MLPerf's shape);
biases and BatchNorm parameters get neither adaptation nor weight decay.
"""

import dataclasses
import hashlib
import json
import math
import os
import time

import keras

import keras_lars
from experiments import precise_bn, runtime
from experiments.data import TRAIN_EXAMPLES, datasets, precise_bn_images
from experiments.models import BATCH_NORM_MODELS, MODELS, build_model
from keras_lars.train import hyperparameters as hp, optimizers
from keras_lars.train.records import read_json, write_json

METHODS = ("sgd", "lars", "clars")
END_LEARNING_RATE = 1e-4


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run.

    Attributes:
        method: one of `METHODS`.
        batch_size: int, the global batch (examples per optimizer step).
        learning_rate: float > 0, the peak LR gamma reached after warmup (for
            "sgd", already scaled by the linear scaling rule).
        epochs: int >= 1; an epoch is 60,000 // batch_size steps (the last
            partial batch is dropped).
        warmup_epochs: float >= 0, linear warmup length in epochs.
        model: one of `MODELS`.
        eta: trust coefficient (ignored by "sgd").
        weight_decay: coupled L2 coefficient beta (all methods).
        momentum: float in [0, 1).
        nesterov: bool.
        power: polynomial decay power; 0 keeps the LR constant after warmup.
        image_size: int, square input size (Fashion-MNIST is 28; resnet50 uses
            64: images are resized and repeated to 3 channels).
        seed: int, seeds the initial weights and the data order.
        max_steps: int, 0 (all) or a cap on optimizer steps per epoch; then
            only the first 1,000 test images are evaluated (the `--quick` mode).
        statistics_every: int, 0 or log `keras_lars` layer statistics every N
            steps (LARS/CLARS/SGD-as-LARS only).
        validation_examples: int in [0, 60000), the last this many of the
            60,000 training images, held out: never trained on, evaluated
            after every epoch (`validation_top1`). 0: none (runs before
            issue 44).
        batch_norm_momentum: float in [0, 1), the momentum of mlp3's and
            cnn3's BatchNorm layers (Keras's default 0.99 in runs before
            issue 44; the trainer's and MLPerf's is 0.9), or None for a model
            without BatchNorm. The trainer's ResNets use the trainer's 0.9.
        adapt_biases: bool; True gives every variable of rank <= 1 (biases,
            and BatchNorm's gamma and beta where present) LARS's or CLARS's
            trust ratio instead of the global LR (they stay out of weight
            decay). False: the library's default exclusion.
    """

    method: str
    batch_size: int
    learning_rate: float
    epochs: int
    warmup_epochs: float = 0.0
    model: str = "resnet8"
    eta: float = hp.ETA.default
    weight_decay: float = hp.WEIGHT_DECAY.default
    momentum: float = hp.MOMENTUM.default
    nesterov: bool = False
    power: float = hp.POLY_POWER.default
    image_size: int = 28
    seed: int = hp.SEED.default
    max_steps: int = 0
    statistics_every: int = 0
    validation_examples: int = 0
    batch_norm_momentum: float | None = 0.99
    adapt_biases: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}. Received: {self.method!r}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}. Received: {self.model!r}")
        if not (isinstance(self.validation_examples, int) and 0 <= self.validation_examples < TRAIN_EXAMPLES):
            raise ValueError(f"validation_examples must be an int in [0, {TRAIN_EXAMPLES}). "
                             f"Received: {self.validation_examples!r}")
        train = TRAIN_EXAMPLES - self.validation_examples
        if not (isinstance(self.batch_size, int) and 1 <= self.batch_size <= train):
            raise ValueError(f"batch_size must be an int in [1, {train}] (the training images left after the "
                             f"validation split). Received: {self.batch_size!r}")
        for name, hyperparameter in SHARED_HYPERPARAMETERS.items():
            hyperparameter.check(name, getattr(self, name))
        if self.batch_norm_momentum is not None and not 0 <= self.batch_norm_momentum < 1:
            raise ValueError(f"batch_norm_momentum must be None or in [0, 1). Received: {self.batch_norm_momentum!r}")
        if self.batch_norm_momentum is None and self.model in BATCH_NORM_MODELS:
            raise ValueError(f"model {self.model!r} has BatchNorm: batch_norm_momentum must be in [0, 1), not None")
        if self.adapt_biases and self.method == "sgd":
            raise ValueError("adapt_biases=True needs method 'lars' or 'clars' (\"sgd\" adapts no variable). "
                             f"Received: method={self.method!r}")

    @property
    def train_examples(self):
        return TRAIN_EXAMPLES - self.validation_examples

    @property
    def steps_per_epoch(self):
        steps = self.train_examples // self.batch_size
        return min(steps, self.max_steps) if self.max_steps else steps

    def run_id(self):
        """A readable, unique file name stem for this spec. Fields added after
        the first committed runs (`ADDED_FIELDS`) enter the hash only when
        they differ from their default, so that those runs keep their ids."""
        fields = {k: v for k, v in dataclasses.asdict(self).items()
                  if k not in ADDED_FIELDS or v != ADDED_FIELDS[k]}
        text = json.dumps(fields, sort_keys=True)
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        return f"{self.model}_{self.method}_b{self.batch_size}_lr{self.learning_rate:g}_e{self.epochs}_s{self.seed}_{digest}"


# The fields checked as the trainer checks its own (`hyperparameters`).
SHARED_HYPERPARAMETERS = dict(learning_rate=hp.LEARNING_RATE, epochs=hp.EPOCHS, warmup_epochs=hp.WARMUP_EPOCHS,
                              eta=hp.ETA, weight_decay=hp.WEIGHT_DECAY, momentum=hp.MOMENTUM, power=hp.POLY_POWER,
                              seed=hp.SEED)
RUN_FILE_INDENT = 1  # the committed run and results files' JSON layout
# Fields added to RunSpec after runs were committed, with their defaults.
ADDED_FIELDS = dict(validation_examples=0, batch_norm_momentum=0.99, adapt_biases=False)


def configure_runtime():
    """The pinned runtime of `experiments.runtime` (instruction-set caps, one
    thread, op determinism). Call before TensorFlow runs any op."""
    runtime.configure()


def environment():
    """What a run's numbers depend on besides its spec (`runtime.environment`)."""
    return runtime.environment()

def build_optimizer(spec):
    """The optimizer of `spec` (`keras_lars.train.optimizers`): "sgd" is
    "lars_sgd" there (LARS with nothing adapted); power 0 keeps the LR
    constant after warmup."""
    schedule = optimizers.mlperf_schedule(
        spec.learning_rate, spec.steps_per_epoch, spec.epochs, spec.warmup_epochs,
        END_LEARNING_RATE if spec.power else spec.learning_rate, spec.power or 1.0,
    )
    options = dict(nesterov=spec.nesterov, eta=spec.eta, layer_statistics=spec.statistics_every > 0)
    if spec.method != "sgd":
        options["adapt_biases"] = spec.adapt_biases
    return optimizers.build_optimizer("lars_sgd" if spec.method == "sgd" else spec.method, schedule,
                                      momentum=spec.momentum, weight_decay=spec.weight_decay, **options)


class _EpochLog(keras.callbacks.Callback):
    """Records each epoch's numbers: fit's own (train loss and top-1, test
    top-1 as fit's validation data) and, when given, validation top-1; after
    the last epoch also both top-1s under precise BatchNorm statistics
    computed over `precise_bn_images` (the moving statistics restored)."""

    def __init__(self, validation=None, test=None, precise_bn_images=None):
        super().__init__()
        self.validation, self.test, self.precise_bn_images = validation, test, precise_bn_images
        self.epochs = []
        self.start = time.time()

    def _top1(self, dataset):
        return _finite(self.model.evaluate(dataset, verbose=0, return_dict=True)["accuracy"])

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        record = dict(
            epoch=epoch + 1,
            train_loss=_finite(logs.get("loss")),
            train_top1=_finite(logs.get("accuracy")),
            test_top1=_finite(logs.get("val_accuracy")),
        )
        if self.validation is not None:
            record["validation_top1"] = self._top1(self.validation)
        last = epoch + 1 == self.params.get("epochs")
        if self.precise_bn_images is not None and last and record["train_loss"] is not None:
            with precise_bn.precise_statistics(self.model, self.precise_bn_images):
                record["validation_top1_precise_bn"] = self._top1(self.validation)
                record["test_top1_precise_bn"] = self._top1(self.test)
        record["seconds"] = round(time.time() - self.start, 1)
        self.epochs.append(record)


def _finite(value):
    return float(value) if value is not None and math.isfinite(float(value)) else None


def build(spec, jit_compile=True):
    """(model, optimizer) for `spec`, compiled (and CLARS's taps attached)."""
    keras.utils.set_random_seed(spec.seed)
    model = build_model(spec.model, spec.image_size, spec.batch_norm_momentum)
    optimizer = build_optimizer(spec)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    if spec.method == "clars":
        keras_lars.attach_per_example_norms(model)
    return model, optimizer


def read_cached(spec, cache_dir):
    """The cached summary of `spec` in `cache_dir`, or None (also for a run
    made under other instruction-set caps than this process's: it is
    retrained, and its file replaced)."""
    path = os.path.join(cache_dir, spec.run_id() + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        summary = json.load(f)
    recorded = summary.get("environment", {})
    if any(recorded.get(key) != value for key, value in runtime.caps().items()):
        return None
    return summary


def run(spec, cache_dir, callbacks=(), log=print, jit_compile=True):
    """Trains `spec` (or reads its cached summary) and returns the summary dict:
    {"spec", "run_id", "epochs": [{epoch, train_loss, train_top1, test_top1,
    [validation_top1,] seconds}], "final_test_top1", "best_test_top1",
    "diverged", "seconds", "images_per_second", "environment"}; with a
    validation split also "final_validation_top1", and for a model with
    BatchNorm "batch_norm_momentum" and the final top-1s under precise
    BatchNorm statistics ("final_validation_top1_precise_bn",
    "final_test_top1_precise_bn", also in the last epoch's record). A diverged
    run (non-finite loss) stops early with `diverged` true and the final
    top-1s None."""
    cached = read_cached(spec, cache_dir)
    if cached is not None:
        return cached
    path = os.path.join(cache_dir, spec.run_id() + ".json")
    keras.utils.set_random_seed(spec.seed)  # before the datasets: their shuffle seed depends on it
    train, validation, test = datasets(spec)
    model, _ = build(spec, jit_compile)
    batch_norm = bool(precise_bn.batch_norm_layers(model))
    precise = precise_bn_images(spec) if batch_norm and validation is not None else None
    epoch_log = _EpochLog(validation, test, precise)
    start = time.time()
    history = model.fit(
        train,
        epochs=spec.epochs,
        validation_data=test,
        callbacks=[keras.callbacks.TerminateOnNaN(), epoch_log, *callbacks],
        verbose=0,
    )
    seconds = time.time() - start
    losses = history.history.get("loss", [])
    diverged = len(losses) < spec.epochs or not all(math.isfinite(v) for v in losses)
    if diverged:
        epoch_log.epochs = [e for e in epoch_log.epochs if e["train_loss"] is not None]
    tops = [e["test_top1"] for e in epoch_log.epochs if e["test_top1"] is not None]
    summary = dict(
        spec=dataclasses.asdict(spec),
        run_id=spec.run_id(),
        epochs=epoch_log.epochs,
        final_test_top1=None if diverged or not tops else tops[-1],
        best_test_top1=max(tops) if tops else None,
        diverged=diverged,
        seconds=round(seconds, 1),
        images_per_second=round(spec.steps_per_epoch * spec.batch_size * len(losses) / seconds, 1),
        environment=environment(),
    )
    if validation is not None:
        last = epoch_log.epochs[-1] if epoch_log.epochs and not diverged else {}
        summary["final_validation_top1"] = last.get("validation_top1")
        if batch_norm:
            summary["batch_norm_momentum"] = spec.batch_norm_momentum
            summary["precise_bn_examples"] = len(precise)
            for key in ("validation_top1_precise_bn", "test_top1_precise_bn"):
                summary["final_" + key] = last.get(key)
    for callback in callbacks:
        if hasattr(callback, "summary"):
            summary.update(callback.summary())
    os.makedirs(cache_dir, exist_ok=True)
    write_json(path, summary, indent=RUN_FILE_INDENT)
    log(
        f"{spec.run_id()}: top-1 {summary['final_test_top1']} diverged={diverged} "
        f"{seconds:.0f} s ({summary['images_per_second']:.0f} img/s)"
    )
    return summary

def claim_dir(out, name):
    path = os.path.join(out, name)
    os.makedirs(os.path.join(path, "runs"), exist_ok=True)
    return path


def write_models(path, measured, order, **fields):
    """Writes {**fields, "models": ...} to the results file `path`, keeping the
    models of an existing file that `measured` does not replace (so that
    processes can run one model each); models in the order of `order`."""
    models = {}
    if os.path.exists(path):
        models = read_json(path).get("models", {})
    models.update(measured)
    results = dict(fields, models={m: models[m] for m in order if m in models})
    write_json(path, results, indent=RUN_FILE_INDENT)
    return results
