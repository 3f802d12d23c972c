"""Preemption: SIGTERM (a spot or preemptible VM's notice, about 30 s before
the kill) or SIGINT (Ctrl-C) stops the run at a device-loop boundary with a
checkpoint, and the same command resumes from it.

Two mechanisms, by what the strategy needs:

- Several workers (MultiWorkerMirroredStrategy over a cluster): TensorFlow's
  `tf.distribute.experimental.PreemptionCheckpointHandler`. The worker that
  gets the signal announces it through the coordination service, all
  workers agree on a boundary (the one after the next device loop: the
  handler assumes workers are at most one call apart) and all save there,
  so the checkpoint is one collective save at one step. It is called once
  per boundary with our own guarded save (`save_fn`: no non-finite
  checkpoint) and an `exit_fn` that raises `Preempted`.
- One client (the default strategy, OneDevice, Mirrored, TPUStrategy): no
  agreement is needed, so a signal handler sets a flag that `PreemptionSave`
  reads at the next boundary and saves there. The handler is not used here:
  in its local mode it also saves one loop later, and on Google Cloud CPU
  and TPU VMs it does nothing at all (TF 2.20,
  `failure_handling.save_checkpoint_if_preempted`).

Either way the time from the signal to the exit is bounded by the rest of
the device loop running when it came (plus one more loop with several
workers), the actions at that boundary (an eval at an epoch end) and one
checkpoint save. Choose `--steps-per-loop` so that two loops, an eval and a
save fit in the grace period. Signals after the first are ignored until
the run exits.
"""

import signal
import tempfile

import tensorflow as tf

from keras_lars.train.errors import TrainerError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(TrainerError):
    """The run stopped for a signal after saving a checkpoint at `step`;
    the same command resumes from it. Exit status 75 (EX_TEMPFAIL of
    sysexits.h: try again), apart from success (0), failures (1-3)."""

    exit_status = 75

    def __init__(self, signal_name, step, checkpoint):
        super().__init__(f"preempted by {signal_name}: checkpoint at optimizer step {step} ({checkpoint}); "
                         "the same command resumes from it")
        self.record = {"signal": signal_name, "step": step, "checkpoint": checkpoint}
        self.step = step


def _multi_worker(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and resolver is not None
            and bool(resolver.cluster_spec().jobs))


class PreemptionWatch:
    """Watches for SIGTERM and SIGINT from construction to `close()`.

    Args:
        strategy: the run's `tf.distribute.Strategy`.
        save: callable() -> (step, checkpoint path): saves a checkpoint at
            the current step (raising if the state is not finite).
    """

    def __init__(self, strategy, save):
        self._save = save
        self._signal = None
        self._previous = {s: signal.getsignal(s) for s in SIGNALS}
        self._handler = None
        if _multi_worker(strategy):
            self._directory = tempfile.TemporaryDirectory(prefix="preemption_")
            self._handler = tf.distribute.experimental.PreemptionCheckpointHandler(
                strategy.cluster_resolver, tf.train.Checkpoint(), checkpoint_dir=self._directory.name,
                termination_config=tf.distribute.experimental.TerminationConfig(
                    exit_fn=self._exit, save_fn=self._save_for_handler, grace_period=0))
            # Its own SIGTERM handler announces the signal to the workers; ours
            # records the name first, and sends Ctrl-C the same way.
            self._tf_sigterm = signal.getsignal(signal.SIGTERM)
        for s in SIGNALS:
            signal.signal(s, self._on_signal)

    def _on_signal(self, signum, frame):
        if self._signal is not None:
            return
        self._signal = signal.Signals(signum).name
        if self._handler is not None:
            self._tf_sigterm(signal.SIGTERM, frame)

    def boundary(self):
        """Called by every worker at every device-loop boundary, the same
        number of times. Raises `Preempted` after saving when a signal came."""
        if self._handler is not None:
            self._handler.save_checkpoint_if_preempted()
        elif self._signal is not None:
            self._save_for_handler()
            self._exit()

    def _save_for_handler(self):
        """The save both mechanisms use; `_exit` reports its step and path."""
        self._saved = self._save()

    def _exit(self):
        step, path = self._saved
        raise Preempted(self._signal or "a peer worker's signal", step, path)

    def close(self):
        """Restores the signal handlers that were in place before; after a
        signal, ignores SIGTERM and SIGINT instead (the process is about to
        exit, and a second signal must not kill it while it writes its logs)."""
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_IGN if self._signal else handler)
        if self._handler is not None:
            self._directory.cleanup()  # its watcher threads are daemons, stopped when it is deleted
