"""The generic outer loop, as Orbit's `Controller` (orbit/controller.py):
it knows epochs, device loops and when to evaluate, and nothing of models,
data or files. Each epoch's optimizer steps are cut into device loops
(`Trainer.train(n)`, many steps per host call) that end at the epoch's end
and at multiples of the `boundaries` (`--checkpoint-every-steps`,
`--layer-statistics-every`); between loops it calls the actions.
"""

from keras_lars.train.loop.clock import WallClock


def loop_lengths(start, end, steps_per_loop, *every):
    """Sizes of the device loops that run optimizer steps start+1 .. end.

    Each loop has at most `steps_per_loop` steps and ends at every multiple of
    each of `every` (ints; 0: none), such as `--checkpoint-every-steps`, so
    the loops between two boundaries do not depend on where a run resumed.

    Returns:
        list of ints >= 1 summing to `end - start`.
    """
    lengths, step = [], start
    while step < end:
        stop = min(end, step + steps_per_loop)
        for n in every:
            if n:
                stop = min(stop, (step // n + 1) * n)
        lengths.append(stop - step)
        step = stop
    return lengths


class Action:
    """Something that runs between device loops (Orbit's actions, Keras's
    callbacks): override the hooks it needs. The controller calls them in
    the order of its `actions` list, and books their time to `part` (one of
    `clock.WALL_PARTS`)."""

    part = "logging"

    def start(self):
        """Before the first loop (set-up with side effects goes here, not in
        `__init__`: `close` is then sure to run)."""

    def epoch_start(self, epoch, loops):
        """Before epoch `epoch`'s loops; `loops`: their lengths (empty when a
        resumed run already did them all)."""

    def loop_end(self, output):
        """After each device loop; `output` is the trainer's `LoopOutput`."""

    def eval_start(self, epoch):
        """Before the eval after epoch `epoch`."""

    def evaluated(self, epoch, record):
        """After the eval: `record` is the evaluator's dict (top1, loss,
        examples, step)."""

    def epoch_end(self, epoch):
        """After the epoch and its eval, if any."""

    def close(self):
        """At the end of the run, also after an error."""


class Controller:
    """Runs epochs `first_epoch` .. `epochs` (stopping early when `stop()`
    turns true at an epoch's start).

    Args:
        trainer: has `step` (optimizer steps done), `start(first_epoch)`,
            `train(n)` -> `LoopOutput`, `close()` (see `trainer.Trainer`).
        evaluator: has `evaluate(epoch, step)` -> record dict and `close()`.
        actions: list of `Action`s.
        epochs: int, the run's last epoch.
        steps_per_epoch, steps_per_loop: ints >= 1.
        boundaries: ints (0: none); loops also end at their multiples.
        eval_due: callable(epoch) -> bool.
        stop: callable() -> bool (the target accuracy reached).
        first_epoch: int, the first epoch not finished.
        clock: `WallClock` (a new one by default).
    """

    def __init__(self, trainer, evaluator, actions, *, epochs, steps_per_epoch, steps_per_loop, boundaries=(),
                 eval_due, stop, first_epoch=1, clock=None):
        self.trainer, self.evaluator, self.actions = trainer, evaluator, list(actions)
        self.epochs, self.first_epoch = epochs, first_epoch
        self.steps_per_epoch, self.steps_per_loop, self.boundaries = steps_per_epoch, steps_per_loop, boundaries
        self.eval_due, self.stop = eval_due, stop
        self.clock = clock or WallClock()

    def run(self):
        """Raises what the trainer, evaluator or an action raises (a
        `TrainerError` for a diverged or preempted run), after closing all."""
        try:
            self._each("start")
            with self.clock.part("input_iterators"):
                self.trainer.start(self.first_epoch)
            for epoch in range(self.first_epoch, self.epochs + 1):
                if self.stop():
                    break
                self._epoch(epoch)
        finally:
            with self.clock.part("input_iterators"):
                self.trainer.close()
                self.evaluator.close()
            for action in self.actions:
                action.close()

    def _epoch(self, epoch):
        end = epoch * self.steps_per_epoch
        start = max(self.trainer.step, end - self.steps_per_epoch)
        loops = loop_lengths(start, end, self.steps_per_loop, *self.boundaries)
        self._each("epoch_start", epoch, loops)
        for length in loops:
            output = self.trainer.train(length)
            self._each("loop_end", output)
        if self.eval_due(epoch):
            self._each("eval_start", epoch)
            with self.clock.part("evals"):
                record = self.evaluator.evaluate(epoch, self.trainer.step)
            self._each("evaluated", epoch, record)
        self._each("epoch_end", epoch)

    def _each(self, hook, *args):
        for action in self.actions:
            with self.clock.part(action.part):
                getattr(action, hook)(*args)
