import fcntl
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("KERAS_BACKEND") == "jax":
    # Four host devices for keras.distribution (DataParallel over two,
    # ModelParallel over a 2 x 2 mesh); set before JAX starts.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()

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


# The longest files first (measured 2026-12-08 with `--durations=0`,
# docs/measurements.md): with `-n 2 --dist loadfile --no-loadscope-reorder`
# the workers take files in this order, so the long ones do not start last
# and leave one worker idle at the end. (Without --no-loadscope-reorder,
# pytest-xdist orders the files by their number of tests instead.)
LONGEST_FIRST = ("test_experiments.py", "test_imagenet_trainer.py", "test_trainer.py", "test_checkpoints.py",
                 "test_simclr_example.py", "test_layer_statistics.py", "test_clars.py", "test_runtime.py",
                 "test_preemption.py", "test_lars.py", "test_benchmarks.py", "test_keras_hub.py",
                 "test_applications.py", "test_per_example_norms.py", "test_install.py")


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

