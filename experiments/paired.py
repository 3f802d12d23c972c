"""Seed-paired comparisons of two methods.

The same seed gives every method the same initial weights and the same data
order (`experiments.data.datasets`), so two methods' runs pair by seed, and
their difference is judged on the per-seed differences d_i = a_i - b_i:
mean, a two-sided t interval over the pairs,

    mean(d) +- t_{(1 + confidence) / 2, n - 1} * std(d, ddof=1) / sqrt(n),

and how many pairs favour each side. A verdict reads the interval: "ahead"
when it lies above 0, "behind" when below, "level" when it contains 0.
"""

import math

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def paired_difference(a, b, seeds_a, seeds_b, confidence=CONFIDENCE):
    """The seed-paired difference a - b.

    Args:
        a, b: sequences of floats, one score per seed (a diverged run already
            counted as chance by the caller).
        seeds_a, seeds_b: the seeds of `a` and `b`, in the same order; only
            seeds in both pair.
        confidence: float in (0, 1), the interval's coverage.

    Returns:
        dict(n, mean, low, high, wins, losses, seeds, confidence): the number
        of pairs, the mean difference, the t interval's ends (None for fewer
        than 2 pairs), the pairs with a > b and a < b, and the paired seeds.

    Raises:
        ValueError: a and seeds_a (or b and seeds_b) of different lengths, or
            no seed in common.
    """
    if len(a) != len(seeds_a) or len(b) != len(seeds_b):
        raise ValueError(f"each score needs its seed: {len(a)} scores for {len(seeds_a)} seeds, "
                         f"{len(b)} for {len(seeds_b)}")
    seeds = [s for s in seeds_a if s in set(seeds_b)]
    if not seeds:
        raise ValueError(f"no seed in common: {list(seeds_a)} and {list(seeds_b)}")
    by_a, by_b = dict(zip(seeds_a, a)), dict(zip(seeds_b, b))
    d = np.array([by_a[s] - by_b[s] for s in seeds], np.float64)
    mean = float(d.mean())
    low = high = None
    if len(d) >= 2:
        half = stats.t.ppf((1 + confidence) / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        low, high = mean - half, mean + half
    return dict(n=len(d), mean=mean, low=low, high=high, wins=int((d > 0).sum()), losses=int((d < 0).sum()),
                seeds=seeds, confidence=confidence)


def reading(difference):
    """'ahead', 'behind' or 'level' (the interval contains 0, or fewer than
    2 pairs) for a `paired_difference`."""
    if difference["low"] is not None and difference["low"] > 0:
        return "ahead"
    if difference["high"] is not None and difference["high"] < 0:
        return "behind"
    return "level"


def text(difference, digits=3):
    """'+0.021 [+0.004, +0.038], 3/3' : mean, interval, pairs favouring a."""
    f = lambda v: f"{v:+.{digits}f}"  # noqa: E731
    interval = "" if difference["low"] is None else f" [{f(difference['low'])}, {f(difference['high'])}]"
    return f"{f(difference['mean'])}{interval}, {difference['wins']}/{difference['n']}"
