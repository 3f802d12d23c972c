"""Independent NumPy reference of LARS, written from the paper (float64).

You, Gitman & Ginsburg (2017), Algorithm 1 with Eq. 6:
    lambda = eta * ||w|| / (||g|| + beta * ||w||)
    v <- m * v + gamma_t * lambda * (g + beta * w);  w <- w - v
plus the variants the optimizer offers (epsilon, Nesterov, the
||g + beta w|| denominator of Model Garden/optax, LARC clipping) and the
zero-norm guard (lambda = 1).

CLARS (Huo, Gu & Huang 2021, Eq. 5): pass `gradient_norm` = n_k, the mean of
the per-example gradient norms, which replaces ||g|| in the denominator.
"""

import numpy as np


class NumpyLARS:
    def __init__(self, momentum=0.9, weight_decay=0.0, eta=0.001, epsilon=0.0, nesterov=False,
                 denominator="sum_of_norms", trust_clip=False):
        self.m, self.beta, self.eta, self.eps = momentum, weight_decay, eta, epsilon
        self.nesterov, self.denominator, self.trust_clip = nesterov, denominator, trust_clip

    def trust_ratio(self, w, g, lr, beta, gradient_norm=None):
        w_norm = np.linalg.norm(w.ravel())
        if gradient_norm is not None:
            g_norm = gradient_norm
            denom = g_norm + beta * w_norm + self.eps
        elif self.denominator == "sum_of_norms":
            g_norm = np.linalg.norm(g.ravel())
            denom = g_norm + beta * w_norm + self.eps
        else:
            g_norm = np.linalg.norm((g + beta * w).ravel())
            denom = g_norm + self.eps
        ratio = self.eta * w_norm / denom if (w_norm > 0 and g_norm > 0) else 1.0
        if self.trust_clip:
            ratio = min(ratio / lr, 1.0) if lr > 0 else 1.0
        return ratio

    def step(self, w, v, g, lr, adapt=True, decay=True, gradient_norm=None):
        """Returns (w, v) after one step; v is None when momentum is 0.
        `gradient_norm`: CLARS's n_k (None: LARS, ||g||)."""
        w, g = np.asarray(w, np.float64), np.asarray(g, np.float64)
        beta = self.beta if decay else 0.0
        ratio = self.trust_ratio(w, g, lr, beta, gradient_norm) if adapt else 1.0
        scaled = lr * ratio * (g + beta * w)
        if v is None:
            return w - scaled, None
        v = self.m * np.asarray(v, np.float64) + scaled
        update = self.m * v + scaled if self.nesterov else v
        return w - update, v

    def statistics(self, w, v, g, lr, adapt=True, decay=True, gradient_norm=None):
        """The layer statistics of one step from (w, v, g) before it: a dict
        named as `keras_lars.update.STATISTICS`, from this reference's step."""
        w, g = np.asarray(w, np.float64), np.asarray(g, np.float64)
        beta = self.beta if decay else 0.0
        clip, self.trust_clip = self.trust_clip, False
        ratio = self.trust_ratio(w, g, lr, beta, gradient_norm) if adapt else 1.0
        self.trust_clip = clip
        clipped = self.trust_ratio(w, g, lr, beta, gradient_norm) if adapt else 1.0
        new_w, _ = self.step(w, v, g, lr, adapt, decay, gradient_norm)
        w_norm = np.linalg.norm(w.ravel())
        update_norm = np.linalg.norm((w - new_w).ravel())
        return {
            "weight_norm": w_norm,
            "gradient_norm": np.linalg.norm(g.ravel()),
            "trust_ratio": ratio,
            "clipped_trust_ratio": clipped,
            "local_learning_rate": lr * clipped,
            "update_norm": update_norm,
            "update_ratio": update_norm / w_norm if w_norm > 0 else np.inf,
        }
