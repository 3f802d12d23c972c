"""LARS: Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg, 2017).

The optimizer class; its per-variable step is `keras_lars.update`. About
360 lines: a third is the docstrings of its options (Keras's own optimizer
arguments included), most of the rest the exclusion rules, the layer
statistics and the per-example norm probes it must leave alone."""

import functools

import keras

from keras_lars import _compat
from keras_lars._backend import colocated_with, dense_gradient, fast_norm, maybe_jit, variable_path
from keras_lars._probes import is_probe
from keras_lars._validation import check_number
from keras_lars.exclusions import ExclusionRules
from keras_lars.update import STATISTICS, TRUST_RATIO_DENOMINATORS, lars_update  # noqa: F401 (public here too)


@keras.saving.register_keras_serializable(package="keras_lars")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling: momentum SGD with a per-tensor trust ratio.

    Algorithm 1 of You, Gitman & Ginsburg (2017), for each trainable tensor
    `w` with gradient `g` (the global batch's mean gradient) at step t:

    ```
    lambda = eta * ||w|| / (||g|| + beta * ||w|| + epsilon)     (Eq. 6)
    lambda = 1                   if ||w|| == 0 or ||g|| == 0
    v      = m * v + gamma_t * lambda * (g + beta * w)
    w      = w - v
    ```

    with `gamma_t = learning_rate` (a float or a schedule evaluated at the
    optimizer's iteration), `m = momentum`, `beta = weight_decay` and
    `eta = eta`. Weight decay is COUPLED: it enters the gradient and the trust
    ratio. Keras's own (decoupled, AdamW-style) weight decay is never applied.

    Variables excluded from layer adaptation use `lambda = 1`; variables
    excluded from weight decay use `beta = 0` (in the update and the ratio).
    By default both exclude every variable with `ndim <= 1` (biases, BatchNorm
    gamma and beta), as MLPerf's ResNet-50 reference does.

    Args:
        learning_rate: float >= 0, or a
            `keras.optimizers.schedules.LearningRateSchedule` of the optimizer
            iteration (steps, not epochs), e.g.
            `keras_lars.schedules.WarmupPolynomialDecay`. The global LR gamma_t.
        momentum: float in [0, 1). `m`. 0 creates no momentum slots.
        weight_decay: float >= 0 (or None, meaning 0). Coupled weight decay
            `beta` (MLPerf key `lars_opt_weight_decay`).
        eta: float > 0. The trust coefficient (0.001 in the paper and MLPerf).
        epsilon: float >= 0 added to the trust-ratio denominator
            (MLPerf key `lars_epsilon`, fixed to 0 by the rules). 0 stays 0.
        nesterov: bool. Nesterov momentum: `w = w - (m * v + gamma_t * lambda *
            (g + beta * w))` with `v` already updated.
        trust_ratio_denominator: `"sum_of_norms"` (default; the paper, MLPerf,
            timm, apex: `||g|| + beta * ||w||`) or `"norm_of_sum"`
            (TF Model Garden, optax: `||g + beta * w||`; its zero guard then
            tests this norm).
        trust_clip: bool. LARC trust clipping: `lambda_eff = min(lambda /
            gamma_t, 1)`, so the effective step never exceeds gamma_t.
        exclude_from_weight_decay: None (default rule: `ndim <= 1`) or a rule
            or list of rules: regex strings searched in `variable.path`,
            `keras.Variable`s, or callables `predicate(variable) -> bool`.
            An explicit value replaces the default; `[]` excludes nothing.
        exclude_from_layer_adaptation: same forms; None means "the same rules
            as `exclude_from_weight_decay`" (Model Garden's convention).
        jit_compile: bool. Compile each per-variable update with XLA on the
            TensorFlow backend (a no-op inside a step that is already compiled,
            and on JAX, where the whole step is).
        layer_statistics: bool, default False. Record, at every applied
            step, each trainable variable's `STATISTICS` (||w||, ||g||, the
            trust ratio before and after clipping, the local learning rate
            gamma_t * lambda, ||delta w|| and ||delta w|| / ||w||) in an
            optimizer variable of its own (float32, `len(statistic_names())`),
            read with `keras_lars.layer_statistics.read(optimizer)` or logged
            by `keras_lars.LayerStatisticsLogger`. Values are those of the
            last applied step: the all-reduced global-batch gradient under
            `tf.distribute` (identical on every replica), the accumulated
            gradient with `gradient_accumulation_steps`; compiled with the
            update. Off, nothing is created or computed. On, each apply
            computes one more norm per tensor and writes each variable's
            statistics (the cost: `benchmarks/optimizer_apply.py`,
            `benchmarks/clars_step.py`, docs/measurements.md).
        clipnorm: as every Keras optimizer's (`keras.optimizers.Optimizer`),
            as are `clipvalue`, `global_clipnorm`, `use_ema`,
            `ema_momentum`, `ema_overwrite_frequency`, `loss_scale_factor`,
            `gradient_accumulation_steps` and `name`; clipping acts on the
            gradient before the trust ratio is computed.

    Raises:
        ValueError: at construction, for a negative learning rate, momentum
            outside [0, 1), weight decay < 0, eta <= 0, epsilon < 0, any of
            them NaN or infinite, an unknown `trust_ratio_denominator`, or an
            invalid exclusion pattern.
        TypeError: for exclusion rules of an unsupported type.

    References:
        You, Gitman & Ginsburg, "Large Batch Training of Convolutional
        Networks", arXiv:1708.03888 (2017), Algorithm 1.
        MLPerf Training ResNet-50 reference (TF2), `lars_optimizer.py`.
    """

    def __init__(
        self,
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=0.0,
        eta=0.001,
        epsilon=0.0,
        nesterov=False,
        trust_ratio_denominator="sum_of_norms",
        trust_clip=False,
        exclude_from_weight_decay=None,
        exclude_from_layer_adaptation=None,
        jit_compile=True,
        layer_statistics=False,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        **kwargs,
    ):
        learning_rate = _check_learning_rate(learning_rate)
        weight_decay = 0.0 if weight_decay is None else weight_decay
        check_number("momentum", momentum, "a float in [0, 1)", lambda x: 0 <= x < 1)
        check_number("weight_decay", weight_decay, "a finite float >= 0", lambda x: x >= 0)
        check_number("eta", eta, "a finite float > 0", lambda x: x > 0)
        check_number("epsilon", epsilon, "a finite float >= 0", lambda x: x >= 0)
        if trust_ratio_denominator not in TRUST_RATIO_DENOMINATORS:
            raise ValueError(
                f"`trust_ratio_denominator` must be one of "
                f"{TRUST_RATIO_DENOMINATORS}. Received: {trust_ratio_denominator!r}"
            )
        flags = (("nesterov", nesterov), ("trust_clip", trust_clip), ("jit_compile", jit_compile),
                 ("layer_statistics", layer_statistics))
        for arg, value in flags:
            if not isinstance(value, bool):
                raise ValueError(f"`{arg}` must be a bool. Received: {value!r}")
        decay_rules = ExclusionRules(exclude_from_weight_decay, "exclude_from_weight_decay")
        adaptation_rules = (
            decay_rules
            if exclude_from_layer_adaptation is None
            else ExclusionRules(exclude_from_layer_adaptation, "exclude_from_layer_adaptation")
        )
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=float(weight_decay),
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **kwargs,
        )
        self.momentum = float(momentum)
        self.eta = float(eta)
        self.epsilon = float(epsilon)
        self.nesterov = nesterov
        self.trust_ratio_denominator = trust_ratio_denominator
        self.trust_clip = trust_clip
        self.jit_compile = jit_compile
        self.layer_statistics = layer_statistics
        self._decay_rules = decay_rules
        self._adaptation_rules = adaptation_rules
        self._adaptation_follows_decay = exclude_from_layer_adaptation is None
        self._update_fns = {}

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Adds exclusions to the current rules, the default included
        (Keras's method, kept for compatibility).

        `var_list`: variables; `var_names`: regexes searched in
        `variable.path`. Must be called before `build`. When
        `exclude_from_layer_adaptation` was not given, adaptation follows.

        Raises:
            ValueError: if the optimizer is already built and the call adds
                a rule it does not hold yet (a repeated call, as each replica
                of a `tf.distribute` step makes, is accepted).
        """
        rules = list(var_list or []) + list(var_names or [])
        if self.built:
            if all(self._decay_rules.holds(rule) for rule in rules):
                return
            raise ValueError(
                "`exclude_from_weight_decay()` must be called before the "
                "optimizer is built (before the first step)."
            )
        self._decay_rules.add(rules)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = []
        if self.momentum != 0:
            self.momentums = self.add_optimizer_variables(variables, "momentum")
        self._uses_decay = [not x for x in self._decay_rules.resolve(variables)]
        self._adapts = self.adapts(variables)
        self._build_trust_ratio_state(variables)
        # Created last: with statistics off, the variables (and checkpoints)
        # are those of an optimizer without the option.
        self.layer_statistics_variables = []
        if self.layer_statistics:
            self.layer_statistics_variables = [
                None if is_probe(v) else self._add_statistics_variable(v) for v in variables
            ]

    def _build_trust_ratio_state(self, variables):
        """Creates what `_trust_ratio_gradient_norm` reads (CLARS)."""

    def add_variable_from_reference(self, reference_variable, name=None, initializer="zeros"):
        # Per-example norm probes (`keras_lars.per_example`) are never updated: no
        # slots, accumulators or averages, so that the optimizer's state (and
        # checkpoints) are the same with or without them.
        if is_probe(reference_variable):
            return None
        return super().add_variable_from_reference(reference_variable, name=name, initializer=initializer)

    def track_probes(self, probes):
        """Appends per-example norm probes created after this optimizer was
        built (e.g. attached to a model restored by `load_model`) to its
        variables, after those it knows (as they come in
        `model.trainable_variables`); they get no state and no update.

        Args:
            probes: the probe variables, `PerExampleNorms.probes`.
        """
        for probe in probes:
            if _compat.optimizer_knows(self, probe):
                continue
            _compat.append_optimizer_variable(self, probe)
            for name in ("momentums", "layer_statistics_variables", "_accumulated_gradients",
                         "_model_variables_moving_average"):
                slots = getattr(self, name, None)
                if slots:
                    slots.append(None)
            self._uses_decay.append(False)
            self._adapts.append(False)

    def _add_statistics_variable(self, variable):
        with colocated_with(variable):
            return self.add_variable(
                shape=(len(self.statistic_names()),),
                initializer="zeros",
                dtype="float32",
                name=f"{variable_path(variable).replace('/', '_')}_layer_statistics",
            )

    def statistic_names(self):
        """The names of the values `layer_statistics=True` records per
        variable, in the order of `layer_statistics_variables`' entries."""
        return STATISTICS

    def adapts(self, variables):
        """For each of `variables`, whether its learning rate is adapted (not
        excluded from layer adaptation by the rules). A list of bools."""
        rules = self._decay_rules if self._adaptation_follows_decay else self._adaptation_rules
        # Per-example norm probes (`keras_lars.per_example`) are never updated.
        return [not x and not is_probe(v) for v, x in zip(variables, rules.resolve(variables))]

    def _apply_weight_decay(self, variables):
        # Weight decay is coupled and applied in `update_step`.
        return

    def _update_fn(self, adapt, decay):
        key = (adapt, decay)
        if key not in self._update_fns:
            fn = functools.partial(
                lars_update,
                momentum=self.momentum,
                eta=self.eta,
                weight_decay=self.weight_decay if decay else 0.0,
                epsilon=self.epsilon,
                adapt=adapt,
                nesterov=self.nesterov,
                trust_clip=self.trust_clip,
                denominator=self.trust_ratio_denominator,
                statistics=self.layer_statistics,
            )
            self._update_fns[key] = maybe_jit(fn, self.jit_compile)
        return self._update_fns[key]

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        slot = self.momentums[index] if self.momentums else None
        adapt = self._adapts[index]
        fn = self._update_fn(adapt, self._uses_decay[index])
        gradient = dense_gradient(gradient)
        gradient_norm = weight_norm = None
        if adapt:
            gradient_norm = self._trust_ratio_gradient_norm(index)
            # The norms are the memory traffic LARS adds to SGD: where a
            # faster kernel than the update's exists, use it (see fast_norm).
            weight_norm = fast_norm(variable)
            if weight_norm is not None and gradient_norm is None and self.trust_ratio_denominator == "sum_of_norms":
                gradient_norm = fast_norm(gradient)
        new_w, new_v, *statistics = fn(variable, gradient, slot, learning_rate, gradient_norm, weight_norm)
        self.assign(variable, new_w)
        if slot is not None:
            self.assign(slot, new_v)
        if statistics:
            self.assign(self.layer_statistics_variables[index], self._more_statistics(index, statistics[0]))

    def _more_statistics(self, index, statistics):
        """`statistics` (the float32 `STATISTICS` of variable `index`) with any
        statistics a subclass adds (CLARS: its per-example norms)."""
        return statistics

    def _trust_ratio_gradient_norm(self, index):
        """The norm standing for ||g|| in the trust ratio of variable `index`;
        None means ||g|| itself. CLARS overrides this: it is the only place
        the two optimizers differ."""
        return None

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "eta": self.eta,
                "epsilon": self.epsilon,
                "nesterov": self.nesterov,
                "trust_ratio_denominator": self.trust_ratio_denominator,
                "trust_clip": self.trust_clip,
                "exclude_from_weight_decay": self._decay_rules.get_config(),
                "exclude_from_layer_adaptation": (
                    None
                    if self._adaptation_follows_decay
                    else self._adaptation_rules.get_config()
                ),
                "jit_compile": self.jit_compile,
                "layer_statistics": self.layer_statistics,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("exclude_from_weight_decay", "exclude_from_layer_adaptation"):
            rules = config.get(key)
            if rules is not None:
                config[key] = ExclusionRules.from_config(rules, key).rules
        return super().from_config(config, custom_objects=custom_objects)


def _check_learning_rate(learning_rate):
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule) or callable(learning_rate):
        return learning_rate
    check_number(
        "learning_rate",
        learning_rate,
        "a finite float >= 0, a keras.optimizers.schedules.LearningRateSchedule or a callable",
        lambda x: x >= 0,
    )
    return float(learning_rate)
