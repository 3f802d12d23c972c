"""CLARS: Complete Layer-wise Adaptive Rate Scaling (Huo, Gu & Huang, AAAI 2021)."""

import keras
from keras import ops

from keras_lars import taps
from keras_lars.lars import LARS


@keras.saving.register_keras_serializable(package="keras_lars")
class CLARS(LARS):
    """LARS whose trust ratio uses the mean of per-EXAMPLE gradient norms.

    Eq. 5 of Huo, Gu & Huang (2021), with weight decay coupled as in LARS.
    For each adapted tensor `w_k` with gradient `g_k` (the global batch's
    mean gradient) at step t:

    ```
    n_k    = (1/B) * sum_i ||grad_k f_i(w)||                 (B: global batch)
    lambda = eta * ||w_k|| / (n_k + beta * ||w_k|| + epsilon)   (Eq. 5)
    lambda = 1                    if ||w_k|| == 0 or n_k == 0
    v      = m * v + gamma_t * lambda * (g_k + beta * w_k)
    w_k    = w_k - v
    ```

    `f_i` is example i's loss. Since mean_i ||grad f_i|| >= ||mean_i grad f_i||
    (triangle inequality), lambda is never larger than LARS's at equal `eta`;
    the ratio of the two is the layer's "gradient variance" factor, which
    replaces warmup. Everything else (momentum, Nesterov, guards, trust
    clipping, exclusions, coupled decay, serialization, XLA) is LARS's: the
    two share one update function and differ only in this denominator.

    n_k comes from the train step: call
    `keras_lars.attach_per_example_norms(model)` once after `model.compile`
    (see `keras_lars.taps`). It computes the norms in the same forward and
    backward pass as the gradient; under `tf.distribute` the per-replica sums
    are all-reduced (SUM), and with `gradient_accumulation_steps = n` they
    accumulate over the n micro-batches and are divided by n (so n_k is the
    mean over all n * B examples). Regularisation losses (`model.losses`) are
    not per-example and do not enter n_k. Per-example norms need the
    TensorFlow backend.

    Args:
        learning_rate: the global LR gamma_t (gamma_scale in the paper), a float
            or a schedule of the iteration. The paper's ImageNet runs use no
            warmup: polynomial decay only.
        eta: float > 0. Trust coefficient; 0.01 in the paper's ImageNet runs
            (LARS uses 0.001 and diverges at 0.01 there).
        **kwargs: every other argument of `keras_lars.LARS` (momentum,
            weight_decay, epsilon, nesterov, trust_clip,
            exclude_from_weight_decay, exclude_from_layer_adaptation,
            jit_compile and the Keras optimizer arguments), with the same
            defaults; `trust_ratio_denominator` is fixed by Eq. 5.

    Raises:
        ValueError: at construction, for the arguments LARS rejects, or if
            `trust_ratio_denominator` is given.
        ValueError: at the first step (the first `apply`), if the per-example
            norms of an adapted variable were not computed in this step (the
            model was not passed to `attach_per_example_norms`, or the
            gradients came from elsewhere): CLARS never falls back to LARS.

    References:
        Huo, Gu & Huang, "Large Batch Optimization for Deep Learning Using
        New Complete Layer-Wise Adaptive Rate Scaling", AAAI 2021, Eq. 5 and
        Algorithm 1.
    """

    def __init__(self, learning_rate=0.1, eta=0.01, name="CLARS", **kwargs):
        if "trust_ratio_denominator" in kwargs:
            raise ValueError(
                "CLARS's trust ratio denominator is fixed by Eq. 5 (mean per-example norm + "
                f"weight_decay * ||w|| + epsilon). Received: trust_ratio_denominator="
                f"{kwargs['trust_ratio_denominator']!r}"
            )
        super().__init__(learning_rate=learning_rate, eta=eta, name=name, **kwargs)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        adapted = [i for i, adapt in enumerate(self._adapts) if adapt]
        self._norm_positions = {index: position for position, index in enumerate(adapted)}
        # Sums of per-example norms, one entry per adapted variable, accumulated
        # over micro-batches; replicas write identical (all-reduced) values.
        self.per_example_norm_sums = self.add_variable(
            shape=(len(adapted),),
            initializer="zeros",
            dtype="float32",
            aggregation="only_first_replica",
            name="per_example_norm_sums",
        )

    def apply(self, grads, trainable_variables=None):
        """Keras's `apply`, preceded by collecting this step's per-example norm
        sums (all-reduced across replicas, accumulated over micro-batches).

        Raises:
            ValueError: if the sums of an adapted variable with a gradient
                were not computed in this step's backward pass; nothing is
                updated then.
        """
        grads = list(grads)
        if not grads or (trainable_variables is None and not self.built):
            return super().apply(grads, trainable_variables)  # Keras's own checks
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(list(trainable_variables))
            self.built = True
        variables = self._trainable_variables if trainable_variables is None else list(trainable_variables)
        self._accumulate_norm_sums(grads, variables)
        super().apply(grads, trainable_variables)
        self._reset_norm_sums_after_update()

    def _accumulate_norm_sums(self, grads, variables):
        indices = [self._get_variable_index(v) for v in variables]
        needed = [(i, v) for i, v, g in zip(indices, variables, grads) if g is not None and self._adapts[i]]
        sums = taps.take_norm_sums([v for _, v in needed])
        by_position = {self._norm_positions[i]: s for (i, _), s in zip(needed, sums)}
        if not self._norm_positions:
            return
        zero = ops.zeros((), "float32")
        vector = ops.stack([by_position.get(p, zero) for p in range(len(self._norm_positions))])
        self.per_example_norm_sums.assign_add(taps.all_reduce_sum(vector))

    def _reset_norm_sums_after_update(self):
        steps = self.gradient_accumulation_steps or 1
        zeros = ops.zeros_like(self.per_example_norm_sums)
        if steps == 1:
            self.per_example_norm_sums.assign(zeros)
            return
        # `iterations` has advanced: a multiple of `steps` means the update
        # just happened and used the accumulated sums.
        applied = ops.equal(self._iterations % steps, 0)
        self.per_example_norm_sums.assign(ops.where(applied, zeros, self.per_example_norm_sums))

    def _trust_ratio_gradient_norm(self, index):
        # n_k = (sum over the steps' micro-batches of sum_i ||c_i||) / steps.
        steps = self.gradient_accumulation_steps or 1
        return self.per_example_norm_sums[self._norm_positions[index]] / steps

    def get_config(self):
        config = super().get_config()
        del config["trust_ratio_denominator"]
        return config
