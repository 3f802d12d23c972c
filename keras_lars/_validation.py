"""Argument checks shared by the optimizers and schedules."""

import math
import numbers


def check_number(name, value, accepted, ok, integral=False):
    """Raises ValueError naming `name`, `value` and what is `accepted` unless
    `value` is a finite real (or, with `integral`, an integer) number with
    `ok(value)`. NaN and infinities are always refused."""
    kind = numbers.Integral if integral else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"`{name}` must be {accepted}. Received: {name}={value!r}")
