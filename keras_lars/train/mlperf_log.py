"""MLPerf logging (`mlperf_logging.mllog`, the package the compliance checker
reads) of the ResNet benchmark's keys, to `<output_dir>/mlperf.log`."""

import logging
import os
import platform

import tensorflow as tf
from mlperf_logging.mllog.mllog import MLLogger
from mlperf_logging.mllog import constants

ORG = "keras-lars"


class MLPerfLog:
    """`:::MLLOG` lines to `path` (and nothing when `path` is None: non-chief
    workers). One run per file: a restarted run appends after the first's
    lines, and such a log is not a compliant result (the rules time one
    uninterrupted run)."""

    def __init__(self, path):
        self._logger = None
        if path is None:
            return
        logger = logging.getLogger(f"keras_lars.mlperf.{os.path.abspath(path)}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        self._handler = logging.FileHandler(path)
        logger.addHandler(self._handler)
        self._logger = MLLogger(logger=logger, default_stack_offset=2, root_dir=os.path.dirname(__file__))

    def event(self, key, value=None, **metadata):
        if self._logger:
            self._logger.event(key=key, value=value, metadata=metadata or None)

    def start(self, key, value=None, **metadata):
        if self._logger:
            self._logger.start(key=key, value=value, metadata=metadata or None)

    def end(self, key, value=None, **metadata):
        if self._logger:
            self._logger.end(key=key, value=value, metadata=metadata or None)

    def close(self):
        if self._logger:
            self._handler.close()
            self._logger.logger.removeHandler(self._handler)
            self._logger = None

    def submission(self, config, strategy):
        """The submission_* keys. Closed division only for what the closed rules
        accept: ResNet-50 on imagenet2012 with LARS or SGD."""
        closed = config.model == "resnet50" and config.dataset == "imagenet2012" and config.optimizer != "clars"
        self.event(constants.SUBMISSION_BENCHMARK, constants.RESNET)
        self.event(constants.SUBMISSION_ORG, ORG)
        self.event(constants.SUBMISSION_DIVISION, constants.CLOSED if closed else constants.OPEN)
        self.event(constants.SUBMISSION_STATUS, constants.RESEARCH)
        self.event(constants.SUBMISSION_PLATFORM, platform_name(strategy))

    def hyperparameters(self, config, train_examples, eval_examples, steps_per_epoch, warmup_steps, decay_steps):
        """Batch, sample counts and optimizer keys (the eight lars_* for LARS
        and CLARS, the sgd_* set for SGD)."""
        self.event(constants.SEED, config.seed)
        self.event(constants.GLOBAL_BATCH_SIZE, config.global_batch_size)
        self.event(constants.GRADIENT_ACCUMULATION_STEPS, config.gradient_accumulation_steps)
        self.event(constants.TRAIN_SAMPLES, train_examples)
        self.event(constants.EVAL_SAMPLES, eval_examples)
        self.event(constants.OPT_NAME, config.optimizer)
        if config.optimizer == "sgd":
            self.event("sgd_opt_base_learning_rate", config.lars_opt_base_learning_rate)
            self.event("sgd_opt_end_learning_rate", config.lars_opt_end_learning_rate)
            self.event("sgd_opt_learning_rate_decay_poly_power", config.lars_opt_learning_rate_decay_poly_power)
            self.event("sgd_opt_learning_rate_decay_steps", decay_steps)
            self.event("sgd_opt_weight_decay", config.lars_opt_weight_decay)
            self.event("sgd_opt_momentum", config.lars_opt_momentum)
            self.event("opt_learning_rate_warmup_epochs", config.lars_opt_learning_rate_warmup_epochs)
            self.event("model_bn_span", config.micro_batch_size)
            return
        self.event(constants.LARS_OPT_BASE_LEARNING_RATE, config.lars_opt_base_learning_rate)
        self.event(constants.LARS_OPT_END_LR, config.lars_opt_end_learning_rate)
        self.event(constants.LARS_OPT_LR_DECAY_POLY_POWER, config.lars_opt_learning_rate_decay_poly_power)
        self.event(constants.LARS_OPT_LR_DECAY_STEPS, decay_steps)
        self.event(constants.LARS_OPT_LEARNING_RATE_WARMUP_EPOCHS, config.lars_opt_learning_rate_warmup_epochs)
        self.event(constants.LARS_OPT_MOMENTUM, config.lars_opt_momentum)
        self.event(constants.LARS_OPT_WEIGHT_DECAY, config.lars_opt_weight_decay)
        self.event(constants.LARS_EPSILON, config.lars_epsilon)


def platform_name(strategy):
    """E.g. "2xCPU (x86_64)", "8xGPU (NVIDIA H100 80GB HBM3)", "32xTPU"."""
    replicas = strategy.num_replicas_in_sync
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        return f"{replicas}xGPU ({name})"
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return f"{replicas}xTPU"
    return f"{replicas}xCPU ({platform.machine()})"
