"""CLARS train step vs LARS train step: time and peak memory (not a test).

Both optimizers train identical models through `model.train_on_batch` (Keras's
own compiled train step); CLARS's step also computes the per-example gradient
norms (`keras_lars.attach_per_example_norms`). Steps are interleaved so that
both see the same machine state; the medians are printed as CLARS / LARS
ratios. Peak memory is the allocator's peak during one step above the memory
in use before it: TensorFlow's (`tf.config.experimental.get_memory_info`), or
on JAX the device's `memory_stats()` where it has them (GPUs; not JAX's CPU).

Runs on the Keras backend in use: `KERAS_BACKEND=jax python
benchmarks/clars_step.py` for JAX (whose train step is one jit).

The last columns say where the extra time goes: the multiply-adds of the norm
computation (per layer the cheaper of ghost norm and materialized per-example
gradients) as a fraction of the model's forward + backward multiply-adds.
"stats" rows: the same optimizers with `layer_statistics=True`.

`--per-layer` says per layer where the time goes: for each Conv2D and Dense
layer of the model at the configuration's batch, the per-example norm kernel
CLARS runs there (the cheaper method by multiply-adds) against the layer's own
kernel gradient (the backend's autodiff of the same convolution or matmul, the
same multiply-adds as materializing), each compiled alone and timed in turn.

    python benchmarks/clars_step.py [--rounds 7] [--with-224] [--per-layer]
"""

import argparse
import math
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import keras_lars  # noqa: E402
from keras_lars.per_example.kernels import choose_method, conv_squared_norms, dense_squared_norms  # noqa: E402
from keras_lars.train.models import build_model  # noqa: E402

CONFIGS = {
    "resnet20 28x28 b256": ("resnet20", (28, 28, 1), 10, 256),
    "resnet50 64x64 b32": ("resnet50", (64, 64, 3), 1000, 32),
    "resnet50 128x128 b16": ("resnet50", (128, 128, 3), 1000, 16),
    "resnet50 224x224 b32": ("resnet50", (224, 224, 3), 1000, 32),
}
JAX = keras.backend.backend() == "jax"


def _model(name, input_shape, classes, optimizer, **attach):
    keras.utils.set_random_seed(0)
    model = build_model(name, classes, input_shape)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy())
    if isinstance(optimizer, keras_lars.CLARS):
        keras_lars.attach_per_example_norms(model, **attach)
    return model


def _peak_step_bytes(model, x, y):
    """Peak allocator bytes above the start during one step, or NaN where unknown."""
    if JAX:
        import jax

        device = jax.devices()[0]
        stats = device.memory_stats()
        if not stats or "peak_bytes_in_use" not in stats:
            model.train_on_batch(x, y)
            return float("nan")
        before = stats["bytes_in_use"]
        model.train_on_batch(x, y)
        return device.memory_stats()["peak_bytes_in_use"] - before  # a process-wide peak
    import tensorflow as tf

    device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
    tf.config.experimental.reset_memory_stats(device)
    before = tf.config.experimental.get_memory_info(device)["current"]
    model.train_on_batch(x, y)
    return tf.config.experimental.get_memory_info(device)["peak"] - before


def _cost_split(model, batch):
    """(norm multiply-adds, forward+backward multiply-adds, ghost layers, materialized layers)."""
    norms = model_macs = 0
    methods = {"ghost": 0, "materialize": 0}
    for layer in model._flatten_layers(include_self=False):
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            continue
        out_shape = layer.output.shape
        positions = math.prod(out_shape[1:-1]) if len(out_shape) > 2 else 1
        k = math.prod(getattr(layer, "kernel_size", (1,)))
        c_in, c_out = layer.input.shape[-1], out_shape[-1]
        method = choose_method("auto", positions, k, c_in, c_out)
        methods[method] += 1
        ghost = positions * positions * (k * c_in + c_out)
        materialize = positions * k * c_in * c_out
        norms += batch * (ghost if method == "ghost" else materialize)
        model_macs += 3 * batch * positions * k * c_in * c_out  # forward + two backward products
    return norms, model_macs, methods["ghost"], methods["materialize"]


def bench(label, rounds):
    name, input_shape, classes, batch = CONFIGS[label]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch,) + input_shape).astype("float32")
    y = rng.integers(0, classes, size=batch)
    contenders = {
        "LARS": _model(name, input_shape, classes, keras_lars.LARS(learning_rate=0.1)),
        "CLARS": _model(name, input_shape, classes, keras_lars.CLARS(learning_rate=0.1)),
        "LARS stats": _model(name, input_shape, classes, keras_lars.LARS(learning_rate=0.1, layer_statistics=True)),
        "CLARS stats": _model(name, input_shape, classes,
                              keras_lars.CLARS(learning_rate=0.1, layer_statistics=True)),
        f"CLARS |J|={batch // 4}": _model(
            name, input_shape, classes, keras_lars.CLARS(learning_rate=0.1), sub_batch_size=batch // 4
        ),
    }
    times = {k: [] for k in contenders}
    for model in contenders.values():
        model.train_on_batch(x, y)  # trace
    memory = {k: _peak_step_bytes(m, x, y) for k, m in contenders.items()}
    for _ in range(rounds):
        for key, model in contenders.items():
            start = time.perf_counter()
            model.train_on_batch(x, y)
            times[key].append(time.perf_counter() - start)
    lars_time = statistics.median(times["LARS"])
    norm_macs, model_macs, ghost, materialized = _cost_split(contenders["LARS"], batch)
    for key in contenders:
        median = statistics.median(times[key])
        print(
            f"{label:22s} {key:14s} step {median * 1e3:8.1f} ms  time ratio {median / lars_time:5.2f}  "
            f"peak step memory {memory[key] / 2**20:8.1f} MiB  ratio {memory[key] / memory['LARS']:5.2f}"
        )
    print(
        f"{label:22s} norm multiply-adds / model fwd+bwd: {norm_macs / model_macs:.3f} "
        f"({ghost} layers ghost, {materialized} materialized)"
    )


def _compiled(fn):
    if JAX:
        import jax

        jitted = jax.jit(fn)
        return lambda *args: jitted(*args).block_until_ready()
    import tensorflow as tf

    traced = tf.function(fn)
    return lambda *args: traced(*args).numpy()


def _kernel_gradient(layer):
    """fn(a, d) -> sum of dL/dkernel for z = conv_or_matmul(a, kernel), dL/dz = d."""
    kernel = ops.convert_to_numpy(layer.kernel)

    def forward(a, k):
        return layer.convolution_op(a, k) if isinstance(layer, keras.layers.Conv2D) else ops.matmul(a, k)

    if JAX:
        import jax

        return lambda a, d: jax.numpy.sum(jax.vjp(lambda k: forward(a, k), kernel)[1](d)[0])
    import tensorflow as tf

    def gradient(a, d):
        k = tf.constant(kernel)
        with tf.GradientTape() as tape:
            tape.watch(k)
            z = forward(a, k)
        return tf.reduce_sum(tape.gradient(z, k, output_gradients=d))

    return gradient


def _norm_kernel(layer):
    if isinstance(layer, keras.layers.Conv2D):
        return lambda a, d: conv_squared_norms(a, d, layer.kernel_size, layer.strides, layer.dilation_rate,
                                               layer.padding, layer.groups)[0]
    return lambda a, d: dense_squared_norms(a, d)[0]


def per_layer(label, rounds):
    name, input_shape, classes, batch = CONFIGS[label]
    keras.utils.set_random_seed(0)
    model = build_model(name, classes, input_shape)
    rng = np.random.default_rng(0)
    totals = [0.0, 0.0]
    print(f"{label}: per-example norm kernel vs the layer's own kernel gradient, median ms of {rounds}")
    for layer in model._flatten_layers(include_self=False):
        if type(layer) not in (keras.layers.Conv2D, keras.layers.Dense):
            continue
        a = ops.convert_to_tensor(rng.normal(size=(batch,) + tuple(layer.input.shape[1:])).astype("float32"))
        d = ops.convert_to_tensor(rng.normal(size=(batch,) + tuple(layer.output.shape[1:])).astype("float32"))
        calls = [_compiled(_norm_kernel(layer)), _compiled(_kernel_gradient(layer))]
        times = [[], []]
        for call in calls:
            call(a, d)  # trace
        for _ in range(rounds):
            for i, call in enumerate(calls):
                start = time.perf_counter()
                call(a, d)
                times[i].append(time.perf_counter() - start)
        norm, grad = (statistics.median(t) * 1e3 for t in times)
        totals[0] += norm
        totals[1] += grad
        out_shape = layer.output.shape
        positions = math.prod(out_shape[1:-1]) if len(out_shape) > 2 else 1
        k = math.prod(getattr(layer, "kernel_size", (1,)))
        method = choose_method("auto", positions, k, layer.input.shape[-1], out_shape[-1]) if positions > 1 else "flat"
        strides = getattr(layer, "strides", (1,))
        print(f"  {layer.name:24s} in {tuple(layer.input.shape[1:])!s:15s} out {tuple(out_shape[1:])!s:15s} "
              f"stride {strides[0]} {method:11s} norms {norm:7.2f} ms  kernel gradient {grad:6.2f} ms  "
              f"ratio {norm / grad:5.2f}", flush=True)
    print(f"  all layers: norms {totals[0]:.1f} ms, kernel gradients {totals[1]:.1f} ms, "
          f"ratio {totals[0] / totals[1]:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--with-224", action="store_true", help="also ResNet-50 at 224x224 (minutes on 2 CPU cores)")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), help="these configurations only")
    parser.add_argument("--per-layer", action="store_true", help="per layer: norm kernel vs kernel gradient")
    args = parser.parse_args()
    if JAX:
        import jax

        print(f"Keras {keras.__version__} on JAX {jax.__version__}, devices: {jax.devices()}")
    else:
        import tensorflow as tf

        print(f"Keras {keras.__version__} on TensorFlow {tf.__version__}, devices: "
              f"{[d.name for d in tf.config.list_logical_devices()]}")
    labels = args.only or list(CONFIGS)[:3] + (list(CONFIGS)[3:] if args.with_224 else [])
    for label in labels:
        (per_layer if args.per_layer else bench)(label, args.rounds)


if __name__ == "__main__":
    main()
