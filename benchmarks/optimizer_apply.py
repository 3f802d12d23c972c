"""Optimizer apply time on ResNet-50 v1.5's trainable variables (not a test).

25,557,032 parameters in 161 tensors. Each optimizer applies the same fixed
gradients; rounds are interleaved so that all contenders see the same machine
state, and medians are printed as ratios to Keras SGD with momentum measured
in the same mode, and LARS with `layer_statistics=True` as a ratio to LARS
without.

On TensorFlow (the default) each apply runs inside a `tf.function`, in graph
mode and XLA-compiled, and Model Garden's LARS is timed too. On JAX
(`KERAS_BACKEND=jax`) the whole apply is one `jax.jit` of
`optimizer.stateless_apply`, as in Keras's JAX train step.

    python benchmarks/optimizer_apply.py [--rounds 15]
    KERAS_BACKEND=jax python benchmarks/optimizer_apply.py [--rounds 15]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_lars import LARS  # noqa: E402
from keras_lars.train.models import resnet50_v15  # noqa: E402

JAX = keras.backend.backend() == "jax"


def _jax_step(optimizer, variables, grads):
    import jax

    optimizer.build(variables)
    apply = jax.jit(lambda opt, weights: optimizer.stateless_apply(opt, grads, weights), donate_argnums=(0, 1))
    state = [[v.value for v in optimizer.variables], [v.value for v in variables]]

    def step():
        weights, opt = apply(state[0], state[1])
        jax.block_until_ready(weights)
        state[:] = [opt, weights]

    return step


def _keras_step(optimizer, variables, grads, jit):
    if JAX:
        return _jax_step(optimizer, variables, grads)
    import tensorflow as tf

    optimizer.build(variables)

    @tf.function(jit_compile=jit)
    def step():
        optimizer.apply(grads, variables)

    return step


def _model_garden_step(variables, grads, jit):
    import tensorflow as tf
    from official.modeling.optimization import lars as model_garden_lars

    optimizer = model_garden_lars.LARS(learning_rate=1.0, momentum=0.9, weight_decay_rate=1e-4,
                                       exclude_from_weight_decay=["bn", "bias"])
    tf_vars = [tf.Variable(v.numpy(), name=v.path.replace("/", "_")) for v in variables]

    @tf.function(jit_compile=jit)
    def step():
        optimizer.apply_gradients(zip(grads, tf_vars))

    return step


def _contenders(jit):
    model = resnet50_v15()
    variables = model.trainable_variables
    rng = np.random.default_rng(0)
    grads = [keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype("float32") * 1e-3) for v in variables]
    fresh = lambda: [keras.Variable(v.numpy(), name=v.name) for v in variables]  # noqa: E731
    contenders = {
        "keras_sgd": _keras_step(keras.optimizers.SGD(1.0, momentum=0.9), fresh(), grads, jit),
        "lars": _keras_step(LARS(1.0, weight_decay=1e-4), fresh(), grads, jit),
        "lars_statistics": _keras_step(LARS(1.0, weight_decay=1e-4, layer_statistics=True), fresh(), grads, jit),
    }
    if not JAX:
        contenders["lars_no_update_xla"] = _keras_step(LARS(1.0, weight_decay=1e-4, jit_compile=False), fresh(),
                                                       grads, jit)
        contenders["model_garden_lars"] = _model_garden_step(variables, grads, jit)
    return contenders


def measure(jit, rounds):
    steps = _contenders(jit)
    for step in steps.values():  # trace, compile, warm up
        step()
        step()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="timed applies per contender and mode")
    args = parser.parse_args()
    if JAX:
        import jax

        print(f"Keras {keras.__version__} on JAX {jax.__version__}, devices {jax.devices()}, {os.cpu_count()} CPUs")
        modes = (("jax", True),)
    else:
        import tensorflow as tf

        print(f"Keras {keras.__version__} on TensorFlow {tf.__version__}, {os.cpu_count()} CPUs")
        modes = (("graph", False), ("xla", True))
    for mode, jit in modes:
        medians = measure(jit, args.rounds)
        sgd = medians["keras_sgd"]
        for name, seconds in medians.items():
            print(f"{mode:5s} {name:20s} {seconds * 1e3:8.1f} ms   x{seconds / sgd:.2f} of Keras SGD")
        garden = medians.get("model_garden_lars")
        print(f"{mode:5s} LARS / Keras SGD = {medians['lars'] / sgd:.2f}, "
              + (f"LARS / Model Garden LARS = {medians['lars'] / garden:.2f}, " if garden else "")
              + f"LARS with / without layer statistics = {medians['lars_statistics'] / medians['lars']:.2f}")


if __name__ == "__main__":
    main()
