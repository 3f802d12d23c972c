"""The per-variable LARS update, pure `keras.ops` (it compiles with XLA):
`trust_ratio`, the one thing LARS, CLARS and LARC differ in (which norm
stands for ||g||, and LARC's clip), and `lars_update`, the momentum step
around it (You, Gitman & Ginsburg 2017, Algorithm 1)."""

import keras
from keras import ops

#: What `trust_ratio_denominator` accepts.
TRUST_RATIO_DENOMINATORS = ("sum_of_norms", "norm_of_sum")

#: What `lars_update(..., statistics=True)` returns, in this order (float32):
#: ||w||, ||g||, lambda, lambda after LARC clipping, the local learning rate,
#: ||delta w|| and ||delta w|| / ||w||.
STATISTICS = (
    "weight_norm",  # ||w||, before the update
    "gradient_norm",  # ||g||, the batch gradient the update uses (before decay)
    "trust_ratio",  # lambda (1 for a variable excluded from adaptation)
    "clipped_trust_ratio",  # lambda after LARC clipping (= lambda without trust_clip)
    "local_learning_rate",  # gamma_t * clipped lambda
    "update_norm",  # ||delta w||
    "update_ratio",  # ||delta w|| / ||w||
)


def _norm(x):
    return ops.sqrt(ops.sum(ops.square(x)))


def _compute_dtype(dtype):
    # Norms of float16/bfloat16 tensors overflow or lose precision: use float32.
    return "float64" if keras.backend.standardize_dtype(dtype) == "float64" else "float32"


def trust_ratio(weight_norm, gradient_norm, *, eta, weight_decay, epsilon, denominator):
    """The trust ratio lambda of one variable (a scalar of the norms' dtype):

        "sum_of_norms":  lambda = eta * ||w|| / (n + beta * ||w|| + epsilon)
        "norm_of_sum":   lambda = eta * ||w|| / (n + epsilon)

    with `weight_norm` = ||w||, `gradient_norm` = n, `eta`, `weight_decay`
    = beta. LARS (Eq. 6 of You et al.) passes n = ||g||, or n = ||g + beta w||
    under "norm_of_sum" (Model Garden, optax); CLARS (Eq. 5 of Huo et al.)
    passes n = n_k, the mean of the per-example gradient norms. lambda = 1
    where ||w|| == 0 (a zero-initialised variable) or n == 0.
    """
    if denominator == "sum_of_norms":
        denom = gradient_norm + weight_decay * weight_norm + epsilon
    else:
        denom = gradient_norm + epsilon
    usable = ops.logical_and(weight_norm > 0, gradient_norm > 0)
    return ops.where(usable, eta * weight_norm / ops.where(usable, denom, 1.0), 1.0)


def larc_clip(ratio, learning_rate):
    """LARC's clipped trust ratio (Ginsburg et al.): min(lambda / gamma_t, 1),
    so the effective step never exceeds gamma_t (1 where gamma_t == 0)."""
    lr = learning_rate
    return ops.where(lr > 0, ops.minimum(ratio / ops.where(lr > 0, lr, 1.0), 1.0), 1.0)


def lars_update(
    w,
    g,
    v,
    learning_rate,
    gradient_norm=None,
    weight_norm=None,
    *,
    momentum,
    eta,
    weight_decay,
    epsilon,
    adapt,
    nesterov,
    trust_clip,
    denominator,
    statistics=False,
):
    """One LARS step for one variable; pure `keras.ops`, so it compiles with XLA.

    Args:
        w: the variable's value, any shape, float16/bfloat16/float32/float64.
        g: its gradient, same shape (float32 or `w`'s dtype).
        v: the momentum slot (same shape and dtype as `w`), or None when
            `momentum == 0`.
        learning_rate: the global learning rate gamma_t, a scalar.
        gradient_norm: None (LARS: the trust ratio uses ||g||) or a float32
            scalar that replaces ||g|| in it (CLARS: n_k, the mean of the
            per-example gradient norms, Eq. 5 of Huo et al.); then
            `denominator` must be "sum_of_norms". LARS passes ||g|| itself
            here when computed outside the update (`_backend.fast_norm`).
        weight_norm: None or a float32 scalar, ||w|| computed by the caller.
        momentum, eta, weight_decay, epsilon: Python floats (see `LARS`);
            `weight_decay` is 0 for a variable excluded from decay.
        adapt: Python bool, False for a variable excluded from adaptation.
        nesterov, trust_clip: Python bools.
        denominator: one of `TRUST_RATIO_DENOMINATORS`.
        statistics: Python bool; also return this step's `STATISTICS`.

    Returns:
        `(new_w, new_v)` in the dtypes of `w` and `v` (`new_v` None if `v` is),
        and with `statistics`, a float32 vector of `len(STATISTICS)` values.
    """
    dtype = _compute_dtype(w.dtype)
    w32 = ops.cast(w, dtype)
    g32 = ops.cast(g, dtype)
    lr = ops.cast(learning_rate, dtype)
    decayed = g32 + weight_decay * w32 if weight_decay else g32
    ratio = clipped = ops.ones((), dtype)
    if adapt:
        w_norm = _norm(w32) if weight_norm is None else ops.cast(weight_norm, dtype)
        if gradient_norm is not None:
            g_norm, denominator = ops.cast(gradient_norm, dtype), "sum_of_norms"
        else:
            g_norm = _norm(g32 if denominator == "sum_of_norms" else decayed)
        ratio = clipped = trust_ratio(w_norm, g_norm, eta=eta, weight_decay=weight_decay, epsilon=epsilon,
                                      denominator=denominator)
        if trust_clip:
            clipped = larc_clip(ratio, lr)
        scaled = (lr * clipped) * decayed
    else:
        scaled = lr * decayed
    if v is None:
        step, new_v = scaled, None
    else:
        new_v = momentum * ops.cast(v, dtype) + scaled
        step = momentum * new_v + scaled if nesterov else new_v
        new_v = ops.cast(new_v, v.dtype)
    new_w = ops.cast(w32 - step, w.dtype)
    if not statistics:
        return new_w, new_v
    w_norm = w_norm if adapt else _norm(w32)
    update_norm = _norm(step)
    values = [w_norm, _norm(g32), ratio, clipped, lr * clipped, update_norm, update_norm / w_norm]
    return new_w, new_v, ops.cast(ops.stack(values), "float32")
