import fcntl
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("KERAS_BACKEND") == "jax":
    # Two host devices for keras.distribution.DataParallel; set before JAX starts.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()

import pytest  # noqa: E402

try:  # the library's tests also run where only keras + jax or torch is installed
    import tensorflow as tf
except ImportError:
    tf = None

if tf is not None:
    # Two logical CPU devices give a real 2-replica MirroredStrategy; they must
    # be configured before TensorFlow initialises its devices.
    _cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )


# Two processes (as an experiment's pool, or the workers of a multi-worker
# run on one host) ask for the same unprepared dataset at the same moment:
# one prepares it, the other waits for it. The test data dir is prepared so,
# and test_trainer.py checks what each process saw.
_PREPARE = ("import sys; from keras_lars.train.data import get_builder; "
            "b = get_builder('fashion_mnist', data_dir=sys.argv[1]); "
            "print(b.info.splits['train'].num_examples, b.info.splits['test'].num_examples)")


def _prepare_in_two_processes(data_dir):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    processes = [subprocess.Popen([sys.executable, "-c", _PREPARE, str(data_dir)], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        outputs.append({"returncode": process.returncode, "stdout": out, "stderr": err[-2000:]})
    with open(f"{data_dir}.preparers.json", "w") as f:
        json.dump(outputs, f)


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory, worker_id):
    """A TFDS data_dir holding fashion_mnist, prepared once per test run by
    the real builder from Debian's files (see keras_lars.train.data) in two
    processes at once (`fashion_mnist_preparers` holds what each printed),
    under a lock in the pytest-xdist workers' shared temporary directory."""
    if worker_id == "master":  # no xdist
        data_dir = tmp_path_factory.mktemp("tfds")
        _prepare_in_two_processes(data_dir)
        return str(data_dir)
    data_dir = tmp_path_factory.getbasetemp().parent / "tfds"
    with open(f"{data_dir}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other worker waits while one prepares
        if not os.path.exists(f"{data_dir}.preparers.json"):
            _prepare_in_two_processes(data_dir)
    return str(data_dir)


@pytest.fixture(scope="session")
def fashion_mnist_preparers(fashion_mnist_dir):
    """[{"returncode", "stdout", "stderr"}] of the two processes that prepared `fashion_mnist_dir`."""
    with open(f"{fashion_mnist_dir}.preparers.json") as f:
        return json.load(f)


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One real 2-replica MirroredStrategy over the two logical CPUs, shared by
    the tests: separate strategy objects in one process reuse collective
    instance keys, and TensorFlow then mixes up their all-reduces."""
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    strategy = tf.distribute.MirroredStrategy(devices)
    assert strategy.num_replicas_in_sync == 2
    return strategy


# The longest files first (measured 2026-12-01, `--durations`): with
# `-n 2 --dist loadfile` the workers take files in this order, so the long
# ones do not start last and leave one worker idle at the end.
LONGEST_FIRST = ("test_imagenet_trainer.py", "test_experiments.py", "test_trainer.py", "test_checkpoints.py",
                 "test_preemption.py", "test_simclr_example.py", "test_runtime.py", "test_benchmarks.py",
                 "test_applications.py")


def _rank(item):
    name = os.path.basename(str(item.fspath))
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    """Drops the tests a module's `deselection_reason(name)` names (Keras's
    own test classes run against LARS in test_keras_contract.py), and puts
    the longest files first."""
    kept, dropped = [], []
    for item in items:
        reason = getattr(getattr(item, "module", None), "deselection_reason", None)
        (dropped if reason is not None and reason(item.name) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = sorted(kept, key=_rank)  # stable: the order within a file is kept


# Scheduling only: `make test` runs the files on two pytest-xdist workers, one
# file per worker at a time (--dist loadfile --no-loadscope-reorder), longest
# first, so that no long file starts while the other worker runs out of work.
# Seconds of each file's tests on a 2-core machine with both workers busy
# (docs/measurements.md, 2026-12-08); a file not named here runs last.
FILE_SECONDS = {
    "test_experiments.py": 560, "test_imagenet_trainer.py": 537, "test_trainer.py": 300,
    "test_checkpoints.py": 188, "test_simclr_example.py": 155, "test_layer_statistics.py": 121,
    "test_clars.py": 116, "test_runtime.py": 113, "test_preemption.py": 103, "test_lars.py": 74,
    "test_benchmarks.py": 74, "test_keras_hub.py": 56, "test_applications.py": 56, "test_per_example_norms.py": 44,
    "test_install.py": 30, "test_experiment_protocol.py": 22, "test_keras_contract.py": 13,
    "test_model_construction.py": 11, "test_export.py": 12, "test_docs.py": 10,
}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))  # stable: a file's own order kept
