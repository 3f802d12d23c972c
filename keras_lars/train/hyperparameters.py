"""The hyper-parameters the trainer's `TrainConfig` and the experiments'
`RunSpec` share, in one place: each one's default and the values it
accepts. The two name them differently (the trainer by MLPerf's keys,
`lars_opt_momentum`; a run spec by the field names that fix its committed
run files' ids, `momentum`), so each check takes the caller's name."""

import dataclasses
import math
from typing import Callable


def _real(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(value):
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
    """`default` (None: the caller resolves it), and what is accepted: in
    words for the error, and as a predicate."""

    default: object
    accepted: str
    valid: Callable[[object], bool]

    def check(self, name, value):
        """Returns `value`.

        Raises:
            ValueError: "<name> must be <accepted>. Received: <value>".
        """
        if not self.valid(value):
            raise ValueError(f"{name} must be {self.accepted}. Received: {value!r}")
        return value


LEARNING_RATE = Hyperparameter(None, "a finite float > 0", lambda v: _real(v) and v > 0)
WARMUP_EPOCHS = Hyperparameter(None, "a finite float >= 0", lambda v: _real(v) and v >= 0)
EPOCHS = Hyperparameter(None, "an int >= 1", lambda v: _int(v) and v >= 1)
# LARS's trust coefficient (You et al. 2017; MLPerf's); CLARS's default is
# the trainer's to choose.
ETA = Hyperparameter(0.001, "a finite float > 0", lambda v: _real(v) and v > 0)
MOMENTUM = Hyperparameter(0.9, "a float in [0, 1)", lambda v: _real(v) and 0 <= v < 1)
WEIGHT_DECAY = Hyperparameter(1e-4, "a finite float >= 0", lambda v: _real(v) and v >= 0)
# The polynomial decay's power (MLPerf's 2); 0 keeps the LR constant.
POLY_POWER = Hyperparameter(2.0, "a finite float >= 0", lambda v: _real(v) and v >= 0)
SEED = Hyperparameter(0, "an int >= 0", lambda v: _int(v) and v >= 0)
