"""Per-example squared norms of a convolution's kernel gradient: three
kernels for the same numbers, per layer shape (not a test).

- "offsets" (keras_lars's materialized path): per kernel offset, a copied
  unit-stride input window (of one of the input's phases, for a strided
  layer) and one batched matmul, squares summed.
- "im2col": all offsets' windows concatenated, one batched matmul with
  K * C_in rows (fewer, larger matmuls; K times the input in memory).
- "grouped": the per-example weight gradients as one depthwise convolution
  with the examples as channels and each example's output gradient as its
  filter (Rochette, Manoel & Tramel 2019, arXiv:1912.06015), squares summed.

The shapes are the 3x3 convolutions of ResNet-20 at 28x28, batch 256, and of
ResNet-50 at 64x64, batch 32. Each kernel is compiled (tf.function, with and
without XLA, or jax.jit), checked against "offsets" and timed; medians of
`--rounds` calls, as ratios to "offsets" in the same mode.

    python benchmarks/conv_norm_kernels.py [--rounds 7]
    KERAS_BACKEND=jax python benchmarks/conv_norm_kernels.py
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
from keras import ops  # noqa: E402

from keras_lars.per_example.kernels import conv_squared_norms  # noqa: E402

# (batch, input size, C_in, C_out, stride) of 3x3 "same" convolutions.
SHAPES = {
    "resnet20 stage 1": (256, 28, 16, 16, 1),
    "resnet20 stage 2 (stride 2)": (256, 28, 16, 32, 2),
    "resnet20 stage 2": (256, 14, 32, 32, 1),
    "resnet20 stage 3": (256, 7, 64, 64, 1),
    "resnet50 64x64 stage 1": (32, 16, 64, 64, 1),
    "resnet50 64x64 stage 2": (32, 8, 128, 128, 1),
    "resnet50 64x64 stage 3": (32, 4, 256, 256, 1),
}
K = 3


def _padded(a, out, stride):
    size = a.shape[1]
    reach = (out - 1) * stride + K
    before = max(reach - size, 0) // 2
    after = max(reach - size - before, 0)
    return ops.pad(a, [(0, 0), (before, after), (before, after), (0, 0)])


def offsets(a, d, stride):
    return conv_squared_norms(a, d, (K, K), (stride, stride), (1, 1), "same", 1, "materialize")[0]


def im2col(a, d, stride):
    batch, out, c_out = d.shape[0], d.shape[1], d.shape[-1]
    a = _padded(a, out, stride)
    span = (out - 1) * stride + 1
    windows = [a[:, i:i + span:stride, j:j + span:stride, :] for i in range(K) for j in range(K)]
    patches = ops.reshape(ops.concatenate(windows, axis=-1), (batch, out * out, -1))
    grads = ops.einsum("btc,bto->bco", patches, ops.reshape(d, (batch, out * out, c_out)))
    return ops.sum(ops.square(grads), axis=(1, 2))


def grouped(a, d, stride):
    batch, out, c_out = d.shape[0], d.shape[1], d.shape[-1]
    c_in = a.shape[-1]
    x = ops.transpose(_padded(a, out, stride), (3, 1, 2, 0))  # (C_in, H, W, B): examples as channels
    filters = ops.transpose(d, (1, 2, 0, 3))  # (H_out, W_out, B, C_out): each example's d is its filter
    grads = ops.depthwise_conv(x, filters, strides=1, padding="valid", dilation_rate=stride)
    grads = ops.reshape(grads[:, :K, :K, :], (c_in * K * K, batch, c_out))
    return ops.sum(ops.square(grads), axis=(0, 2))


KERNELS = {"offsets": offsets, "im2col": im2col, "grouped": grouped}


def _compiled(fn, stride, xla):
    if keras.backend.backend() == "jax":
        import jax

        jitted = jax.jit(lambda a, d: fn(a, d, stride))
        return lambda a, d: jitted(a, d).block_until_ready()
    import tensorflow as tf

    traced = tf.function(lambda a, d: fn(a, d, stride), jit_compile=xla)
    return lambda a, d: traced(a, d).numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    modes = [True] if keras.backend.backend() == "jax" else [False, True]
    rng = np.random.default_rng(0)
    print(f"backend {keras.backend.backend()}; median ms, ratio to offsets in the same mode, max relative difference")
    for name, (batch, size, c_in, c_out, stride) in SHAPES.items():
        out = (size + stride - 1) // stride
        a = ops.convert_to_tensor(rng.standard_normal((batch, size, size, c_in), dtype=np.float32))
        d = ops.convert_to_tensor(rng.standard_normal((batch, out, out, c_out), dtype=np.float32))
        for xla in modes:
            calls = {k: _compiled(fn, stride, xla) for k, fn in KERNELS.items()}
            ref = np.asarray(ops.convert_to_numpy(calls["offsets"](a, d)))
            times = {k: [] for k in calls}
            errors = {k: np.max(np.abs(np.asarray(ops.convert_to_numpy(call(a, d))) / ref - 1)) for k, call in calls.items()}
            for _ in range(args.rounds):  # interleaved: every kernel sees the same machine state
                for k, call in calls.items():
                    start = time.perf_counter()
                    call(a, d)
                    times[k].append(time.perf_counter() - start)
            medians = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            mode = "jit" if keras.backend.backend() == "jax" else ("xla" if xla else "graph")
            cells = "  ".join(f"{k} {m:6.1f} ms ({m / medians['offsets']:.2f}, {errors[k]:.0e})" for k, m in medians.items())
            print(f"{name:28s} {mode:5s} {cells}", flush=True)


if __name__ == "__main__":
    main()
