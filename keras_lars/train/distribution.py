"""Picks the tf.distribute strategy, the precision and XLA for a run."""

import json
import os

import keras
import tensorflow as tf

from keras_lars.train.errors import TrainerError, UsageError

# --steps-per-loop 0: many steps per host call where a host round trip idles
# the device (Model Garden's ResNet custom-loop runs use 500, its
# TrainerConfig default is 1000); on CPU the best in
# benchmarks/steps_per_loop.py.
ACCELERATOR_STEPS_PER_LOOP = 500
CPU_STEPS_PER_LOOP = 10


class DistributionError(TrainerError):
    """A strategy that cannot run here; its message is one line for the user."""


def split_cpu(devices):
    """Splits the first physical CPU into `devices` logical ones (a real
    multi-replica MirroredStrategy on a CPU-only machine). Must run before
    TensorFlow initialises its devices."""
    if devices <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * devices)


def _tpu_resolver(required):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return resolver
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        if required:
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DistributionError(f"--distribution tpu: no TPU found ({first_line}).") from None
        return None


def make_strategy(name):
    """Returns the `tf.distribute.Strategy` named by `--distribution`.

    Args:
        name: "auto" (TPU if a TPU resolver finds one, else MirroredStrategy
            over the GPUs when there are several, else the default strategy),
            "default", "one_device" (the first GPU, else the CPU), "mirrored"
            (all local GPUs, else all logical CPUs), "multi_worker_mirrored"
            (workers from TF_CONFIG) or "tpu".

    Raises:
        DistributionError: "tpu" without a TPU, "multi_worker_mirrored"
            without a TF_CONFIG naming workers.
    """
    # MultiWorkerMirroredStrategy must come before anything initialises TF's context.
    if name == "multi_worker_mirrored":
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
        if not cluster.get("worker"):
            raise DistributionError(
                "--distribution multi_worker_mirrored needs TF_CONFIG with cluster.worker and task "
                '(e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}).'
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        resolver = _tpu_resolver(required=False) if _may_have_tpu() else None
        if resolver is not None:
            return tf.distribute.TPUStrategy(resolver)
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "tpu":
        return tf.distribute.TPUStrategy(_tpu_resolver(required=True))
    raise ValueError(f"Unknown --distribution {name!r}.")


def _may_have_tpu():
    # The resolver probes the GCE metadata server; skip it where nothing says TPU.
    return bool(os.environ.get("TPU_NAME") or os.environ.get("TPU_ACCELERATOR_TYPE") or os.path.exists("/dev/accel0")
                or os.path.exists("/dev/vfio/0"))


def is_tpu(strategy):
    return isinstance(strategy, tf.distribute.TPUStrategy)


def is_chief(strategy):
    """True on the worker that writes logs and the real checkpoints (task 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    return resolver.task_type in (None, "chief") or (resolver.task_type == "worker" and resolver.task_id == 0
                                                     and "chief" not in resolver.cluster_spec().as_dict())


def check_batch(global_batch_size, gradient_accumulation_steps, strategy):
    """Raises UsageError (a ValueError) unless each micro-batch splits evenly
    over the replicas."""
    replicas = strategy.num_replicas_in_sync
    micro = global_batch_size // gradient_accumulation_steps
    if micro % replicas:
        raise UsageError(
            f"--global-batch-size {global_batch_size} with --gradient-accumulation-steps "
            f"{gradient_accumulation_steps} gives micro-batches of {micro} examples, which do not split evenly "
            f"over {replicas} replicas: use a global batch that is a multiple of {replicas * gradient_accumulation_steps}."
        )


def resolve_dtype(setting, strategy):
    """The Keras dtype policy name: "auto" is mixed_bfloat16 on TPU, else float32."""
    if setting == "auto":
        return "mixed_bfloat16" if is_tpu(strategy) else "float32"
    return setting


def has_accelerator(strategy):
    """True on TPU or with a GPU."""
    return is_tpu(strategy) or bool(tf.config.list_logical_devices("GPU"))


def resolve_steps_per_loop(setting, strategy):
    """Optimizer steps per host call: `setting`, or for 0 (auto)
    `ACCELERATOR_STEPS_PER_LOOP` on GPU/TPU and `CPU_STEPS_PER_LOOP` on CPU
    (loops end at epoch and checkpoint boundaries whatever the setting)."""
    if setting:
        return setting
    return ACCELERATOR_STEPS_PER_LOOP if has_accelerator(strategy) else CPU_STEPS_PER_LOOP


def resolve_xla(setting, strategy):
    """XLA for the per-replica step: auto is on with a GPU or TPU, off on CPU
    (where XLA:CPU runs these convolutions slower: docs/measurements.md)."""
    if setting != "auto":
        return setting == "on"
    return has_accelerator(strategy)


def set_precision(dtype_policy):
    keras.mixed_precision.set_dtype_policy(dtype_policy)
