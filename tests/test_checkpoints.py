"""Checkpoints that cannot be used: a restart with other flags, and damaged
files (the trainer on real Fashion-MNIST, in process, and its CLI)."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from keras_lars.train.checkpoints import RUN_FLAGS
from keras_lars.train.config import TrainConfig
from keras_lars.train.errors import CheckpointError, UsageError
from keras_lars.train.runner import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_dir, out, **overrides):
    flags = dict(dataset="fashion_mnist", model="resnet8", data_dir=data_dir, output_dir=str(out),
                 global_batch_size=256, epochs=2, steps_per_epoch=2, lars_opt_learning_rate_warmup_epochs=0,
                 input_benchmark_steps=0, label_smoothing=0, eval_every_epochs=2)
    return TrainConfig(**{**flags, **overrides})


def _files(out):
    return {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}


@pytest.fixture(scope="module")
def finished_run(fashion_mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    run(_config(fashion_mnist_dir, out))
    assert {"ckpt-2.index", "ckpt-4.index", "run_config.json"} <= set(_files(out))
    return out


@pytest.fixture
def trained(finished_run, tmp_path):
    """A copy of a finished 2-epoch run (checkpoints ckpt-2 and ckpt-4),
    its paths rewritten for the copy as a user's own run would have them."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    for name in ("checkpoint", "run_config.json"):
        path = out / "checkpoints" / name
        path.write_text(path.read_text().replace(str(finished_run), str(out)))
    return out


def test_restart_with_other_flags_stops_naming_each(fashion_mnist_dir, trained):
    before = _files(trained)
    with pytest.raises(UsageError) as error:
        run(_config(fashion_mnist_dir, trained, model="resnet20", optimizer="clars"))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"--output-dir {trained} holds checkpoints of a run with other flags: ")
    assert "other flags: --model 'resnet8' -> 'resnet20'; --optimizer 'lars' -> 'clars'. Restart" in message
    assert _files(trained) == before


def test_restart_may_change_the_other_flags(fashion_mnist_dir, trained):
    # More epochs, other loops and checkpoints, and a lower LR (as after a divergence).
    summary = run(_config(fashion_mnist_dir, trained, epochs=3, checkpoint_every_steps=1, steps_per_loop=1,
                          eval_every_epochs=1, lars_opt_base_learning_rate=2.0))
    assert summary["resumed_from"].endswith("ckpt-4") and summary["optimizer_steps"] == 6
    assert not {"epochs", "checkpoint_every_steps", "lars_opt_base_learning_rate"} & set(RUN_FLAGS)


def test_a_run_without_saved_flags_reports_a_mismatch_in_one_line(fashion_mnist_dir, trained):
    (trained / "checkpoints" / "run_config.json").unlink()  # as a run from before the file existed
    with pytest.raises(UsageError) as error:
        run(_config(fashion_mnist_dir, trained, model="resnet20"))
    assert re.fullmatch(rf"checkpoint {trained}/checkpoints/ckpt-4 does not match the model and optimizer of these "
                        r"flags \(.*shape.*\): restart with the run's flags or pass a new --output-dir\.",
                        str(error.value)), str(error.value)


def _flip(path):
    data = bytearray(path.read_bytes())
    for i in range(100, 164):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


DAMAGE = {"flipped bytes": _flip, "truncated": _truncate, "missing shard": os.remove}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_latest_checkpoint_falls_back_to_the_previous(fashion_mnist_dir, trained, damage, capfd):
    data_file = trained / "checkpoints" / "ckpt-4.data-00000-of-00001"
    DAMAGE[damage](data_file)
    summary = run(_config(fashion_mnist_dir, trained, epochs=3))
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("checkpoint ")]
    assert len(lines) == 1 and lines[0].startswith(f"checkpoint {trained}/checkpoints/ckpt-4 cannot be read ("), lines
    assert lines[0].endswith("); trying the previous one")
    assert summary["resumed_from"].endswith("ckpt-2")
    assert summary["optimizer_steps"] == 6 and summary["completed"]


def test_no_readable_checkpoint_stops_with_status_1_and_overwrites_nothing(fashion_mnist_dir, trained):
    _flip(trained / "checkpoints" / "ckpt-4.data-00000-of-00001")
    (trained / "checkpoints" / "ckpt-2.data-00000-of-00001").unlink()
    before = _files(trained)
    with pytest.raises(CheckpointError) as error:
        run(_config(fashion_mnist_dir, trained, epochs=3))
    assert error.value.exit_status == 1 and "\n" not in str(error.value)
    assert str(error.value).startswith(f"no checkpoint in {trained}/checkpoints can be read: "
                                       f"{trained}/checkpoints/ckpt-4 (")
    assert _files(trained) == before
    result = subprocess.run([sys.executable, "-m", "train", *_cli_flags(fashion_mnist_dir, trained)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("python -m train: error: no checkpoint in "), result.stderr[-2000:]
    assert _files(trained) == before


def _cli_flags(data_dir, out, **overrides):
    config = _config(data_dir, out, **overrides)
    names = ("dataset", "model", "optimizer", "data_dir", "output_dir", "global_batch_size", "epochs",
             "steps_per_epoch", "lars_opt_learning_rate_warmup_epochs", "input_benchmark_steps", "label_smoothing",
             "eval_every_epochs")
    return [a for n in names for a in ("--" + n.replace("_", "-"), str(getattr(config, n)))]


def test_cli_restart_with_another_model_exits_2(fashion_mnist_dir, trained):
    result = subprocess.run([sys.executable, "-m", "train", *_cli_flags(fashion_mnist_dir, trained, model="resnet20")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"python -m train: error: --output-dir {trained} holds checkpoints of a run with other flags: "
        f"--model 'resnet8' -> 'resnet20'. Restart with that run's "
        f"{', '.join('--' + f.replace('_', '-') for f in RUN_FLAGS)} (they define its model, optimizer and state) "
        "or pass a new --output-dir.")
