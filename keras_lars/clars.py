"""CLARS: Complete Layer-wise Adaptive Rate Scaling (Huo, Gu & Huang, AAAI 2021)."""

import keras
from keras import ops

from keras_lars import _backend, _compat, _probes
from keras_lars.lars import LARS, STATISTICS

#: What CLARS's `layer_statistics=True` records after LARS's `STATISTICS`:
#: n_k, ||g_k|| / n_k, the mean squared per-example norm and M_k.
CLARS_STATISTICS = (
    "mean_per_example_norm",  # n_k = (1/B) sum_i ||grad_k f_i||
    "gradient_variance_ratio",  # ||g_k|| / n_k, in (0, 1]
    "mean_squared_per_example_norm",  # (1/B) sum_i ||grad_k f_i||^2
    "gradient_variance_factor",  # M_k = mean squared norm / ||g_k||^2 (Fig. 2), >= 1
)


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
    (see `keras_lars.per_example`). It computes the norms in the same forward and
    backward pass as the gradient and delivers them as the gradients of
    probe variables, which `apply` takes out of the gradient list (they are
    never applied). So they are unscaled with the gradients (loss scaling),
    summed over the batch's shards by JAX's data parallelism, all-reduced
    (SUM) over `tf.distribute` replicas by `apply`, and with
    `gradient_accumulation_steps = n` accumulated over the n micro-batches and
    divided by n (n_k is the mean over all n * B examples). Regularisation
    losses (`model.losses`) are not per-example and do not enter n_k. Works
    on the TensorFlow, JAX and PyTorch backends.

    With `layer_statistics=True`, CLARS records LARS's statistics and, per
    adapted variable, `CLARS_STATISTICS`: n_k, ||g_k|| / n_k, the mean squared
    per-example norm (1/B) sum_i ||grad_k f_i||^2 and the gradient variance
    factor M_k = that / ||g_k||^2 (Fig. 2 of the paper; with BatchNorm in
    training mode, of example i's contribution, as n_k). Under gradient
    accumulation these are over all the step's examples (micro-batches of
    equal size).

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
            norms of an adapted variable are not among the gradients (the
            model was not passed to `attach_per_example_norms`, or the
            probes' gradients were not passed to `apply`): CLARS never falls
            back to LARS.

    References:
        Huo, Gu & Huang, "Large Batch Optimization for Deep Learning Using
        New Complete Layer-Wise Adaptive Rate Scaling", AAAI 2021, Eq. 5 and
        Algorithm 1.
    """

    def __init__(self, learning_rate=0.1, eta=0.01, name=None, **kwargs):
        if "trust_ratio_denominator" in kwargs:
            raise ValueError(
                "CLARS's trust ratio denominator is fixed by Eq. 5 (mean per-example norm + "
                f"weight_decay * ||w|| + epsilon). Received: trust_ratio_denominator="
                f"{kwargs['trust_ratio_denominator']!r}"
            )
        super().__init__(learning_rate=learning_rate, eta=eta, name=name, **kwargs)

    def statistic_names(self):
        """LARS's `STATISTICS` and `CLARS_STATISTICS` (NaN for a variable
        CLARS does not adapt: it has no per-example norms)."""
        return STATISTICS + CLARS_STATISTICS

    def _build_trust_ratio_state(self, variables):
        adapted = [i for i, adapt in enumerate(self._adapts) if adapt]
        self._norm_positions = {index: position for position, index in enumerate(adapted)}
        # Sums of per-example norms, one entry per adapted variable, accumulated
        # over micro-batches; replicas write identical (all-reduced) values.
        self.per_example_norm_sums = self._add_sums((len(adapted),), "per_example_norm_sums")
        # With layer statistics: sums of squared per-example norms and example counts.
        self.per_example_squared_norm_sums = None
        if self.layer_statistics:
            self.per_example_squared_norm_sums = self._add_sums((len(adapted), 2), "per_example_squared_norm_sums")

    def _add_sums(self, shape, name):
        return self.add_variable(
            shape=shape, initializer="zeros", dtype="float32", aggregation="only_first_replica", name=name
        )

    # Read by `attach_per_example_norms` (which does not import this module).
    uses_per_example_norms = True

    def apply(self, grads, trainable_variables=None):
        """Keras's `apply` on the model's variables, preceded by taking this
        step's per-example norm sums out of the gradients of the probes
        (all-reduced across `tf.distribute` replicas, accumulated over
        micro-batches).

        Raises:
            ValueError: if an adapted variable with a gradient has no probe
                gradient among `grads`; nothing is updated then.
        """
        grads = list(grads)
        if not grads or (trainable_variables is None and not self.built):
            return super().apply(grads, trainable_variables)  # Keras's own checks
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(list(trainable_variables))
            self.built = True
        variables = _compat.optimizer_variables(self) if trainable_variables is None else list(trainable_variables)
        probes = [(g, v) for g, v in zip(grads, variables) if _probes.is_probe(v)]
        rest = [(g, v) for g, v in zip(grads, variables) if not _probes.is_probe(v)]
        self._accumulate_norm_sums(probes, rest)
        super().apply([g for g, _ in rest], [v for _, v in rest])
        self._reset_norm_sums_after_update()

    def _sums(self):
        return [self.per_example_norm_sums] + (
            [self.per_example_squared_norm_sums] if self.per_example_squared_norm_sums is not None else []
        )

    def _accumulate_norm_sums(self, probes, rest):
        rows = {}
        for grad, probe in probes:
            if grad is None:
                continue
            if self.loss_scale_factor is not None:
                grad = grad / self.loss_scale_factor  # Keras unscales only what it applies.
            for j, target in enumerate(_probes.targets(probe)):
                rows[id(target)] = grad[j]
        needed = [v for g, v in rest if g is not None and self._adapts[self._get_variable_index(v)]]
        missing = [_backend.variable_path(v) for v in needed if id(v) not in rows]
        if missing:
            shown = ", ".join(repr(p) for p in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(
                f"CLARS needs per-example gradient norms for {shown}, but the gradients passed to "
                "`apply` hold none (no probe gradients). Call `keras_lars.attach_per_example_norms(model)` "
                "after `model.compile(optimizer=CLARS(...))`, and pass the gradients of all of "
                "`model.trainable_variables` (model.fit does)."
            )
        if not self._norm_positions:
            return
        zero = ops.zeros((3,), "float32")
        by_position = [None] * len(self._norm_positions)
        for index, position in self._norm_positions.items():
            by_position[position] = rows.get(id(_compat.optimizer_variables(self)[index]), zero)
        table = _backend.all_reduce_sum(ops.stack(by_position))
        self.per_example_norm_sums.assign_add(table[:, 0])
        if self.per_example_squared_norm_sums is not None:
            self.per_example_squared_norm_sums.assign_add(table[:, 1:])

    def _reset_norm_sums_after_update(self):
        steps = self.gradient_accumulation_steps or 1
        for sums in self._sums():
            zeros = ops.zeros(sums.shape, sums.dtype)
            if steps == 1:
                sums.assign(zeros)
                continue
            # `iterations` has advanced: a multiple of `steps` means the update
            # just happened and used the accumulated sums.
            applied = ops.equal(self._iterations % steps, 0)
            sums.assign(ops.where(applied, zeros, sums.value))

    def _trust_ratio_gradient_norm(self, index):
        # n_k = (sum over the steps' micro-batches of sum_i ||c_i||) / steps.
        steps = self.gradient_accumulation_steps or 1
        return self.per_example_norm_sums[self._norm_positions[index]] / steps

    def _more_statistics(self, index, statistics):
        if not self._adapts[index]:
            return ops.concatenate([statistics, ops.full((len(CLARS_STATISTICS),), float("nan"))])
        steps = self.gradient_accumulation_steps or 1
        position = self._norm_positions[index]
        squared_sum = self.per_example_squared_norm_sums[position, 0]
        count = self.per_example_squared_norm_sums[position, 1]
        n_k = self.per_example_norm_sums[position] / steps
        # c_i = grad f_i / B per micro-batch of B = count / steps examples, so
        # (1/count) sum_i ||grad f_i||^2 = count * sum_i ||c_i||^2 / steps^2.
        mean_squared = count * squared_sum / (steps * steps)
        g_norm = statistics[1]
        extra = ops.stack([n_k, g_norm / n_k, mean_squared, mean_squared / ops.square(g_norm)])
        return ops.concatenate([statistics, extra])

    def get_config(self):
        config = super().get_config()
        del config["trust_ratio_denominator"]
        return config
