"""The experiments' pinned runtime (`experiments.runtime`): the same spec
gives identical per-epoch numbers whatever instruction set the machine
offers at or above the pinned one and whatever its core count. Machines
are emulated on this one: a cap the process starts with (`XLA_FLAGS`,
`ONEDNN_MAX_CPU_ISA`) stands for a machine with that much, one CPU in the
affinity mask for a 1-core machine. Each run is a fresh process."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from experiments import runs, runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# BatchNorm, convolutions, pooling and CLARS's per-example norm kernels.
SPEC = dict(method="clars", batch_size=1024, learning_rate=4.0, epochs=2, model="cnn3", eta=0.01, seed=1,
            max_steps=2)
TRAIN = """
import json, sys, tempfile
from experiments import runs
runs.configure_runtime()
summary = runs.run(runs.RunSpec(**json.loads(sys.argv[1])), tempfile.mkdtemp(), log=lambda *a: None)
print(json.dumps(summary))
"""
AVX512 = "avx512f" in runtime.cpu_flags()


def _train(machine_caps=None, pinned=True, cpus=None):
    """The run summary of SPEC in a fresh process started with `machine_caps`
    (an ISA name for both caps, or None) and `cpus` (an affinity list)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "ONEDNN_MAX_CPU_ISA", runtime.SWITCH)}
    env.update(TF_CPP_MIN_LOG_LEVEL="2")
    if machine_caps:
        env.update(XLA_FLAGS=f"--xla_cpu_max_isa={machine_caps}", ONEDNN_MAX_CPU_ISA=machine_caps)
    if not pinned:
        env[runtime.SWITCH] = "0"
    command = [sys.executable, "-c", TRAIN, json.dumps(SPEC)]
    if cpus is not None:
        command = ["taskset", "-c", ",".join(map(str, cpus))] + command
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _numbers(summary):
    return [(e["train_loss"], e["train_top1"], e["test_top1"]) for e in summary["epochs"]]


@pytest.mark.slow
def test_a_run_is_identical_on_every_machine_at_or_above_the_pinned_instruction_set():
    # The reference: a 1-core machine with AVX2 only (where taskset and a
    # second core exist); then this machine, whatever it has, on all cores.
    cpus = sorted(os.sched_getaffinity(0))
    one_core = cpus[:1] if shutil.which("taskset") and len(cpus) > 1 else None
    reference = _train(runtime.ISA, cpus=one_core)
    assert reference["environment"]["xla_cpu_max_isa"] == reference["environment"]["onednn_max_cpu_isa"] == "AVX2"
    assert _numbers(_train(None)) == _numbers(reference)
    if AVX512:
        # The control: without the pin this machine's AVX-512 kernels give
        # other numbers than an AVX2 machine's (the reference's caps), so the
        # comparisons above could fail.
        unpinned = _train(None, pinned=False)
        assert unpinned["environment"]["onednn_max_cpu_isa"] is None
        assert _numbers(unpinned) != _numbers(reference)


def test_pin_caps_the_instruction_set_and_keeps_other_xla_flags():
    environ = {"XLA_FLAGS": "--xla_cpu_max_isa=AVX512 --xla_dump_to=/tmp/x", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}
    runtime.pin(environ)
    assert environ["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/x", "--xla_cpu_max_isa=AVX2"]
    assert environ["ONEDNN_MAX_CPU_ISA"] == "AVX2" and environ["TF_ENABLE_ONEDNN_OPTS"] == "1"


def _pinned(monkeypatch):
    """This process's environment as `runtime.pin` leaves it (undone after the test)."""
    environ = {}
    runtime.pin(environ)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)


def test_importing_the_experiments_pins_nothing():
    """Only entry points pin (`configure`): a test process that imports the
    experiments, and the trainer runs it starts, keep their environment
    (oneDNN capped at AVX2 has no bfloat16 convolution)."""
    code = "import os; from experiments import runs; print(os.environ.get('ONEDNN_MAX_CPU_ISA'))"
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "None", result.stderr[-2000:]


def test_the_environment_records_the_instruction_set_and_the_caps(monkeypatch):
    _pinned(monkeypatch)
    env = runtime.environment()
    assert set(env["cpu_flags"]) <= set(runtime.ISA_FLAGS)
    assert ("avx2" in env["cpu_flags"]) == ("avx2" in open("/proc/cpuinfo").read().split())
    assert env["xla_cpu_max_isa"] == env["onednn_max_cpu_isa"] == runtime.ISA and env["threads"] == 1


def test_what_differs_from_a_recorded_run_is_said_in_one_line(monkeypatch):
    _pinned(monkeypatch)
    here = runtime.environment()
    assert runtime.reproducible_on_this_machine(here) == ""
    older = dict(here, tensorflow="2.20.0", xla_cpu_max_isa=None, onednn_max_cpu_isa=None)
    line = runtime.reproducible_on_this_machine(older)
    assert "\n" not in line
    assert "the software differs (tensorflow 2.20.0 -> " in line and "the runtime differs (xla_cpu_max_isa None" in line
    no_avx2 = dict(here, cpu_flags=["sse4_1", "sse4_2", "avx"])
    assert "the machine differs (the recorded machine lacks AVX2/FMA" in runtime.reproducible_on_this_machine(no_avx2)
    # An Intel Xeon's run did not rerun bit for bit on an AMD EPYC with the same caps (2026-12-07).
    other_cpu = dict(here, cpu="Another CPU")
    assert runtime.reproducible_on_this_machine(other_cpu) == (
        f"the machine differs (CPU Another CPU -> {here['cpu']}: pinned runs are bit-identical on the CPU model "
        "that made them only)")


def test_a_cached_run_of_another_runtime_is_trained_again(tmp_path, monkeypatch):
    _pinned(monkeypatch)
    spec = runs.RunSpec(**SPEC)
    path = tmp_path / (spec.run_id() + ".json")
    summary = dict(spec=SPEC, run_id=spec.run_id(), environment=runtime.environment())
    path.write_text(json.dumps(summary))
    assert runs.read_cached(spec, str(tmp_path)) == summary
    path.write_text(json.dumps(dict(summary, environment=dict(summary["environment"], onednn_max_cpu_isa=None))))
    assert runs.read_cached(spec, str(tmp_path)) is None  # made before the pin: stale


def test_an_unpinned_process_judges_a_rerun_by_the_pinned_caps(monkeypatch):
    """The test process is not pinned, `experiments.reproduce` is: a pinned
    run is judged against `pinned_caps()`, not this process's caps."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv(runtime.SWITCH, raising=False)
    assert runtime.caps() == dict(xla_cpu_max_isa=None, onednn_max_cpu_isa=None)
    assert runtime.pinned_caps() == dict(xla_cpu_max_isa=runtime.ISA, onednn_max_cpu_isa=runtime.ISA)
    recorded = runtime.environment(runtime.pinned_caps())
    assert runtime.reproducible_on_this_machine(recorded, runtime.environment(runtime.pinned_caps())) == ""
    assert "the runtime differs" in runtime.reproducible_on_this_machine(recorded)
    monkeypatch.setenv(runtime.SWITCH, "0")
    assert runtime.pinned_caps() == runtime.caps()
