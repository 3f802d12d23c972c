"""The MLPerf LARS schedule against its formula, and the linear scaling rule."""

import keras
import numpy as np
import pytest

from keras_lars.schedules import WarmupPolynomialDecay, linear_scaled_learning_rate


def _lr(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_values_against_the_formula():
    base, end, warmup, total = 10.0, 1e-4, 100, 1000
    s = WarmupPolynomialDecay(base, warmup_steps=warmup, train_steps=total, end_learning_rate=end)
    decay_steps = total - warmup + 1
    assert s.decay_steps == 901
    assert _lr(s, 0) == 0.0
    assert _lr(s, 50) == pytest.approx(5.0, rel=1e-6)
    assert _lr(s, warmup) == pytest.approx(base, rel=1e-6)
    mid = warmup + 450
    assert _lr(s, mid) == pytest.approx((base - end) * (1 - 450 / decay_steps) ** 2 + end, rel=1e-5)
    assert _lr(s, total) == pytest.approx((base - end) * (1 / decay_steps) ** 2 + end, rel=1e-4)
    assert _lr(s, total + 1) == pytest.approx(end, rel=1e-5)
    assert _lr(s, 10 * total) == pytest.approx(end, rel=1e-5)


def test_no_warmup_starts_at_base():
    s = WarmupPolynomialDecay(2.0, warmup_steps=0, train_steps=10, end_learning_rate=0.0, power=1.0)
    assert _lr(s, 0) == pytest.approx(2.0)
    assert _lr(s, 5) == pytest.approx(2.0 * (1 - 5 / 11), rel=1e-6)


def test_serializable():
    s = WarmupPolynomialDecay(3.0, warmup_steps=5, train_steps=50, end_learning_rate=1e-3, power=1.5, name="x")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(s))
    assert isinstance(restored, WarmupPolynomialDecay)
    assert restored.get_config() == s.get_config()
    steps = np.arange(0, 60, 7)
    assert [_lr(restored, t) for t in steps] == [_lr(s, t) for t in steps]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(base_learning_rate=0.0), "base_learning_rate"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(warmup_steps=11), r"warmup_steps.*\[0, train_steps=10\]"),
        (dict(warmup_steps=2.5), "warmup_steps"),
        (dict(train_steps=0, warmup_steps=0), "train_steps"),
        (dict(end_learning_rate=-1.0), "end_learning_rate"),
        (dict(power=0.0), "power"),
    ],
)
def test_bad_arguments(kwargs, message):
    args = dict(base_learning_rate=1.0, warmup_steps=2, train_steps=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        WarmupPolynomialDecay(**args)


def test_linear_scaling_rule():
    assert linear_scaled_learning_rate(0.1, 8192) == pytest.approx(3.2)
    assert linear_scaled_learning_rate(0.5, 2048, base_batch_size=512) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="global_batch_size"):
        linear_scaled_learning_rate(0.1, 0)
