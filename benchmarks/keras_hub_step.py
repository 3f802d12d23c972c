"""CLARS train step / LARS train step on KerasHub's backbone families (the
one-layer configs of tests/test_keras_hub.py), side by side in one process:
rounds alternate which optimizer goes first; the ratio of medians is
reported per family with its route (rules or the vectorized fallback).

    .venv/bin/python benchmarks/keras_hub_step.py [--batch 48] [--steps 10] [--rounds 3] [--only bert,vit]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_lars  # noqa: E402
import test_keras_hub as hub  # noqa: E402


def _batch(x, batch):
    return keras.tree.map_structure(lambda t: np.concatenate([t] * (batch // len(t) + 1))[:batch], x)


def _seconds_per_step(name, optimizer, batch, steps):
    model, x = hub._model(name)
    x = _batch(x, batch)
    y = np.arange(batch) % 3
    route = {"unsupported_layers": "vectorized"} if hub.FAMILIES[name][1] == "vectorized" else {}
    if optimizer == "lars":
        model.compile(optimizer=keras_lars.LARS(learning_rate=0.1), loss=hub._loss(), jit_compile=False)
    else:
        model.compile(optimizer=keras_lars.CLARS(learning_rate=0.1), loss=hub._loss(), jit_compile=False)
        keras_lars.attach_per_example_norms(model, **route)
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # trace and compile
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=steps, verbose=0)
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else sorted(hub.FAMILIES)
    print(f"backend {keras.backend.backend()}, batch {args.batch}, {args.steps} steps, {args.rounds} rounds")
    print("| family | route | LARS step, ms | CLARS step, ms | CLARS / LARS |")
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        times = {"lars": [], "clars": []}
        for r in range(args.rounds):
            for optimizer in (("lars", "clars") if r % 2 == 0 else ("clars", "lars")):
                times[optimizer].append(_seconds_per_step(name, optimizer, args.batch, args.steps))
        lars, clars = statistics.median(times["lars"]), statistics.median(times["clars"])
        print(f"| {name} | {hub.FAMILIES[name][1]} | {lars * 1e3:.1f} | {clars * 1e3:.1f} | {clars / lars:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
