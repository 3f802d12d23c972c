"""The trainer's configuration: one dataclass, parsed from flags in one place.

Hyperparameters that the MLPerf ResNet rules log carry the MLPerf key as
their name (`lars_opt_base_learning_rate`, ...). Those left unset (None) are
resolved in `TrainConfig.__post_init__` from the global batch, as the MLPerf
reference does (see `lars_defaults`).
"""

import argparse
import dataclasses
import math

from keras_lars.train import hyperparameters as hp
from keras_lars.train.models import check_model_name

OPTIMIZERS = ("lars", "clars", "sgd")
DISTRIBUTIONS = ("auto", "default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
DTYPES = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
SWITCHES = ("auto", "on", "off")
# MLPerf ResNet's quality target applies to ImageNet only.
MLPERF_TARGETS = {"imagenet2012": 0.759}


def lars_defaults(global_batch_size):
    """MLPerf reference defaults by global batch: (base LR, warmup epochs).

    < 16K: (10, 5); < 32K: (25, 5); otherwise (31.2, 25). `global_batch_size`
    is the effective batch of one optimizer step (after gradient accumulation).
    """
    if global_batch_size < 16384:
        return 10.0, 5.0
    if global_batch_size < 32768:
        return 25.0, 5.0
    return 31.2, 25.0


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a run; written whole into the JSON summary."""

    dataset: str = "imagenet2012"
    model: str = "resnet50"
    optimizer: str = "lars"
    global_batch_size: int = 4096
    gradient_accumulation_steps: int = 1
    epochs: int = 41
    steps_per_epoch: int = 0
    image_size: int = 0
    zero_init_residual: bool = False
    label_smoothing: float = 0.1
    lars_opt_base_learning_rate: float = None
    lars_opt_learning_rate_warmup_epochs: float = None
    lars_opt_end_learning_rate: float = 1e-4
    lars_opt_learning_rate_decay_poly_power: float = hp.POLY_POWER.default
    lars_opt_momentum: float = hp.MOMENTUM.default
    lars_opt_weight_decay: float = hp.WEIGHT_DECAY.default
    lars_epsilon: float = 0.0
    eta: float = None
    eval_every_epochs: int = 4
    eval_offset_epochs: int = 0
    target_accuracy: float = None
    steps_per_loop: int = 0
    distribution: str = "auto"
    cpu_devices: int = 1
    dtype: str = "auto"
    jit_compile: str = "auto"
    initial_loss_scale: float = 32768.0
    checkpoint_every_steps: int = 0
    layer_statistics_every: int = 0
    input_benchmark_steps: int = 10
    deterministic: bool = False
    data_dir: str = ""
    manual_dir: str = ""
    output_dir: str = "runs/default"
    seed: int = hp.SEED.default

    def __post_init__(self):
        _require(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        try:
            check_model_name(self.model)
        except ValueError as e:
            raise ValueError(f"--model: {e}") from None
        _require(self.global_batch_size >= 1, "global_batch_size", self.global_batch_size, "an int >= 1")
        _require(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps",
                 self.gradient_accumulation_steps, "an int >= 1")
        _require(self.global_batch_size % self.gradient_accumulation_steps == 0, "global_batch_size",
                 self.global_batch_size,
                 f"a multiple of --gradient-accumulation-steps ({self.gradient_accumulation_steps})")
        hp.EPOCHS.check("--epochs", self.epochs)
        self._resolve_defaults()
        _require(self.steps_per_epoch >= 0, "steps_per_epoch", self.steps_per_epoch, "an int >= 0 (0: a full pass)")
        _require(self.image_size >= 0, "image_size", self.image_size, "an int >= 0 (0: the dataset's own size)")
        _require(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "a float in [0, 1)")
        hp.LEARNING_RATE.check("--lars-opt-base-learning-rate", self.lars_opt_base_learning_rate)
        _require(_finite(self.lars_opt_end_learning_rate) and self.lars_opt_end_learning_rate >= 0,
                 "lars_opt_end_learning_rate", self.lars_opt_end_learning_rate, "a finite float >= 0")
        hp.POLY_POWER.check("--lars-opt-learning-rate-decay-poly-power", self.lars_opt_learning_rate_decay_poly_power)
        hp.MOMENTUM.check("--lars-opt-momentum", self.lars_opt_momentum)
        hp.WEIGHT_DECAY.check("--lars-opt-weight-decay", self.lars_opt_weight_decay)
        _require(_finite(self.lars_epsilon) and self.lars_epsilon >= 0, "lars_epsilon", self.lars_epsilon,
                 "a finite float >= 0")
        hp.ETA.check("--eta", self.eta)
        hp.SEED.check("--seed", self.seed)
        _require(self.eval_every_epochs >= 1, "eval_every_epochs", self.eval_every_epochs, "an int >= 1")
        _require(0 <= self.eval_offset_epochs < self.eval_every_epochs, "eval_offset_epochs",
                 self.eval_offset_epochs, f"an int in [0, --eval-every-epochs={self.eval_every_epochs})")
        _require(self.target_accuracy is None or 0 < self.target_accuracy <= 1, "target_accuracy",
                 self.target_accuracy, "a float in (0, 1]")
        _require(self.steps_per_loop >= 0, "steps_per_loop", self.steps_per_loop,
                 "an int >= 0 (0: chosen for the device)")
        _require(self.distribution in DISTRIBUTIONS, "distribution", self.distribution, f"one of {DISTRIBUTIONS}")
        _require(self.cpu_devices >= 1, "cpu_devices", self.cpu_devices, "an int >= 1")
        _require(self.dtype in DTYPES, "dtype", self.dtype, f"one of {DTYPES}")
        _require(self.jit_compile in SWITCHES, "jit_compile", self.jit_compile, f"one of {SWITCHES}")
        _require(_finite(self.initial_loss_scale) and self.initial_loss_scale > 0, "initial_loss_scale",
                 self.initial_loss_scale, "a finite float > 0")
        _require(self.checkpoint_every_steps >= 0, "checkpoint_every_steps", self.checkpoint_every_steps,
                 "an int >= 0 (0: at the end of each epoch only)")
        _require(self.layer_statistics_every >= 0, "layer_statistics_every", self.layer_statistics_every,
                 "an int >= 0 (0: off)")
        _require(not self.layer_statistics_every or self.optimizer != "sgd", "layer_statistics_every",
                 self.layer_statistics_every, "0 with --optimizer sgd (layer statistics are LARS's and CLARS's)")
        _require(self.input_benchmark_steps >= 0, "input_benchmark_steps", self.input_benchmark_steps, "an int >= 0")

    def _resolve_defaults(self):
        """Fills the hyperparameters left None: MLPerf's by global batch
        (`lars_defaults`), CLARS's (no warmup, eta 0.01), the target."""
        base_lr, warmup = lars_defaults(self.global_batch_size)
        if self.lars_opt_base_learning_rate is None:
            self.lars_opt_base_learning_rate = base_lr
        if self.eta is None:
            self.eta = 0.01 if self.optimizer == "clars" else hp.ETA.default
        if self.target_accuracy is None:
            self.target_accuracy = MLPERF_TARGETS.get(self.dataset)
        if self.lars_opt_learning_rate_warmup_epochs is not None:
            _require(_finite(self.lars_opt_learning_rate_warmup_epochs)
                     and 0 <= self.lars_opt_learning_rate_warmup_epochs <= self.epochs,
                     "lars_opt_learning_rate_warmup_epochs", self.lars_opt_learning_rate_warmup_epochs,
                     f"a float in [0, --epochs={self.epochs}]")
            return
        # CLARS replaces warmup (Huo et al.).
        self.lars_opt_learning_rate_warmup_epochs = 0.0 if self.optimizer == "clars" else warmup
        if self.lars_opt_learning_rate_warmup_epochs > self.epochs:
            raise ValueError(
                f"--lars-opt-learning-rate-warmup-epochs defaults to {warmup:g} for --global-batch-size "
                f"{self.global_batch_size} (the MLPerf reference's), more than --epochs {self.epochs}: pass "
                f"--lars-opt-learning-rate-warmup-epochs with a value in [0, {self.epochs}], or more --epochs."
            )

    @property
    def micro_batch_size(self):
        """Examples per forward/backward pass over all replicas."""
        return self.global_batch_size // self.gradient_accumulation_steps

    def eval_due(self, epoch):
        """Whether to evaluate after 1-based `epoch`: every `eval_every_epochs`
        epochs shifted by `eval_offset_epochs`, and after the last."""
        return (epoch - self.eval_offset_epochs) % self.eval_every_epochs == 0 or epoch == self.epochs


_HELP = {
    "dataset": "TFDS dataset name: imagenet2012 (needs --manual-dir with the ILSVRC2012 tars), "
    "fashion_mnist (offline from Debian's dataset-fashion-mnist), cifar10, ...",
    "model": "resnet50 (v1.5, as MLPerf) or a CIFAR-style ResNet by depth: resnet8, resnet20, resnet56, ...",
    "optimizer": "lars (keras_lars.LARS), clars (keras_lars.CLARS: per-example gradient norms, no warmup by "
    "default) or sgd (Keras SGD with momentum and decoupled weight decay, the baseline); all use the same "
    "warmup + polynomial decay schedule",
    "global_batch_size": "examples per optimizer step over all replicas and accumulated micro-batches "
    "(MLPerf global_batch_size); sets the default base LR and warmup",
    "gradient_accumulation_steps": "micro-batches of global_batch_size / N examples whose gradients are "
    "averaged into one optimizer step (MLPerf gradient_accumulation_steps)",
    "epochs": "training epochs (the schedule's length); training stops earlier at --target-accuracy",
    "steps_per_epoch": "optimizer steps per epoch; 0 is one full pass over the train split at the global "
    "batch (remainder dropped)",
    "image_size": "square training/eval image size in pixels; 0: 224 for imagenet2012, else the dataset's",
    "zero_init_residual": "initialise each ResNet-50 block's last BatchNorm gamma to 0 (Goyal et al. 2017)",
    "label_smoothing": "label smoothing of the cross-entropy loss (MLPerf: 0 or 0.1)",
    "lars_opt_base_learning_rate": "peak LR at the end of warmup; default by global batch: 10 below 16K, "
    "25 below 32K, else 31.2",
    "lars_opt_learning_rate_warmup_epochs": "linear warmup from 0, in epochs (may be fractional); default "
    "5 (25 at 32K and above) for lars and sgd, 0 for clars",
    "lars_opt_end_learning_rate": "LR at the end of the polynomial decay",
    "lars_opt_learning_rate_decay_poly_power": "power of the polynomial decay",
    "lars_opt_momentum": "momentum m",
    "lars_opt_weight_decay": "coupled weight decay beta (MLPerf: 1e-4 * 2^N); biases and BN parameters excluded",
    "lars_epsilon": "epsilon added to the trust-ratio denominator",
    "eta": "trust coefficient: default 0.001 for lars (MLPerf), 0.01 for clars (Huo et al.)",
    "eval_every_epochs": "epochs between evaluations on the whole eval split",
    "eval_offset_epochs": "shifts the evaluations: after epochs e with (e - offset) %% every == 0",
    "target_accuracy": "stop once eval top-1 reaches this; default 0.759 (MLPerf's) for imagenet2012, none "
    "(all epochs run) for other datasets",
    "steps_per_loop": "optimizer steps per host call (one tf.function running a device loop); loops also end "
    "at epoch ends and --checkpoint-every-steps and --layer-statistics-every multiples. 0: 500 on GPU/TPU, 10 on CPU (the fastest in benchmarks/steps_per_loop.py). A SIGTERM is acted on at the end of a loop (one more with several workers): on a preemptible machine keep two loops, an eval and a checkpoint within its grace period",
    "distribution": "tf.distribute strategy; auto: TPU if a TPU resolver finds one, else MirroredStrategy "
    "over several GPUs, else the default strategy. multi_worker_mirrored reads TF_CONFIG",
    "cpu_devices": "split the CPU into this many logical devices (MirroredStrategy over CPUs, for testing)",
    "dtype": "float32, mixed_float16 (with dynamic loss scaling) or mixed_bfloat16; auto: mixed_bfloat16 "
    "on TPU, else float32",
    "jit_compile": "XLA for the per-replica forward/backward and the optimizer's per-variable updates; "
    "auto: on with a GPU or TPU, off on CPU",
    "initial_loss_scale": "mixed_float16 only: the dynamic loss scale's starting value (halved after each "
    "step with non-finite gradients, which is skipped)",
    "checkpoint_every_steps": "also checkpoint every N optimizer steps (a checkpoint ends every epoch)",
    "layer_statistics_every": "every N optimizer steps, write each layer's LARS/CLARS statistics (trust ratio, "
    "local LR, norms; CLARS: n_k, M_k) to OUTPUT_DIR/layer_statistics.csv and TensorBoard "
    "(tensorboard/layer_statistics); plot with python -m keras_lars.plots OUTPUT_DIR. 0: off",
    "input_benchmark_steps": "steps of the input pipeline alone, timed before training (0: skip)",
    "deterministic": "deterministic TensorFlow ops (tf.config.experimental.enable_op_determinism)",
    "data_dir": "TFDS data directory (default: TFDS's, ~/tensorflow_datasets)",
    "manual_dir": "TFDS manual_dir holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar",
    "output_dir": "checkpoints, mlperf.log, TensorBoard logs and summary.json; a run restarted with the "
    "same output dir resumes from its latest checkpoint",
    "seed": "random seed for initialisation, shuffling and augmentation",
}


def build_parser(prog="keras-lars-train"):
    """The trainer's `argparse.ArgumentParser`: one flag per `TrainConfig` field."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train ResNet-50 on ImageNet (or a small ResNet on a small dataset) with LARS, CLARS or SGD "
        "at large batch, as the MLPerf reference does.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    choices = {"optimizer": OPTIMIZERS, "distribution": DISTRIBUTIONS, "dtype": DTYPES, "jit_compile": SWITCHES}
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default,
                                help=_HELP[field.name])
            continue
        value_type = float if field.type is float else field.type
        parser.add_argument(flag, type=value_type, default=field.default, choices=choices.get(field.name),
                            help=_HELP[field.name])
    return parser


def parse_args(argv=None, prog="keras-lars-train"):
    """Parses command-line flags (--global-batch-size, ...) into a `TrainConfig`;
    exits with status 2 and the reason on a bad value."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        return TrainConfig(**vars(args))
    except ValueError as e:
        parser.error(str(e))


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def _require(ok, name, value, accepted):
    if not ok:
        raise ValueError(f"--{name.replace('_', '-')} must be {accepted}. Received: {value!r}")
