"""Per-example squared gradient norms of Dense and convolution kernels from the
layer input `a` and the output gradient `d`, without per-example backprop.

For a layer whose pre-activation output is z_{i,t} = W^T p_{i,t} (+ b), with
p_{i,t} the input (patch) of example i at output position t and
d_{i,t} = dL/dz_{i,t}, example i's gradient is

    G_i = sum_t p_{i,t} (x) d_{i,t},        grad_b_i = sum_t d_{i,t}.

Two ways to get ||G_i||^2 (Li et al. 2021, arXiv:2110.05679; Bu et al. 2022,
arXiv:2205.10683), chosen per layer from the shapes by `choose_method`:

- "materialize": form G_i (B x kernel-size numbers) and sum its squares;
  cost ~ T * K * C_in * C_out / groups multiply-adds per example.
- "ghost": ||G_i||^2 = <P_i P_i^T, D_i D_i^T> with T x T Gram matrices;
  cost ~ T^2 * (K * C_in + C_out). With T == 1 (a Dense layer on a flat
  input) it is Goodfellow's ||a_i||^2 ||d_i||^2 (arXiv:1510.01799).

T: output positions per example, K: kernel positions. Everything is computed
in float32 (float64 inputs stay float64). Plain tensor code: `keras.ops`,
numpy-style slicing (on TensorFlow a strided layer's input is split once
into its phases, so that every kernel offset's window is a unit-stride
slice), and on TensorFlow a control dependency that copies one kernel offset's input window at a time
(peak memory: 4.3x -> 2.0x of LARS's step on ResNet-20 at batch 256).
"""

import itertools
import math

from keras import ops

from keras_lars import _backend

#: What `method` accepts: the cheaper of the two by multiply-adds, the ghost
#: norm, or materialized per-example gradients.
METHODS = ("auto", "ghost", "materialize")


def _float(x):
    return x if x.dtype == "float64" else ops.cast(x, "float32")


def choose_method(method, positions, kernel_positions, in_channels, out_channels, groups=1):
    """"ghost" or "materialize": the one with fewer multiply-adds per example.

    Args:
        method: one of `METHODS`; "auto" decides, the others are returned as is.
        positions: T, output positions per example (1 for a flat Dense input).
        kernel_positions: K, the product of the kernel's spatial sizes (1 for Dense).
        in_channels, out_channels, groups: the layer's (C_in, C_out, groups).
    """
    if method != "auto":
        return method
    materialize = positions * kernel_positions * in_channels * out_channels / groups
    ghost = positions * positions * (kernel_positions * in_channels + out_channels)
    return "ghost" if ghost < materialize else "materialize"


def dense_squared_norms(a, d, method="auto"):
    """Per-example squared norms of a Dense layer's kernel and bias gradients.

    Args:
        a: the layer input, shape (B, ..., C_in); extra axes (sequence
            positions) are summed over in G_i.
        d: dL/dz for the pre-activation output z = a @ kernel, (B, ..., C_out).
        method: one of `METHODS`.

    Returns:
        `(kernel, bias)`: two float32 tensors of shape (B,).
    """
    a, d = _float(a), _float(d)
    c_in, c_out = a.shape[-1], d.shape[-1]
    positions = math.prod(a.shape[1:-1])
    a = ops.reshape(a, (-1, positions, c_in))
    d = ops.reshape(d, (-1, positions, c_out))
    bias = ops.sum(ops.square(ops.sum(d, axis=1)), axis=-1)
    if positions == 1:
        kernel = ops.sum(ops.square(a), axis=(1, 2)) * ops.sum(ops.square(d), axis=(1, 2))
    elif choose_method(method, positions, 1, c_in, c_out) == "ghost":
        gram_a = ops.einsum("bti,bsi->bts", a, a)
        gram_d = ops.einsum("bto,bso->bts", d, d)
        kernel = ops.sum(gram_a * gram_d, axis=(1, 2))
    else:
        kernel = ops.sum(ops.square(ops.einsum("bti,bto->bio", a, d)), axis=(1, 2))
    return kernel, bias


def _pads(in_size, out_size, kernel, stride, dilation, padding):
    reach = (out_size - 1) * stride + (kernel - 1) * dilation + 1
    if padding == "valid":
        before = 0
    elif padding == "same":
        before = max(reach - in_size, 0) // 2
    elif padding == "causal":
        before = (kernel - 1) * dilation
    else:
        raise ValueError(f"Unknown padding {padding!r}; expected 'valid', 'same' or 'causal'.")
    return before, max(reach - in_size - before, 0)


def conv_squared_norms(a, d, kernel_size, strides, dilation_rate, padding, groups=1, method="auto"):
    """Per-example squared norms of a convolution's kernel and bias gradients.

    Covers Conv1D/2D/3D (any stride, padding, dilation, groups) and depthwise
    convolutions (groups = C_in, C_out = C_in * depth_multiplier, output
    channel c * multiplier + m reading input channel c), channels-last.

    Args:
        a: the layer input, shape `(B, *spatial_in, C_in)`, static spatial sizes.
        d: dL/dz for the convolution output z (before the bias),
            shape `(B, *spatial_out, C_out)`.
        kernel_size, strides, dilation_rate: tuples of ints, one per spatial axis.
        padding: "valid", "same" (TensorFlow's: the extra pixel goes after)
            or "causal" (1-D: all padding before).
        groups: channel groups; C_in and C_out are divisible by it.
        method: one of `METHODS`.

    Returns:
        `(kernel, bias)`: two float32 tensors of shape (B,).
    """
    a, d = _float(a), _float(d)
    rank = len(kernel_size)
    c_in, c_out = a.shape[-1], d.shape[-1]
    spatial_in, spatial_out = a.shape[1:-1], d.shape[1:-1]
    if None in spatial_in or None in spatial_out:
        raise ValueError(
            f"Per-example norms of a convolution need static spatial sizes; got input "
            f"{tuple(a.shape)} and output {tuple(d.shape)}."
        )
    pads = [
        _pads(spatial_in[j], spatial_out[j], kernel_size[j], strides[j], dilation_rate[j], padding)
        for j in range(rank)
    ]
    if any(p != (0, 0) for p in pads):
        a = ops.pad(a, [(0, 0)] + pads + [(0, 0)])
    positions = math.prod(spatial_out)
    d_groups = ops.reshape(d, (-1, positions, groups, c_out // groups))
    bias = ops.sum(ops.square(ops.sum(d, axis=tuple(range(1, rank + 1)))), axis=-1)
    ghost = choose_method(method, positions, math.prod(kernel_size), c_in, c_out, groups) == "ghost"
    windows = _Windows(a, dilation_rate, spatial_out, strides)
    total = None
    for offset in itertools.product(*(range(k) for k in kernel_size)):
        with _backend.after(total):
            patch = ops.reshape(windows.at(offset), (-1, positions, groups, c_in // groups))
            term = _offset_term(patch, d_groups, groups, ghost)
        total = term if total is None else total + term
    if ghost:
        if groups == 1:
            gram_d = ops.einsum("bto,bso->bts", d_groups[:, :, 0], d_groups[:, :, 0])[:, None]
        else:
            gram_d = ops.einsum("btgo,bsgo->bgts", d_groups, d_groups)
        total = ops.sum(total * gram_d, axis=(1, 2, 3))
    return total, bias


class _Windows:
    """The input window each kernel offset sees.

    On TensorFlow a strided window copied straight from the input is a slow
    gather (ResNet-20's strided layers' norms took 3.2-3.3x as long),
    so along a strided axis the input is first split once into its `stride`
    phases (every s-th position from r = 0..s-1, by one transpose); offset
    o's window is then a contiguous run of phase (o * dilation) mod s. XLA
    fuses strided slices into their consumers, so on JAX the split would
    only add a copy: there windows are strided slices of the input.
    """

    def __init__(self, a, dilation_rate, spatial_out, strides):
        self.dilation_rate = dilation_rate
        self.spatial_out = spatial_out
        self.strides = strides
        self.split = _backend.SPLIT_STRIDED_WINDOWS and any(s > 1 for s in strides)
        if not self.split:
            self.a = a
            return
        # Pad each axis to a multiple of its stride, then (B, n0, s0, n1, s1,
        # ..., C) -> (B, s0, s1, ..., n0, n1, ..., C): one transpose, after
        # which a phase is a contiguous block.
        spatial = a.shape[1:-1]
        extra = [(-n) % s for n, s in zip(spatial, strides)]
        if any(extra):
            a = ops.pad(a, [(0, 0)] + [(0, e) for e in extra] + [(0, 0)])
        rank = len(strides)
        shape = []
        for n, e, s in zip(spatial, extra, strides):
            shape += [(n + e) // s, s]
        a = ops.reshape(a, (-1,) + tuple(shape) + (a.shape[-1],))
        order = (0,) + tuple(2 + 2 * j for j in range(rank)) + tuple(1 + 2 * j for j in range(rank)) + (2 * rank + 1,)
        self.phases = ops.transpose(a, order)

    def at(self, offset):
        starts = [o * dil for o, dil in zip(offset, self.dilation_rate)]
        if not self.split:
            return self.a[(slice(None),) + tuple(
                slice(start, start + (n - 1) * s + 1, s) for start, s, n in zip(starts, self.strides, self.spatial_out))]
        phase = self.phases[(slice(None),) + tuple(start % s for start, s in zip(starts, self.strides))]
        window = tuple(slice(start // s, start // s + n) for start, s, n in zip(starts, self.strides, self.spatial_out))
        return phase[(slice(None),) + window]


def _offset_term(patch, d_groups, groups, ghost):
    """One kernel offset's share, from its input window `patch` (B, T, groups,
    C_in / groups): its Gram matrix of input windows (ghost), or the squared
    norm of its slice of the per-example gradients (materialize)."""
    if groups == 1:
        # Without the group axis the einsums are batched matmuls, no transposes (faster: docs/measurements.md).
        patch = patch[:, :, 0]
        if ghost:
            return ops.einsum("btc,bsc->bts", patch, patch)[:, None]
        return ops.sum(ops.square(ops.einsum("btc,bto->bco", patch, d_groups[:, :, 0])), axis=(1, 2))
    if ghost:
        return ops.einsum("btgc,bsgc->bgts", patch, patch)
    return ops.sum(ops.square(ops.einsum("btgc,btgo->bgco", patch, d_groups)), axis=(1, 2, 3))
