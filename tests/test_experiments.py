"""The experiments package: its pieces against independent references, and
the `--quick` suite end to end (results files, plots, caching)."""

import glob
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments import (batch_scaling, cli, gradient_variance, longer_training, models, reproduce, runs, runtime,
                         self_supervised, trust_ratios)
from keras_lars.train.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="method must be one of.*'adam'"):
        runs.RunSpec(method="adam", batch_size=128, learning_rate=0.1, epochs=1)
    with pytest.raises(ValueError, match="batch_size.*Received: 0"):
        runs.RunSpec(method="lars", batch_size=0, learning_rate=0.1, epochs=1)
    with pytest.raises(ValueError, match="learning_rate must be a finite float > 0. Received: -1"):
        runs.RunSpec(method="lars", batch_size=128, learning_rate=-1, epochs=1)
    with pytest.raises(ValueError, match="model must be one of"):
        runs.RunSpec(method="lars", batch_size=128, learning_rate=0.1, epochs=1, model="vgg")
    with pytest.raises(ValueError, match=r"batch_size must be an int in \[1, 50000\].*Received: 55000"):
        runs.RunSpec(method="lars", batch_size=55000, learning_rate=0.1, epochs=1, validation_examples=10000)
    with pytest.raises(ValueError, match="validation_examples must be an int in .*Received: 60000"):
        runs.RunSpec(method="lars", batch_size=128, learning_rate=0.1, epochs=1, validation_examples=60000)
    with pytest.raises(ValueError, match="batch_norm_momentum must be None or in .*Received: 1.0"):
        runs.RunSpec(method="lars", batch_size=128, learning_rate=0.1, epochs=1, batch_norm_momentum=1.0)
    with pytest.raises(ValueError, match="'cnn3' has BatchNorm: batch_norm_momentum"):
        runs.RunSpec(method="lars", batch_size=128, learning_rate=0.1, epochs=1, model="cnn3",
                       batch_norm_momentum=None)
    with pytest.raises(ValueError, match="adapt_biases=True needs method 'lars' or 'clars'.*'sgd'"):
        runs.RunSpec(method="sgd", batch_size=128, learning_rate=0.1, epochs=1, adapt_biases=True)
    # The hyper-parameters the trainer shares are checked as the trainer checks them.
    for field, flag, bad in (("momentum", "lars_opt_momentum", 1.0), ("eta", "eta", float("inf")),
                             ("weight_decay", "lars_opt_weight_decay", -1e-4), ("epochs", "epochs", 0)):
        with pytest.raises(ValueError) as spec_error:
            runs.RunSpec(method="lars", batch_size=128, learning_rate=0.1, **{"epochs": 1, field: bad})
        with pytest.raises(ValueError) as config_error:
            TrainConfig(**{flag: bad})
        accepted = str(spec_error.value).split(" must be ", 1)[1]
        assert str(config_error.value).split(" must be ", 1)[1] == accepted and accepted.endswith(f"Received: {bad!r}")


def test_run_ids_differ_in_every_field():
    base = runs.RunSpec(method="lars", batch_size=128, learning_rate=0.1, epochs=1)
    ids = {base.run_id()}
    changes = (dict(seed=1), dict(eta=0.01), dict(warmup_epochs=1.0), dict(weight_decay=0.0), dict(nesterov=True),
               dict(validation_examples=10000), dict(batch_norm_momentum=0.9), dict(adapt_biases=True))
    for change in changes:
        ids.add(runs.RunSpec(**{**base.__dict__, **change}).run_id())
    assert len(ids) == len(changes) + 1


def test_fields_added_later_keep_the_committed_run_ids():
    """A committed run's file name is its spec's id, also for specs written
    before `validation_examples`, `batch_norm_momentum` and `adapt_biases`."""
    path = os.path.join(RESULTS, "batch_scaling", "runs", "mlp3_sgd_b512_lr0.05_e10_s0_46277540.json")
    recorded = json.loads(open(path).read())["spec"]
    assert not set(runs.ADDED_FIELDS) & set(recorded)
    assert runs.RunSpec(**recorded).run_id() + ".json" == os.path.basename(path)


def test_mlp3_nobn_is_mlp3_without_batchnorm():
    """The two regimes differ only in BatchNorm: the same Dense widths, ReLU,
    and biases on where mlp3's BatchNorm supplies the shift."""
    with_bn, without = models.build_model("mlp3"), models.build_model("mlp3_nobn")
    dense = lambda m: [(l.units, l.use_bias) for l in m.layers if isinstance(l, keras.layers.Dense)]  # noqa: E731
    assert [u for u, _ in dense(with_bn)] == [u for u, _ in dense(without)] == [512, 256, 128, 10]
    assert [b for _, b in dense(without)] == [True] * 4
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in without.layers)
    assert sum(isinstance(l, keras.layers.BatchNormalization) for l in with_bn.layers) == 3
    x = np.ones((2, 28, 28, 1), "float32")
    assert without(x).shape == (2, 10)


def _scripted(scores, test=None):
    """A train(c, seed) that returns the summary a run with validation top-1
    scores[c][seed] would have (None: diverged), and test top-1
    test[c][seed] (default: 1 - validation), recording each call."""
    calls = []

    def train(c, seed):
        calls.append((c, seed))
        top1 = scores[c][seed]
        tested = test[c][seed] if test else (None if top1 is None else 1 - top1)
        return dict(final_validation_top1=top1, final_test_top1=tested, diverged=top1 is None)

    return train, calls


def test_tune_picks_the_best_seed_mean_and_seeds_its_neighbours():
    # Seed 0 alone would pick c=2 (a lucky 0.9); the seed means pick c=4.
    scores = {1: [0.5, 0.5, 0.5], 2: [0.9, 0.6, 0.6], 4: [0.8, 0.8, 0.8], 8: [0.7, 0.7, 0.7], 16: [None] * 3}
    train, calls = _scripted(scores)
    grid, seeded, best = batch_scaling.tune([1, 2, 4, 8, 16], (0, 1, 2), False, 3, train)
    assert best == 4 and grid == [1, 2, 4, 8, 16]
    assert seeded == {1, 2, 4, 8}  # neighbours of seed 0's best (2), then of the mean's best (4)
    assert (16, 1) not in calls and (16, 0) in calls
    # Every point gets every seed at a large batch; a diverged run counts as chance.
    grid, seeded, best = batch_scaling.tune([1, 2, 4, 8, 16], (0, 1, 2), True, 3, _scripted(scores)[0])
    assert seeded == set(grid) and best == 4


def test_tune_extends_past_either_edge_until_the_best_has_two_points_each_side():
    below = {0.0625: 0.8, 0.125: 0.85, 0.25: 0.9, 0.5: 0.88, 1: 0.87, 2: 0.86}  # the best lies 4x below the grid
    grid, seeded, best = batch_scaling.tune([1, 2], (0, 1), True, 8, _scripted({c: [v, v] for c, v in below.items()})[0])
    assert grid == [0.0625, 0.125, 0.25, 0.5, 1, 2] and best == 0.25
    rising = {1: [0.5] * 2, 2: [0.6] * 2, 4: [0.7] * 2, 8: [0.8] * 2, 16: [None, 0.9], 32: [None] * 2}
    grid, _, best = batch_scaling.tune([1, 2], (0, 1), True, 8, _scripted(rising)[0])  # diverged = chance
    assert grid == [1, 2, 4, 8, 16, 32] and best == 8
    grid, _, best = batch_scaling.tune([1, 2], (0, 1), True, 1, _scripted(rising)[0])
    assert grid == [1, 2, 4] and best == 4  # the safety cap
    # A dip next to a local best: one point beyond it is not enough (mlp3, LARS, 16K).
    dip = {0.00625: 0.6, 0.0125: 0.68, 0.025: 0.7, 0.05: 0.65, 0.1: 0.529, 0.2: 0.588, 0.4: 0.577, 0.8: 0.36,
           1.6: 0.34}
    dip = {c: [v] for c, v in dip.items()}
    grid, _, best = batch_scaling.tune([0.1, 0.2, 0.4, 0.8, 1.6], (0,), True, 8, _scripted(dip)[0])
    assert grid == [0.00625, 0.0125, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6] and best == 0.025
    grid, _, best = batch_scaling.tune([0.1, 0.2, 0.4, 0.8, 1.6], (0,), True, 8, _scripted(dip)[0], margin=1)
    assert grid == [0.1, 0.2, 0.4, 0.8, 1.6] and best == 0.2  # the old rule stopped here


def test_tune_extends_down_from_a_grid_that_learned_nothing():
    """Runs that end at chance without diverging (one class predicted, top-1
    0.1 in float32) count as chance: the grid extends to the smaller LRs
    (cnn3_nobn, SGD at 16K), not stopping at whichever stuck point has the
    most finite seeds."""
    stuck = np.float32(0.1).item()
    scores = {0.025: [None] * 3, 0.05: [None, stuck, None], 0.1: [stuck] * 3, 0.2: [stuck, None, None],
              0.4: [None] * 3, 0.0125: [stuck] * 3, 0.00625: [0.5] * 3, 0.003125: [0.6] * 3,
              0.0015625: [0.55] * 3, 0.00078125: [0.5] * 3}
    grid, _, best = batch_scaling.tune([0.025, 0.05, 0.1, 0.2, 0.4], (0, 1, 2), False, 8, _scripted(scores)[0])
    assert best == 0.003125 and grid[:2] == [0.00078125, 0.0015625]


def test_tune_reports_the_seeds_of_every_extension():
    """Points seeded before an extension stay seeded: every trained run is
    reported (8 was a neighbour of the first best, 4)."""
    scores = {1: [0.5] * 3, 2: [0.85] * 3, 4: [0.8] * 3, 8: [0.7] * 3}
    train, calls = _scripted(scores)
    grid, seeded, best = batch_scaling.tune([4, 8], (0, 1, 2), False, 8, train, margin=1)
    assert grid == [1, 2, 4, 8] and best == 2
    assert seeded == {1, 2, 4, 8} and (8, 2) in calls


def test_tune_reads_validation_never_test():
    """Test top-1 that would pick another point (its 1 - validation by
    default, so the worst validation point has the best test) changes
    nothing: the best is chosen on validation."""
    scores = {c: [v] * 3 for c, v in {1: 0.5, 2: 0.7, 4: 0.9, 8: 0.7, 16: 0.5}.items()}
    _, _, best = batch_scaling.tune([1, 2, 4, 8, 16], (0, 1, 2), True, 0, _scripted(scores)[0])
    assert best == 4
    inverted = {c: [0.99 if c == 16 else 0.1] * 3 for c in scores}
    _, _, best = batch_scaling.tune([1, 2, 4, 8, 16], (0, 1, 2), True, 0, _scripted(scores, inverted)[0])
    assert best == 4


def test_good_lr_range_is_the_contiguous_interval_around_the_best():
    points = [dict(learning_rate=lr, mean=m, best=lr == 4) for lr, m in
              ((1, 0.80), (2, 0.89), (4, 0.90), (8, 0.885), (16, 0.87), (32, 0.89))]
    assert batch_scaling.good_lr_range(points) == dict(tolerance=0.02, low=2, high=8, ratio=4.0, low_open=False,
                                                      high_open=False)
    edge = [dict(learning_rate=lr, mean=m, best=lr == 1) for lr, m in ((1, 0.9), (2, 0.89), (4, 0.5))]
    assert batch_scaling.good_lr_range(edge) == dict(tolerance=0.02, low=1, high=2, ratio=2.0, low_open=True,
                                                    high_open=False)


def test_widen_for_interval_extends_until_both_ends_are_found():
    """Claim 2b: seed-0 runs beyond each end the interval reaches; the
    seeded points score by their seed mean."""
    flat = {0.25: 0.5, 0.5: 0.86, 1: 0.895, 2: 0.9, 4: 0.89, 8: 0.895, 16: 0.885, 32: 0.7, 64: 0.1}
    scores = {c: [v, v - 0.5, v - 0.5] if c == 1 else [v] * 3 for c, v in flat.items()}  # c=1's seed mean is low
    train, calls = _scripted(scores)
    grid = batch_scaling.widen_for_interval([1, 2, 4], {1, 2, 4}, 2, (0, 1, 2), 8, train)
    assert grid == [1, 2, 4, 8, 16, 32]  # 1's seed mean (0.56) ends the interval below; above, 32 ends it
    assert {seed for c, seed in calls if c > 4} == {0}
    grid = batch_scaling.widen_for_interval([1, 2, 4], {2}, 2, (0, 1, 2), 8, _scripted(scores)[0])
    assert grid == [0.5, 1, 2, 4, 8, 16, 32]  # 1 unseeded: its seed 0 (0.895) is good, 0.5 ends it
    grid = batch_scaling.widen_for_interval([1, 2, 4], {2}, 2, (0, 1, 2), 1, _scripted(scores)[0])
    assert grid == [0.5, 1, 2, 4, 8]  # the cap, one step a side


def test_reproduce_reports_every_differing_number():
    committed = dict(final_test_top1=0.5, best_test_top1=0.6, diverged=False,
                     epochs=[dict(epoch=1, train_loss=1.0, train_top1=0.4, test_top1=0.6),
                             dict(epoch=2, train_loss=0.9, train_top1=0.5, test_top1=0.5)])
    same = json.loads(json.dumps(committed))
    assert reproduce.differences(committed, same) == []
    same["epochs"][1]["train_loss"] = 0.9000001
    same["final_test_top1"] = 0.51
    assert reproduce.differences(committed, same) == [("final_test_top1", 0.5, 0.51),
                                                      ("epoch 2 train_loss", 0.9, 0.9000001)]


def test_sgd_baseline_is_momentum_sgd_with_coupled_weight_decay():
    """The "sgd" method (LARS with no layer adaptation) against NumPy:
    v = m v + lr (g + beta w), w -= v, with beta = 0 for the bias."""
    spec = runs.RunSpec(method="sgd", batch_size=8, learning_rate=0.5, epochs=1, weight_decay=0.01, power=0)
    optimizer = runs.build_optimizer(spec)
    rng = np.random.default_rng(0)
    kernel = keras.Variable(rng.normal(size=(3, 2)).astype("float32"))
    bias = keras.Variable(rng.normal(size=(2,)).astype("float32"))
    w = [kernel.numpy().astype(np.float64), bias.numpy().astype(np.float64)]
    v = [np.zeros_like(x) for x in w]
    for _ in range(3):
        grads = [rng.normal(size=x.shape).astype("float32") for x in w]
        optimizer.apply(grads, [kernel, bias])
        for i, beta in enumerate((0.01, 0.0)):
            v[i] = 0.9 * v[i] + 0.5 * (grads[i] + beta * w[i])
            w[i] = w[i] - v[i]
    np.testing.assert_allclose(kernel.numpy(), w[0], rtol=1e-5)
    np.testing.assert_allclose(bias.numpy(), w[1], rtol=1e-5)


def test_gradient_variance_probe_matches_brute_force():
    """M_k from the probe against per-example gradients taken one example at
    a time with GradientTape, on a small sigmoid net."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(5, activation="sigmoid", name="a"),
        keras.layers.Dense(3, activation="softmax", name="b"),
    ])
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 6)).astype("float32")
    y = rng.integers(0, 3, size=12).astype("int32")
    probe = gradient_variance.GradientVarianceProbe(x, y, every_n_steps=1, steps_per_epoch=1, chunk=5)
    probe.set_model(model)
    probe._record()
    measured = probe.records[0]["gradient_variance_factor"]

    loss = keras.losses.SparseCategoricalCrossentropy()
    kernels = [model.get_layer("a").kernel, model.get_layer("b").kernel]
    per_example = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            value = loss(y[i:i + 1], model(x[i:i + 1]))
        per_example.append([g.numpy().astype(np.float64) for g in tape.gradient(value, kernels)])
    for k in range(2):
        grads = np.stack([p[k] for p in per_example])
        expected = np.mean(np.sum(grads**2, axis=(1, 2))) / np.sum(np.mean(grads, axis=0) ** 2)
        np.testing.assert_allclose(measured[k], expected, rtol=1e-4)
    assert all(m >= 1 for m in measured)  # Jensen


def test_record_steps_are_log_spaced_and_end_at_last():
    assert trust_ratios.record_steps(100) == [1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100]
    assert trust_ratios.record_steps(468)[-4:] == [150, 200, 300, 468]
    assert trust_ratios.record_steps(1) == [1]


def _trained_files(out):
    return {p: os.path.getmtime(p) for p in sorted(str(q) for q in out.rglob("runs/*.json"))}


@pytest.mark.slow
def test_quick_suite_end_to_end_and_cached(tmp_path):
    """`python -m experiments --quick --jobs 2`: every claim writes
    results.json and its PNGs; a second invocation trains nothing (the run
    files are untouched) and only redraws the plots."""
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "experiments", "--quick", "--out", str(out), "--jobs", "2"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    expected = {
        "batch_scaling": ["accuracy_vs_batch.png", "accuracy_vs_lr.png"],
        "bias_exclusion": [],
        "warmup": ["top1_per_epoch.png"],
        "longer_training": ["accuracy_vs_epochs.png"],
        "gradient_variance": ["gradient_variance.png"],
        "trust_ratios": ["ratio_iteration_1.png", "ratio_over_training.png"],
        "self_supervised": ["probe_vs_batch.png"],
    }
    for claim, pngs in expected.items():
        results = json.loads((out / claim / "results.json").read_text())
        assert results
        for png in pngs:
            assert (out / claim / png).read_bytes()[:4] == b"\x89PNG"
    scaling = json.loads((out / "batch_scaling" / "results.json").read_text())
    # longer_training reads its models' best points from batch_scaling
    assert set(scaling["models"]) == set(batch_scaling.QUICK_MODELS) | set(longer_training.MODELS)
    for model in scaling["models"].values():
        for method in runs.METHODS:
            for batch, entry in model["methods"][method].items():
                best = [p for p in entry["points"] if p["best"]]
                assert len(best) == 1 and best[0]["c"] == entry["best_c"]
                assert best[0]["seeds"] == [0, 1] and 0 <= entry["best_test_top1"] <= 1
                assert entry["best_validation_top1"] == best[0]["mean"]
                if int(batch) >= model["all_seeds_from_batch"]:
                    assert all(p["seeds"] == [0, 1] for p in entry["points"])
    for claim, names in (("warmup", batch_scaling.QUICK_MODELS), ("longer_training", longer_training.MODELS)):
        assert list(json.loads((out / claim / "results.json").read_text())["models"]) == list(names)
    variance = json.loads((out / "gradient_variance" / "results.json").read_text())
    for entry in variance["models"].values():
        assert len(entry["records"]) >= 2 and all(m >= 1 for r in entry["records"] for m in r["gradient_variance_factor"])
    ratios = json.loads((out / "trust_ratios" / "results.json").read_text())
    low, high = ratios["models"]["resnet8"]["kernel_ratio_range_iteration_1"]
    assert 0 < low < high
    ssl = json.loads((out / "self_supervised" / "results.json").read_text())
    for optimizer in self_supervised.OPTIMIZERS:
        for batch in ssl["batches"]:
            cell = ssl["simclr"][optimizer][str(batch)]
            assert cell["best_learning_rate"] == cell["best_c"] * batch / 256 and 0 < cell["mean"] <= 1
    assert set(ssl["baselines"]) == {"raw_pixels", "random_encoder", "supervised"}
    assert (out / "self_supervised" / "table.md").read_text() == self_supervised.table(ssl)
    pretrained = sorted((out / "self_supervised" / "runs").glob("simclr_lars_*.json"))[0]
    again = subprocess.run([sys.executable, "-m", "experiments.reproduce", str(pretrained)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and "reproduced exactly" in again.stdout, again.stdout + again.stderr[-3000:]
    tables = subprocess.run([sys.executable, "-m", "experiments.tables", "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env=env)
    assert tables.returncode == 0, tables.stderr[-3000:]
    for batch, d in scaling["models"]["mlp3"]["paired"]["lars-sgd"].items():
        assert d["seeds"] == [0, 1] and d["n"] == 2
    ablation = json.loads((out / "bias_exclusion" / "results.json").read_text())
    assert list(ablation["models"]) == ["mlp3_nobn"]
    assert (out / "bias_exclusion" / "table.md").read_text().count("| LARS, 1024 |") == 1
    for heading in ("## batch_scaling", "## warmup", "## longer_training", "| LARS | ", "| CLARS, no warmup",
                    "| LARS: train top-1 (last epoch, training mode) | 0.", "| LARS - SGD (paired) | ",
                    "| LARS: test top-1, precise BatchNorm statistics | 0."):
        assert heading in tables.stdout
    trained = _trained_files(out)
    for png in (out / "warmup").glob("*.png"):
        png.unlink()
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert _trained_files(out) == trained
    assert "top-1" not in second.stdout  # no run trained
    assert (out / "warmup" / "top1_per_epoch.png").exists()


RESULTS = os.path.join(ROOT, "docs", "results")
# Committed base-grid runs of the pinned runtime under issue 44's protocol
# (validation split, BatchNorm momentum 0.9, precise-BN top-1): LARS on the
# MLP with BatchNorm at B = 8192 (60 steps), one per CPU model the CI
# machines have had; runs rerun bit for bit on the CPU model that made them.
REPRODUCIBLE = [os.path.join(RESULTS, "batch_scaling", "runs", name) for name in (
    "mlp3_lars_b8192_lr12.8_e10_s0_10679127.json",  # Intel(R) Xeon(R) Processor
    "mlp3_lars_b8192_lr12.8_e10_s1_c74ad7a6.json",  # AMD EPYC
)]


def _why_not_here(path):
    """'' when the run in `path` should rerun bit-identically here, else why not."""
    recorded = json.loads(open(path).read())["environment"]
    # `experiments.reproduce` runs pinned; this process is not.
    return runtime.reproducible_on_this_machine(recorded, runtime.environment(runtime.pinned_caps()))


REPRODUCED = [path for path in REPRODUCIBLE if not _why_not_here(path)]


@pytest.mark.slow
@pytest.mark.skipif(not REPRODUCED, reason="; ".join(map(_why_not_here, REPRODUCIBLE)))
def test_committed_runs_reproduce_exactly():
    """`python -m experiments.reproduce` retrains a committed run of this
    machine's CPU model from its spec in a fresh process: every per-epoch
    number equals the file's."""
    assert len({json.loads(open(path).read())["environment"]["cpu"] for path in REPRODUCIBLE}) == len(REPRODUCIBLE)
    for path in REPRODUCED:
        spec = runs.RunSpec(**json.loads(open(path).read())["spec"])
        assert os.path.basename(path) == spec.run_id() + ".json"
    result = subprocess.run([sys.executable, "-m", "experiments.reproduce", *REPRODUCED], cwd=ROOT,
                            capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.count("reproduced exactly") == len(REPRODUCED), result.stdout


def test_quick_mode_runs_the_quick_models_unless_models_are_named(monkeypatch):
    monkeypatch.setattr(cli, "configure_runtime", lambda: None)

    def chosen(*argv):
        return cli.parse_args("", list(argv), models=batch_scaling.MODELS,
                                 quick_models=batch_scaling.QUICK_MODELS).models

    assert chosen() == batch_scaling.MODELS
    assert chosen("--quick") == batch_scaling.QUICK_MODELS == ("mlp3", "cnn3_nobn")
    assert chosen("--quick", "--models", "cnn3") == ("cnn3",)
    with pytest.raises(SystemExit):
        chosen("--models", "vgg")


def test_committed_self_supervised_results_are_complete_and_in_the_docs():
    """The committed SimCLR table: every optimizer at every batch from its
    run files, the three baselines, and the docs page shows that table."""
    ssl_dir = os.path.join(RESULTS, "self_supervised")
    ssl = json.loads(open(os.path.join(ssl_dir, "results.json")).read())
    assert ssl["batches"] == [256, 2048] and set(ssl["baselines"]) == {"raw_pixels", "random_encoder", "supervised"}
    for optimizer in self_supervised.OPTIMIZERS:
        for batch in ssl["batches"]:
            cell = ssl["simclr"][optimizer][str(batch)]
            tops = []
            for run_id in cell["run_ids"]:
                run = json.loads(open(os.path.join(ssl_dir, "runs", run_id + ".json")).read())
                tops.append(run["probe_test_top1"])
            assert len(tops) == 3 and cell["mean"] == pytest.approx(np.mean(tops), abs=1e-9)
    table = open(os.path.join(ssl_dir, "table.md")).read()
    assert table == self_supervised.table(ssl)
    page = open(os.path.join(ROOT, "docs", "self-supervised.md")).read()
    assert all(row in page for row in table.strip().splitlines())


@pytest.mark.parametrize("peak, expected_grid", [
    (0.3, [0.075, 0.3, 1.2]),  # interior: no extension
    (4.8, [0.075, 0.3, 1.2, 4.8, 19.2]),  # past the top edge: two factor-4 steps up
    (1e-3, [0.3 / 64, 0.3 / 16, 0.075, 0.3, 1.2]),  # below: two steps down, the cap reached
])
def test_self_supervised_tuning_rule(monkeypatch, peak, expected_grid):
    """The rule of `experiments.self_supervised`: factor-4 grid around the
    recipe's c, extended while the best (seed 0) is on an edge, at most
    MAX_EXTENSIONS times; seeds 1 and 2 only at the best."""
    calls = []

    def fake_run(spec, cache):
        calls.append((spec.learning_rate * 256 / spec.batch_size, spec.seed))
        c = spec.learning_rate * 256 / spec.batch_size
        return dict(probe_test_top1=0.9 - 0.01 * abs(np.log(c / peak)), run_id=spec.run_id(), seconds=1.0,
                    spec=dict(seed=spec.seed), diverged=False)

    monkeypatch.setattr(self_supervised, "run", fake_run)
    s = self_supervised.settings(quick=False)
    grid, best, at_best = self_supervised._tune("simclr", "sgd", 2048, s, "unused")
    np.testing.assert_allclose(grid, expected_grid)
    assert best == pytest.approx(min(expected_grid, key=lambda c: abs(np.log(c / peak))))
    assert [r["spec"]["seed"] for r in at_best] == [0, 1, 2]
    assert {seed for c, seed in calls if not np.isclose(c, best)} == {0}


def test_every_committed_run_is_a_run_of_the_pinned_runtime():
    """Every committed run file records the host's instruction-set features
    and the caps and thread count of `experiments.runtime` (issue 33), and
    every run that batch_scaling's results.json names is committed."""
    paths = sorted(glob.glob(os.path.join(RESULTS, "*", "runs", "*.json")))
    assert len(paths) > 1000
    pinned = dict(xla_cpu_max_isa=runtime.ISA, onednn_max_cpu_isa=runtime.ISA, threads=runtime.THREADS)
    unpinned = []
    for path in paths:
        recorded = json.loads(open(path).read())["environment"]
        has_features = {"avx2", "fma"} <= set(recorded.get("cpu_flags", ()))
        if not has_features or any(recorded.get(k) != v for k, v in pinned.items()):
            unpinned.append(os.path.relpath(path, RESULTS))
    assert not unpinned, f"{len(unpinned)} run files unpinned or without ISA features, e.g. {unpinned[:3]}"
    named = set()
    for name in ("results_before_issue44.json", "results.json"):
        path = os.path.join(RESULTS, "batch_scaling", name)
        scaling = json.loads(open(path).read()) if os.path.exists(path) else {"models": {}}
        named |= {run_id for model in scaling["models"].values() for method in model["methods"].values()
                  for entry in method.values() for point in entry["points"] for run_id in point["run_ids"]}
    committed = {os.path.basename(p)[:-5] for p in paths if "/batch_scaling/" in p}
    assert named <= committed and len(named) > 900
