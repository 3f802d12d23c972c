"""What each replica holds apart from the others under `tf.distribute`: the
gradient-accumulation buffers (never synchronised) and the BatchNorm moving
statistics (each replica updates its own from its own batch, as the MLPerf
reference does)."""

import tensorflow as tf


class GradientBuffers:
    """Per-replica sums of the gradients of an optimizer step's first
    `accumulation_steps - 1` micro-batches.

    Args:
        variables: the model's trainable variables (their shapes and dtypes).
        strategy: the `tf.distribute.Strategy` the model was built under.
        accumulation_steps: int >= 2, micro-batches per optimizer step.
    """

    def __init__(self, variables, strategy, accumulation_steps):
        self.accumulation_steps = accumulation_steps
        with strategy.scope():
            self._buffers = [_replica_local(v.shape, v.dtype) for v in variables]

    def add(self, grads):
        """Adds one micro-batch's gradients (in a replica context)."""
        for buffer, grad in zip(self._buffers, grads):
            buffer.assign_add(grad)

    def mean_with(self, grads):
        """The last micro-batch's `grads` plus the buffers, over `accumulation_steps`."""
        return [(g + b.read_value()) / self.accumulation_steps for g, b in zip(grads, self._buffers)]

    def reset(self):
        for buffer in self._buffers:
            buffer.assign(tf.zeros_like(buffer))


class MovingStatistics:
    """Calling it sets every replica's non-trainable variables (BatchNorm
    moving mean/variance) to their mean over the replicas, so that eval and
    checkpoints agree on every worker. Keras 2 averaged them on read (ON_READ,
    MEAN); Keras 3 does not. Nothing happens with one replica or no such
    variables."""

    def __init__(self, model, strategy):
        self._model = model
        self._strategy = strategy
        self._sync = tf.function(self._sync_fn)

    def __call__(self):
        if self._strategy.num_replicas_in_sync > 1 and self._model.non_trainable_variables:
            self._sync()

    def _sync_fn(self):
        def replica_fn():
            context = tf.distribute.get_replica_context()
            values = [tf.identity(v.value) for v in self._model.non_trainable_variables]
            means = context.all_reduce(tf.distribute.ReduceOp.MEAN, values)
            for variable, mean in zip(self._model.non_trainable_variables, means):
                variable.assign(mean)

        self._strategy.run(replica_fn)


def _replica_local(shape, dtype):
    # One copy per replica, never synchronised: each sums its own gradients.
    return tf.Variable(
        tf.zeros(shape, dtype),
        trainable=False,
        synchronization=tf.VariableSynchronization.ON_READ,
        aggregation=tf.VariableAggregation.SUM,
    )
