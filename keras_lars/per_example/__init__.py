"""Per-example gradient norms inside the ordinary train step, on TensorFlow, JAX and PyTorch.

How the norms travel: as gradients. `attach_per_example_norms(model)` gives
every layer owning a variable CLARS adapts a *probe*: a zero-valued float32
trainable variable of shape (k, 3), one row per tracked variable of the
layer, that the forward pass never uses. The layer's forward pass is its
own, plus an identity "tap" on its pre-activation output z (before the bias)
whose custom gradient passes dL/dz through unchanged and returns, as the
probe's cotangent, each tracked variable's

    [sum_i ||c_i||, sum_i ||c_i||^2, B]            (B: examples in the batch)

computed from d = dL/dz and the layer input a kept from the forward pass
(`keras_lars.per_example.kernels`), c_i being example i's contribution to the
gradient. So Keras's own `train_step` computes the norm sums as the probes'
"gradients", in the same forward and backward pass as the gradient, and
hands them to the optimizer with the other gradients, through the
framework's own plumbing: `jax.grad`, `tf.GradientTape`, XLA, gradient
accumulation (summed with the gradients, then averaged), loss scaling
(unscaled with them), JAX's SPMD data parallelism (a cotangent of a
replicated variable is summed over the batch's shards). `CLARS.apply` takes
the probes' gradients out of the list (they are never applied, and have no
optimizer state) and, under `tf.distribute`, sums them over the replicas
as the gradients are. (Not `overwrite_with_gradient`: `LossScaleOptimizer`
would not unscale them.) Why not a side channel: JAX's transformations only
return what is a function of their inputs, and module-level tables keyed by
thread and graph needed hand-carrying across every XLA boundary.

No state lives in this module except `LAYER_RULES`, the registry of how to
tap each layer class (`register_layer`). An attachment lives on its model;
the probes live in the tapped layers' sub-layer list, which saving skips:
a saved model (`model.save`, `save_weights`) holds only the layers' own
variables and loads into a model built without taps.

With a loss averaged over the global batch B (Keras's default reduction; on
`tf.distribute` Keras also divides each replica's loss by the number of
replicas), c_i = grad f_i / B, so sum_i ||c_i|| = (1/B) sum_i ||grad f_i||.

BatchNorm in training mode couples the examples of a batch; d then carries
the batch statistics' cross-example terms and c_i = a_i (x) d_i is example
i's contribution to the batch gradient, the quantity hook-based per-example
methods (Opacus, BackPACK) compute; it is not the gradient of f_i evaluated
on example i alone.

A layer called more than once per step (tied input/output embeddings, a
Siamese tower) contributes to example i's gradient once per call, and the
norm of the sum is not the sum of the norms: such a layer (counted from the
graphs of functional models and Sequentials however built or loaded,
`_compat.layer_calls`) gets `_SharedLayerTap`, which forms each call's
per-example gradients whole and adds them up before the norm (exact; B
times the layer's variables in memory). A subclassed model's `call` is not
inspected: a layer it calls twice would get the sum of its calls' norms.
A tapped layer called on a batch of 1 inside a step (a table looked up
with position ids of batch 1 and broadcast) is refused: its tap would see
the sum over the examples.

Layout (as Opacus's `grad_sample/`): `registry` (the `LayerRule`s, the
`rule` decorator), `rules/` (one small module per layer family), `kernels`
(the norm kernels), `vectorized` (the fallback), `attachment` (taps and
probes on a model), `one_pass` (one batch outside a train step).
"""

from keras_lars._probes import is_probe  # noqa: F401 (public: tell probes from weights)
from keras_lars.per_example import rules  # noqa: F401 (registers the built-in rules)
from keras_lars.per_example.attachment import (  # noqa: F401
    UNSUPPORTED_LAYER_POLICIES,
    PerExampleNorms,
    attach_per_example_norms,
    attached,
)
from keras_lars.per_example.one_pass import per_example_gradient_norms, per_example_squared_norms  # noqa: F401
from keras_lars.per_example.registry import LAYER_RULES, LayerRule, register_layer, rule_for, supported_layers  # noqa: F401
