"""The wall timer: the run's seconds by part, for `summary.json`'s
`wall_time`."""

import contextlib
import time

# The timed device loops ("steps"), the process's first loop split into its
# steps (at the later loops' rate) and the rest (tracing and XLA
# compilation), making and releasing the input iterators, evals, checkpoint
# saves (and their finiteness checks), and the per-loop logging
# (TensorBoard, progress, layer statistics, BatchNorm statistics sync).
WALL_PARTS = ("steps", "first_loop_steps", "first_loop_compile", "input_iterators", "evals", "checkpoints",
              "logging")


class WallClock:
    """Seconds by part (one of `WALL_PARTS`); the device loops' time is
    booked by `loop(steps)`, which sets the first loop apart."""

    def __init__(self):
        self.seconds = dict.fromkeys(WALL_PARTS, 0.0)
        self.timed_seconds, self.timed_steps = 0.0, 0
        self._first_loop = None  # (steps, seconds)

    @contextlib.contextmanager
    def part(self, name):
        """Books the time inside the `with` block to `name`.

        Raises:
            KeyError: `name` is not one of `WALL_PARTS`.
        """
        self.seconds[name]  # noqa: B018 (a bad name fails before the block runs)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def loop(self, steps, seconds):
        """Books a device loop of `steps` optimizer steps that took `seconds`;
        the process's first one traces and compiles, so it is kept apart."""
        if self._first_loop is None:
            self._first_loop = (steps, seconds)
        else:
            self.timed_seconds += seconds
            self.timed_steps += steps

    def wall_time(self):
        """{part: seconds} over `WALL_PARTS`; the first loop is split into
        its steps (at the later loops' rate, or its own if it was the only
        one) and compilation."""
        steps, seconds = self._first_loop or (0, 0.0)
        rate = self.timed_seconds / self.timed_steps if self.timed_steps else seconds / max(steps, 1)
        first_steps = min(steps * rate, seconds)
        return {**self.seconds, "steps": self.timed_seconds, "first_loop_steps": first_steps,
                "first_loop_compile": seconds - first_steps}
