"""The runtime every experiment trains in, pinned so that a spec gives the
same numbers, bit for bit, on any core count and whatever instruction set
at or above AVX2 the CPU offers, for the software versions and the CPU
model a run file records. Across CPU models it is not enough: a run of an
Intel Xeon did not rerun bit for bit on an AMD EPYC (docs/results.md,
"Reproducibility"); `reproducible_on_this_machine` says so.

What a CPU run's numerics depend on besides its spec and the software, and
how each is pinned:

- XLA's CPU code generation targets the host's instruction set (vector width,
  FMA contraction, AVX-512 reductions): capped at `ISA` by
  `XLA_FLAGS=--xla_cpu_max_isa=AVX2`.
- oneDNN picks its kernels (TensorFlow's own ops, and the GEMMs inside the
  Eigen contractions XLA calls for dots and convolutions) by the host's
  instruction set at run time: capped by `ONEDNN_MAX_CPU_ISA=AVX2`.
- The thread split of reductions and contractions: one intra-op and one
  inter-op thread (`configure()`), whatever the core count.
- Non-deterministic kernels: TensorFlow's op determinism (`configure()`),
  which also makes Keras run `model.fit`'s step as TensorFlow ops (oneDNN
  kernels, `TF_ENABLE_ONEDNN_OPTS=1`) rather than one XLA cluster; XLA then
  compiles only the optimizer's per-variable updates.

Both caps are read once, when TensorFlow first compiles or runs a kernel, so
`configure()` sets them (`pin()`) and every entry point calls it before
TensorFlow runs an op. Only those processes are pinned: importing this
module changes nothing (a test process that imports the experiments keeps
its own environment, and so do the processes it starts). `environment()` records the host's instruction-set
features and the caps in effect in every run file.
"""

import os
import platform

ISA = "AVX2"  # the pinned instruction set: every x86-64 CPU since 2013-2015 has it
THREADS = 1
# /proc/cpuinfo flags the numerical kernels dispatch on, oldest first.
ISA_FLAGS = ("sse4_1", "sse4_2", "avx", "f16c", "fma", "avx2", "avx512f", "avx512dq", "avx512cd", "avx512bw",
             "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16")
# Set to "0" to train without the caps (only to measure what they change).
SWITCH = "KERAS_LARS_PIN_ISA"


def pinned():
    """Whether this process trains under the caps (`SWITCH` is not "0")."""
    return os.environ.get(SWITCH, "1") != "0"


def pin(environ=os.environ):
    """Sets the instruction-set caps in `environ` (an existing `XLA_FLAGS`
    keeps its other flags; an existing `--xla_cpu_max_isa` is replaced) and
    TensorFlow's oneDNN kernels on (its x86 default, which the committed runs
    used). Does nothing when `pinned()` is false."""
    if not pinned():
        return
    environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    flags = [f for f in environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_cpu_max_isa")]
    environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_cpu_max_isa={ISA}"])
    environ["ONEDNN_MAX_CPU_ISA"] = ISA


def configure():
    """The instruction-set caps (`pin()`), one intra- and inter-op thread and
    op determinism. Call before TensorFlow runs any op; later calls do
    nothing."""
    if getattr(configure, "done", False):
        return
    pin()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(THREADS)
    tf.config.experimental.enable_op_determinism()
    configure.done = True


def cpu_flags():
    """The host's `ISA_FLAGS` (from /proc/cpuinfo; empty where unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return []
    return [flag for flag in ISA_FLAGS if flag in flags]


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def caps():
    """The caps in effect in this process: {"xla_cpu_max_isa", "onednn_max_cpu_isa"} (None: uncapped)."""
    xla = [f.split("=", 1)[1] for f in os.environ.get("XLA_FLAGS", "").split() if f.startswith("--xla_cpu_max_isa=")]
    return dict(xla_cpu_max_isa=xla[-1] if xla else None, onednn_max_cpu_isa=os.environ.get("ONEDNN_MAX_CPU_ISA"))


def pinned_caps():
    """The caps a training process started now would run under: `ISA` for
    both when `pinned()`, else this process's."""
    return dict(xla_cpu_max_isa=ISA, onednn_max_cpu_isa=ISA) if pinned() else caps()


def environment(run_caps=None):
    """What a run's numbers depend on besides its spec: software versions,
    the CPU, its instruction-set features and the caps the run used
    (`run_caps`, by default this process's `caps()`)."""
    import keras
    import numpy as np
    import tensorflow as tf

    return dict(tensorflow=tf.__version__, keras=keras.__version__, numpy=np.__version__,
                python=platform.python_version(), cpu=cpu_name(), machine=platform.machine(),
                cpu_flags=cpu_flags(), **(run_caps or caps()), threads=THREADS)


def reproducible_on_this_machine(recorded, here=None):
    """'' when a run recorded as `recorded` (a run file's "environment") should
    rerun bit-identically in the environment `here` (by default this
    process's), else one line saying what differs: the software (versions),
    the runtime (caps, threads) or the machine (an instruction set below the
    pinned one, or another CPU model)."""
    here = here or environment()
    software = [f"{k} {recorded.get(k)} -> {here[k]}" for k in ("tensorflow", "keras", "numpy", "python")
                if recorded.get(k) != here[k]]
    runtime = [f"{k} {recorded.get(k)} -> {here[k]}" for k in ("xla_cpu_max_isa", "onednn_max_cpu_isa", "threads")
               if recorded.get(k) != here[k]]
    parts = []
    if software:
        parts.append("the software differs (" + ", ".join(software) + ")")
    if runtime:
        parts.append("the runtime differs (" + ", ".join(runtime) + "; runs before the pin recorded no caps)")
    for label, env in (("here", here), ("the recorded machine", recorded)):
        if env.get("cpu_flags") is not None and not {"avx2", "fma"} <= set(env["cpu_flags"]):
            parts.append(f"the machine differs ({label} lacks AVX2/FMA, the pinned instruction set)")
    if recorded.get("cpu") is not None and recorded["cpu"] != here.get("cpu"):
        parts.append(f"the machine differs (CPU {recorded['cpu']} -> {here.get('cpu')}: pinned runs are bit-identical "
                     "on the CPU model that made them only)")
    return "; ".join(parts)
