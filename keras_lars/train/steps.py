"""The distributed train loop and eval step: what runs on the devices (as the
MLPerf reference's custom loop and Orbit's inner loop, orbit/utils/loop_fns.py).

Per replica: the forward/backward pass (XLA-compiled when asked, as the
reference does on GPU/TPU) and the optimizer's `apply`, which all-reduces the
gradients across replicas and runs each variable's update. `train_loop` runs
many such optimizer steps in one `tf.function` call, so the host is reached
once per loop, not once per step.
"""

import keras
import tensorflow as tf

from keras_lars.train.replica_state import GradientBuffers, MovingStatistics


def per_example_loss(labels, probs, num_classes, label_smoothing):
    """Softmax cross-entropy with label smoothing, per example.

    Args:
        labels: int32 (b,), class ids.
        probs: float (b, num_classes), the model's softmax outputs.

    Returns:
        float32 (b,).
    """
    one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    return keras.losses.categorical_crossentropy(
        one_hot, tf.cast(probs, tf.float32), label_smoothing=label_smoothing
    )


class Steps:
    """Builds the distributed `train_loop` and `eval_step` tf.functions; each
    takes an iterator of a distributed dataset.

    Gradient accumulation lives here, not in Keras's optimizer (whose
    accumulation branch is a `cond` around a cross-replica merge, which
    tf.distribute rejects): each of an optimizer step's first
    `accumulation_steps - 1` micro-batches adds its gradients into
    per-replica `GradientBuffers`; the last adds its own, averages over the
    micro-batches and calls the optimizer's `apply`. CLARS's per-example norm
    sums are gradients too (of the probes `attach_per_example_norms` adds to
    `model.trainable_variables`), so nothing here is specific to CLARS.

    Args:
        model: the compiled Keras model (its optimizer is `model.optimizer`;
            for CLARS, per-example norms attached).
        strategy: the `tf.distribute.Strategy` the model was built under.
        micro_batch_size: int, examples per forward/backward over all
            replicas; the loss is summed over a replica's examples and divided
            by it (MLPerf: the GLOBAL batch), so that the all-reduced SUM of
            the replicas' gradients is the gradient of the global mean loss.
        label_smoothing: float in [0, 1).
        xla: bool, XLA-compile the per-replica forward/backward and eval.
        accumulation_steps: int >= 1, micro-batches per optimizer step.
    """

    def __init__(self, model, strategy, micro_batch_size, label_smoothing, xla, accumulation_steps=1):
        self.model = model
        self.strategy = strategy
        self.micro_batch_size = micro_batch_size
        self.label_smoothing = label_smoothing
        self.accumulation_steps = accumulation_steps
        self.num_classes = model.output_shape[-1]
        if accumulation_steps > 1:
            self._buffers = GradientBuffers(model.trainable_variables, strategy, accumulation_steps)
        #: Called at each epoch's end: `replica_state.MovingStatistics`.
        self.sync_moving_statistics = MovingStatistics(model, strategy)
        compile_ = (lambda f: tf.function(f, jit_compile=True)) if xla else (lambda f: f)
        self._forward_backward = compile_(self._forward_backward_fn)
        self._eval_fn = compile_(self._eval_replica)
        self._train_loop = tf.function(self._train_loop_fn)
        self.eval_step = tf.function(self._eval_step)

    def loss(self, labels, probs):
        """Replica loss: the sum over its examples / the global micro-batch."""
        losses = per_example_loss(labels, probs, self.num_classes, self.label_smoothing)
        return tf.reduce_sum(losses) / self.micro_batch_size

    def _forward_backward_fn(self, images, labels):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            probs = self.model(images, training=True)
            loss = self.loss(labels, probs)
            scaled = self.model.optimizer.scale_loss(loss)
        return loss, tape.gradient(scaled, variables)

    def _accumulate_replica(self, images, labels):
        loss, grads = self._forward_backward(images, labels)
        self._buffers.add(grads)
        return loss

    def _apply_replica(self, images, labels):
        loss, grads = self._forward_backward(images, labels)
        if self.accumulation_steps > 1:
            grads = self._buffers.mean_with(grads)
        self.model.optimizer.apply(grads, self.model.trainable_variables)
        if self.accumulation_steps > 1:
            self._buffers.reset()
        return loss

    def train_loop(self, iterator, num_steps):
        """Runs up to `num_steps` optimizer steps (each of
        `accumulation_steps` micro-batches from `iterator`) in one call.

        Args:
            iterator: an iterator of the distributed train dataset.
            num_steps: int >= 1.

        Returns:
            NumPy float32 (m,): each step's global mean loss over its
            micro-batches, m <= num_steps. The loop stops after the first
            non-finite loss (m < num_steps then, or the last is non-finite),
            leaving the divergence to the caller.
        """
        return self._train_loop(iterator, tf.constant(num_steps, tf.int32)).numpy()

    def _train_loop_fn(self, iterator, num_steps):
        losses = tf.TensorArray(tf.float32, size=num_steps)
        done = tf.constant(0)
        for i in tf.range(num_steps):
            loss = self._train_step(iterator)
            losses = losses.write(i, loss)
            done = i + 1
            if not tf.math.is_finite(loss):
                break
        return losses.gather(tf.range(done))

    def _train_step(self, iterator):
        # Python loop: the micro-batches are unrolled in the graph.
        total = tf.constant(0.0)
        for micro_step in range(self.accumulation_steps):
            last = micro_step == self.accumulation_steps - 1
            replica_fn = self._apply_replica if last else self._accumulate_replica
            losses = self.strategy.run(replica_fn, args=next(iterator))
            total += self.strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)
        return total / self.accumulation_steps

    def _eval_replica(self, images, labels, weights):
        probs = self.model(images, training=False)
        hit = tf.cast(tf.equal(tf.argmax(probs, axis=-1, output_type=tf.int32), labels), tf.float32)
        losses = per_example_loss(labels, probs, self.num_classes, self.label_smoothing)
        return tf.reduce_sum(hit * weights), tf.reduce_sum(weights), tf.reduce_sum(losses * weights)

    def _eval_step(self, iterator):
        """Returns (correct, examples, loss sum) over all replicas: float32 scalars
        that count only weight-1 (real) examples."""
        outputs = self.strategy.run(self._eval_fn, args=next(iterator))
        return [self.strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None) for x in outputs]

