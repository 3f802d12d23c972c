"""ResNet-50 train steps with SGD, LARS and CLARS on an accelerator, through
Keras's JAX backend (not a test; `--tiny` is, in tests/test_benchmarks.py).

One process, one device. For each optimizer a jitted train step built from
Keras's public stateless API (`model.stateless_call`, `jax.value_and_grad`,
`optimizer.stateless_apply`; the step Keras's own JAX `fit` compiles),
synthetic data already on the device, the optimizers' steps interleaved in
rounds so that all see the same device state. Reported per optimizer: the
median step time, images/s, XLA's planned memory of the step (arguments,
outputs and temporaries, from `compiled.memory_analysis()`), the device's
peak bytes in use where it reports them; and the LARS/SGD and CLARS/LARS
ratios. Contenders:

- "sgd": `keras.optimizers.SGD(momentum=0.9)` (Keras's own);
- "lars": `keras_lars.LARS`, the trainer's settings (eta 0.001, weight decay
  5e-5, biases and BatchNorm excluded);
- "clars": `keras_lars.CLARS` with per-example norms attached (every example);
- "clars_sub": CLARS with `sub_batch_size` = batch / 4.

Before timing, the numerics on the device: one LARS step and CLARS's
per-example norms of a small float32 model against NumPy (the float64
Algorithm 1 of tests/numpy_lars.py; per-example gradients one example at a
time), with XLA's highest matmul precision (GPUs otherwise multiply float32
in TF32).

    KERAS_BACKEND=jax python benchmarks/accelerator.py [--tiny] [--batch 256] [--max-batch]
        [--rounds 5] [--steps 10] [--json results.json]

`--tiny`: ResNet-8 at 32x32, batch 8, 2 rounds of 2 steps: runs on a CPU in
well under a minute, so the script cannot rot. `--max-batch`: also the
largest batch of 512, 1024, 2048 whose planned memory fits in 90% of the
device's. Output: one line per figure, and everything as JSON.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import keras  # noqa: E402
import numpy as np  # noqa: E402

if keras.backend.backend() != "jax":
    raise SystemExit(f"benchmarks/accelerator.py runs on Keras's JAX backend; KERAS_BACKEND is "
                     f"{keras.backend.backend()!r}. Run it with KERAS_BACKEND=jax.")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import keras_lars  # noqa: E402
from keras_lars.train.models import build_model  # noqa: E402
from numpy_lars import NumpyLARS  # noqa: E402

OPTIMIZERS = ("sgd", "lars", "clars", "clars_sub")
FULL = dict(model="resnet50", input_shape=(224, 224, 3), classes=1000, batch=256, rounds=5, steps=10,
            policy="mixed_bfloat16")
TINY = dict(model="resnet8", input_shape=(32, 32, 3), classes=10, batch=8, rounds=2, steps=2, policy="mixed_bfloat16")
NUMERICS_TOLERANCE = 1e-5  # relative, float32 on the device against float64


def _optimizer(name):
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)
    if name == "lars":
        return keras_lars.LARS(learning_rate=0.1, weight_decay=5e-5)
    return keras_lars.CLARS(learning_rate=0.1, weight_decay=5e-5)


def _model(name, batch, s):
    keras.utils.set_random_seed(0)
    model = build_model(s["model"], s["classes"], s["input_shape"])
    optimizer = _optimizer(name)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if name.startswith("clars"):
        keras_lars.attach_per_example_norms(model, sub_batch_size=batch // 4 if name == "clars_sub" else None)
    optimizer.build(model.trainable_variables)
    return model


def _step_function(model):
    """(state, x, y) -> (state, loss): one jitted train step, the state
    (trainable, non-trainable, optimizer variables) donated."""
    loss_object = model.loss

    def loss_fn(trainable, non_trainable, x, y):
        logits, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss_object(y, keras.ops.cast(logits, "float32")), non_trainable

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state, x, y):
        trainable, non_trainable, optimizer_variables = state
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
        trainable, optimizer_variables = model.optimizer.stateless_apply(optimizer_variables, grads, trainable)
        return (trainable, non_trainable, optimizer_variables), loss

    return jax.jit(step, donate_argnums=0)


def _state(model):
    return ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
            [v.value for v in model.optimizer.variables])


def _planned_bytes(compiled):
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                   - m.alias_size_in_bytes)
    except Exception:  # a backend without the analysis
        return None


def _device_peak_bytes(device):
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return None if not stats else stats.get("peak_bytes_in_use")


def _data(batch, s):
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (batch,) + tuple(s["input_shape"]), "float32")
    y = jax.random.randint(key, (batch,), 0, s["classes"])
    return jax.device_put(x), jax.device_put(y)


def speed(s, batch, rounds, steps):
    """{optimizer: figures} at one batch; the steps interleaved in rounds."""
    x, y = _data(batch, s)
    contenders = {}
    for name in OPTIMIZERS:
        model = _model(name, batch, s)
        fn = _step_function(model)
        state = _state(model)
        started = time.perf_counter()
        compiled = fn.lower(state, x, y).compile()
        state, loss = compiled(state, x, y)
        jax.block_until_ready(loss)
        contenders[name] = dict(model=model, fn=compiled, state=state, times=[], loss=float(loss),
                                compile_seconds=time.perf_counter() - started, planned_bytes=_planned_bytes(compiled))
    for _ in range(rounds):
        for name, c in contenders.items():
            started = time.perf_counter()
            for _ in range(steps):
                c["state"], loss = c["fn"](c["state"], x, y)
            jax.block_until_ready(loss)
            c["times"].append((time.perf_counter() - started) / steps)
            c["loss"] = float(loss)
    figures = {}
    for name, c in contenders.items():
        step = statistics.median(c["times"])
        figures[name] = dict(step_seconds=step, images_per_second=batch / step, planned_bytes=c["planned_bytes"],
                             compile_seconds=c["compile_seconds"], final_loss=c["loss"],
                             finite=bool(math.isfinite(c["loss"])))
    figures["ratios"] = dict(
        lars_over_sgd=figures["lars"]["step_seconds"] / figures["sgd"]["step_seconds"],
        clars_over_lars=figures["clars"]["step_seconds"] / figures["lars"]["step_seconds"],
        clars_sub_over_lars=figures["clars_sub"]["step_seconds"] / figures["lars"]["step_seconds"],
    )
    return figures


def _fits(s, batch, limit):
    """Whether every optimizer's step at `batch` plans to fit in `limit` bytes."""
    x, y = _data(batch, s)
    for name in OPTIMIZERS:
        model = _model(name, batch, s)
        planned = _planned_bytes(_step_function(model).lower(_state(model), x, y).compile())
        if planned is None or planned > limit:
            return False
    return True


def _small_model():
    keras.utils.set_random_seed(1)
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(6, activation="tanh"),
        keras.layers.Dense(5),
    ])


def numerics():
    """Max relative errors on the device, float32 against float64 NumPy: one
    LARS step of every variable; CLARS's per-example norm means n_k."""
    with jax.default_matmul_precision("highest"):
        keras.mixed_precision.set_global_policy("float32")
        model = _small_model()
        rng = np.random.default_rng(0)
        x = rng.normal(size=(6, 8, 8, 3)).astype("float32")
        y = np.arange(6) % 5
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        variables = model.trainable_variables
        # LARS: one step with fixed gradients, every variable adapted.
        weights = [np.asarray(v.value, np.float64) for v in variables]
        grads = [rng.normal(size=w.shape) * 0.1 for w in weights]
        # eta 1: steps as large as the weights, so float32 storage of w does
        # not dominate the error of the step.
        optimizer = keras_lars.LARS(learning_rate=0.5, eta=1.0, weight_decay=1e-3, exclude_from_weight_decay=[])
        optimizer.apply([jnp.asarray(g, "float32") for g in grads], variables)
        reference = NumpyLARS(weight_decay=1e-3, eta=1.0)
        lars_error = 0.0
        for v, w, g in zip(variables, weights, grads):
            want, _ = reference.step(w.astype(np.float32), np.zeros_like(w), g.astype(np.float32), 0.5)
            got = np.asarray(v.value, np.float64)
            lars_error = max(lars_error, float(np.max(np.abs(got - want)) / np.max(np.abs(want - w))))
        # CLARS: n_k against each example's gradient alone.
        kernels = [v for v in variables if len(v.shape) >= 2]
        norms, _, _ = keras_lars.per_example_gradient_norms(model, x, y, loss, kernels)
        trainable = [v.value for v in model.trainable_variables]
        index = [next(i for i, t in enumerate(model.trainable_variables) if t is k) for k in kernels]

        def one(values, xi, yi):
            logits, _ = model.stateless_call(values, [], xi[None], training=True)
            return loss(yi[None], logits)

        per_example = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(trainable, jnp.asarray(x), jnp.asarray(y))
        clars_error = 0.0
        for n, i in zip(norms, index):
            g = np.asarray(per_example[i], np.float64).reshape(len(x), -1)
            want = np.mean(np.linalg.norm(g, axis=1))
            clars_error = max(clars_error, abs(float(n) - want) / want)
    lars_error, clars_error = float(lars_error), float(clars_error)
    return dict(lars_max_relative_error=lars_error, clars_max_relative_error=clars_error,
                tolerance=NUMERICS_TOLERANCE, ok=lars_error < NUMERICS_TOLERANCE and clars_error < NUMERICS_TOLERANCE)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="ResNet-8 at 32x32, batch 8 (a CPU check)")
    parser.add_argument("--batch", type=int, help="global batch (default: 256; --tiny: 8)")
    parser.add_argument("--max-batch", action="store_true", help="also the largest batch of 512/1024/2048 that fits")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; --tiny 2)")
    parser.add_argument("--steps", type=int, help="steps per round (default 10; --tiny 2)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    s = dict(TINY if args.tiny else FULL)
    for key in ("batch", "rounds", "steps"):
        if getattr(args, key) is not None:
            if getattr(args, key) < 1:
                parser.error(f"--{key} must be >= 1; got {getattr(args, key)}")
            s[key] = getattr(args, key)
    device = jax.devices()[0]
    results = dict(device=f"{device.platform}: {device.device_kind}", jax=jax.__version__, keras=keras.__version__,
                   model=s["model"], input_shape=list(s["input_shape"]), policy=s["policy"], batches={})
    print(f"device: {results['device']} (JAX {jax.__version__}, Keras {keras.__version__})", flush=True)
    results["numerics"] = numerics()
    n = results["numerics"]
    print(f"numerics (float32 vs float64 NumPy): LARS step {n['lars_max_relative_error']:.1e}, "
          f"CLARS n_k {n['clars_max_relative_error']:.1e} ({'ok' if n['ok'] else 'FAILED'}, "
          f"tolerance {n['tolerance']:g})", flush=True)
    keras.mixed_precision.set_global_policy(s["policy"])
    batches = [s["batch"]]
    if args.max_batch:
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        limit = 0.9 * stats["bytes_limit"] if stats and "bytes_limit" in stats else None
        fitting = [b for b in (512, 1024, 2048) if limit is not None and b > s["batch"] and _fits(s, b, limit)]
        batches += fitting[-1:]
    for batch in batches:
        figures = speed(s, batch, s["rounds"], s["steps"])
        results["batches"][str(batch)] = figures
        for name in OPTIMIZERS:
            f = figures[name]
            planned = "?" if f["planned_bytes"] is None else f"{f['planned_bytes'] / 2**30:.2f} GiB"
            print(f"{s['model']} b{batch} {name}: {f['step_seconds'] * 1e3:.1f} ms/step, "
                  f"{f['images_per_second']:,.0f} img/s, planned memory {planned}, "
                  f"compile {f['compile_seconds']:.0f} s, loss {f['final_loss']:.3f}", flush=True)
        r = figures["ratios"]
        print(f"{s['model']} b{batch} ratios: LARS/SGD {r['lars_over_sgd']:.3f}, CLARS/LARS "
              f"{r['clars_over_lars']:.3f}, CLARS(sub-batch {batch // 4})/LARS {r['clars_sub_over_lars']:.3f}",
              flush=True)
    peak = _device_peak_bytes(device)
    results["device_peak_bytes"] = peak
    if peak is not None:
        print(f"device peak bytes in use: {peak / 2**30:.2f} GiB", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
