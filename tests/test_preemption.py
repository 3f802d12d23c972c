"""The trainer preempted: SIGTERM or SIGINT to real trainer processes on real
Fashion-MNIST (one process, and two MultiWorkerMirroredStrategy workers on
127.0.0.1), then the same command resumed."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from ports import free_ports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ResNet-8, 4 steps an epoch of 2 accumulated micro-batches, an eval of the
# 10,000 test images after every epoch (a few seconds: time to signal in it).
RUN = ["--dataset", "fashion_mnist", "--model", "resnet8", "--global-batch-size", "64", "--steps-per-epoch", "4",
       "--epochs", "2", "--eval-every-epochs", "1", "--gradient-accumulation-steps", "2", "--deterministic",
       "--input-benchmark-steps", "0", "--lars-opt-learning-rate-warmup-epochs", "1",
       "--lars-opt-base-learning-rate", "1", "--label-smoothing", "0"]
PREEMPTED = 75


def _command(data_dir, out, flags):
    return [sys.executable, "-m", "train", "--data-dir", data_dir, "--output-dir", str(out), *RUN, *flags]


def _train(data_dir, out, flags):
    result = subprocess.run(_command(data_dir, out, flags), cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "CI": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def _weights(out):
    """Every variable of the latest checkpoint: weights (Keras saves the
    trainable ones under the optimizer), BN statistics, optimizer state; not
    the checkpoint's own count of saves (a run preempted at an epoch's end
    saves once more than one that was not)."""
    reader = tf.train.load_checkpoint(str(out / "checkpoints"))
    skip = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")
    names = [n for n in reader.get_variable_to_shape_map() if n not in skip]
    assert sum(n.startswith("optimizer/_trainable_variables/") for n in names) > 20
    return {n: reader.get_tensor(n) for n in names}


def _mlperf(out):
    return [json.loads(line[len(":::MLLOG "):]) for line in (out / "mlperf.log").read_text().splitlines()]


def _wait_for(condition, process, what):
    deadline = time.time() + 300
    while not condition():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"no {what} after 300 s"
        time.sleep(0.02)


_uninterrupted = {}


def _uninterrupted_run(data_dir, tmp_path_factory, flags):
    key = tuple(flags)
    if key not in _uninterrupted:
        out = tmp_path_factory.mktemp("whole") / "run"
        _train(data_dir, out, flags)
        _uninterrupted[key] = out
    return _uninterrupted[key]


def _preempt_and_resume(data_dir, out, flags, when, signals):
    """Starts a run, sends `signals` once `when(out)` holds (the first at
    once, the others 0.1 s apart: a second signal during the save), checks
    the preempted run, resumes it with the same command; returns
    (preempted summary, seconds from the first signal to the exit)."""
    process = subprocess.Popen(_command(data_dir, out, flags), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "CI": "1"})
    _wait_for(lambda: when(out), process, "the moment to signal")
    start = time.monotonic()
    for s in signals:
        process.send_signal(s)
        time.sleep(0.1)
    stderr = process.communicate(timeout=120)[1]
    seconds = time.monotonic() - start
    assert process.returncode == PREEMPTED, stderr[-3000:]
    summary = _summary(out)
    step = summary["optimizer_steps"]
    # Python runs the handlers of signals pending together by signal number
    # (SIGINT before SIGTERM): the one named is the first handled.
    name = summary["preemption"]["signal"]
    assert name in {s.name for s in signals}
    last = stderr.strip().splitlines()[-1]
    assert last == (f"python -m train: preempted by {name}: checkpoint at optimizer step {step} "
                    f"({out}/checkpoints/ckpt-{step}); the same command resumes from it"), last
    assert summary["status"] == "preempted" and summary["preemption"]["step"] == step
    assert tf.train.latest_checkpoint(str(out / "checkpoints")).endswith(f"ckpt-{step}")
    run_stop = [e for e in _mlperf(out) if e["key"] == "run_stop"][-1]
    assert run_stop["metadata"]["status"] == "aborted" and run_stop["metadata"]["preempted_at_step"] == step
    resumed = _train(data_dir, out, flags)
    assert f"resuming from {out}/checkpoints/ckpt-{step}" in resumed.stdout
    return summary, seconds


def _checkpoint_after(step):
    return lambda out: (out / "checkpoints" / f"ckpt-{step}.index").exists()


def _after(condition, seconds):
    seen = []

    def later(out):
        if not seen and condition(out):
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] >= seconds
    return later


def _eval_started(epoch):
    def started(out):
        log = out / "mlperf.log"
        return log.exists() and any(e["key"] == "eval_start" and e["metadata"].get("epoch_num") == epoch
                                    for e in _mlperf(out) if "metadata" in e)
    return started


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_gives_the_uninterrupted_weights(fashion_mnist_dir, tmp_path,
                                                                       tmp_path_factory):
    flags = ["--optimizer", "clars", "--steps-per-loop", "2"]
    whole = _uninterrupted_run(fashion_mnist_dir, tmp_path_factory, flags)
    out = tmp_path / "run"
    # Epoch 2 (steps 5-8) starts once epoch 1's checkpoint is written (its
    # first batch takes seconds: the shuffle buffer fills); then SIGTERM, and
    # SIGTERM and SIGINT again while the run saves.
    preempted, seconds = _preempt_and_resume(fashion_mnist_dir, out, flags, _after(_checkpoint_after(4), 1.0),
                                             [signal.SIGTERM, signal.SIGTERM, signal.SIGINT])
    assert preempted["optimizer_steps"] in (6, 8), preempted["optimizer_steps"]
    print(f"signal to exit {seconds:.1f} s")
    assert _summary(out)["weights_sha256"] == _summary(whole)["weights_sha256"]
    assert _summary(out)["evals"] == _summary(whole)["evals"]
    final, expected = _weights(out), _weights(whole)
    for name in expected:
        np.testing.assert_array_equal(final[name], expected[name], err_msg=name)


@pytest.mark.slow
@pytest.mark.heavy  # about a minute; the SIGTERM test also signals during a save: `make test-heavy`
def test_sigint_during_an_eval_saves_after_it_and_resumes_identically(fashion_mnist_dir, tmp_path, tmp_path_factory):
    flags = ["--optimizer", "clars", "--steps-per-loop", "2"]  # the uninterrupted run of the test above
    whole = _uninterrupted_run(fashion_mnist_dir, tmp_path_factory, flags)
    out = tmp_path / "run"
    preempted, seconds = _preempt_and_resume(fashion_mnist_dir, out, flags, _eval_started(1), [signal.SIGINT])
    print(f"signal to exit {seconds:.1f} s")
    # The eval finishes and is kept; the checkpoint is epoch 1's end. (LARS
    # takes the same path through the trainer; CLARS has more state.)
    assert preempted["optimizer_steps"] == 4 and [e["epoch"] for e in preempted["evals"]] == [1]
    assert _summary(out)["weights_sha256"] == _summary(whole)["weights_sha256"]
    assert _summary(out)["evals"] == _summary(whole)["evals"]


@pytest.mark.slow
@pytest.mark.heavy  # two worker processes for about 1.5 minutes: `make test-heavy`
def test_a_signal_to_one_worker_stops_all_at_one_step(fashion_mnist_dir, tmp_path):
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    out = tmp_path / "run"
    command = _command(fashion_mnist_dir, out, ["--distribution", "multi_worker_mirrored", "--steps-per-loop", "1",
                                                "--epochs", "3"])
    processes = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={
            **os.environ, "CI": "1",
            "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})})
        for i in range(2)
    ]
    ready = _after(_checkpoint_after(4), 1.0)
    _wait_for(lambda: ready(out), processes[0], "epoch 2")
    start = time.monotonic()
    processes[1].send_signal(signal.SIGTERM)  # the worker that is not the chief
    errors = [p.communicate(timeout=300)[1] for p in processes]
    print(f"multi-worker: signal to exit {time.monotonic() - start:.1f} s")
    assert [p.returncode for p in processes] == [PREEMPTED, PREEMPTED], errors[0][-2000:] + errors[1][-2000:]
    chief, other = _summary(out), _summary(out / "workers" / "1")
    step = chief["optimizer_steps"]
    assert other["optimizer_steps"] == step and 4 < step < 12
    assert chief["status"] == other["status"] == "preempted"
    assert other["preemption"]["signal"] == "SIGTERM" and chief["preemption"]["signal"] == "a peer worker's signal"
    assert chief["weights_sha256"] == other["weights_sha256"]
    assert tf.train.latest_checkpoint(str(out / "checkpoints")).endswith(f"ckpt-{step}")
    assert errors[0].strip().splitlines()[-1].startswith("python -m train: preempted by a peer worker's signal: "
                                                         f"checkpoint at optimizer step {step} ")
