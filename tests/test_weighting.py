"""The loss-weighting strategies produce the schedules their docstrings document."""
import math

import pytest

from icmlib.presets import get_preset
from icmlib.training import (STRATEGIES, Dynamic, Fixed, Magnitude, fixed_weights,
                             make_strategy)

LAM, TAU, MU = 0.01, 100.0, 0.1


def test_fixed_is_constant_and_validated():
    s = Fixed(rate=1.0, mse=0.5, task=2.0)
    assert s.weights(0, {}) == s.weights(10_000, {"rate": 9.0}) == {"rate": 1.0, "mse": 0.5, "task": 2.0}
    with pytest.raises(ValueError, match="w_mse > 0 or w_task > 0"):
        Fixed(rate=1.0, mse=0.0, task=0.0)
    with pytest.raises(ValueError, match="finite number"):
        Fixed(rate=1.0, mse=float("nan"))


def test_fixed_weights_mse_and_icm():
    assert fixed_weights(LAM, False, TAU, MU) == {"rate": 1.0, "mse": LAM, "task": 0.0}
    icm = fixed_weights(LAM, True, TAU, MU)
    assert icm == pytest.approx({"rate": 1.0, "mse": MU * LAM, "task": TAU * LAM})


def test_dynamic_schedule_phases():
    total = 1000
    s = Dynamic(LAM, total, TAU, MU, warmup=0.1, ramp_end=0.5)
    # 1. reconstruct: the MSE baseline's weights
    for step in (0, 50, 99):
        assert s.weights(step, {}) == pytest.approx({"rate": 1.0, "mse": LAM, "task": 0.0})
    # 2. hand-over: cosine ramp, geometric MSE decay, half way at the midpoint (step 300)
    mid = s.weights(300, {})
    assert mid["task"] == pytest.approx(0.5 * TAU * LAM)
    assert mid["mse"] == pytest.approx(LAM * MU ** 0.5)
    ramp = [s.weights(k, {}) for k in range(100, 500, 10)]
    tasks = [w["task"] for w in ramp]
    mses = [w["mse"] for w in ramp]
    assert all(a <= b for a, b in zip(tasks, tasks[1:])), "task weight must rise monotonically"
    assert all(a >= b for a, b in zip(mses, mses[1:])), "MSE weight must fall monotonically"
    # 3. task: equal to the fixed ICM weights at this rate point
    for step in (500, 700, 999):
        assert s.weights(step, {}) == pytest.approx(fixed_weights(LAM, True, TAU, MU))
    assert all(s.weights(k, {})["rate"] == 1.0 for k in range(0, total, 37))


def test_dynamic_ramp_is_smooth():
    s = Dynamic(LAM, 100, TAU, MU, warmup=0.2, ramp_end=0.6)
    values = [s.ramp(k) for k in range(100)]
    assert values[19] == 0.0 and values[20] == 0.0 and values[60] == 1.0
    jumps = [b - a for a, b in zip(values, values[1:])]
    assert max(jumps) < 0.05  # no step in the loss


def test_dynamic_rejects_bad_constants():
    with pytest.raises(ValueError, match="warmup"):
        Dynamic(LAM, 100, TAU, MU, warmup=0.6, ramp_end=0.5)
    with pytest.raises(ValueError, match="mse_weight"):
        Dynamic(LAM, 100, TAU, 0.0)
    with pytest.raises(ValueError, match="total_steps"):
        Dynamic(LAM, 0, TAU, MU)


def test_magnitude_calibrates_then_balances():
    s = Magnitude(LAM, True, TAU, MU, calib_steps=3, momentum=0.5)
    start = fixed_weights(LAM, True, TAU, MU)
    terms = {"rate": 0.5, "mse": 40.0, "task": 0.8}
    for step in range(2):
        assert s.weights(step, terms) == pytest.approx(start)
    w = s.weights(2, terms)  # calibration ends: budget = what the fixed weights spent
    budget = start["mse"] * 40.0 + start["task"] * 0.8
    assert s.budget == pytest.approx(budget)
    # each distortion term now contributes an equal share of the budget
    assert w["mse"] * 40.0 == pytest.approx(budget / 2)
    assert w["task"] * 0.8 == pytest.approx(budget / 2)
    assert w["rate"] == 1.0
    # a term that halves (steadily) gets twice the weight: relative progress counts
    for step in range(3, 40):
        w = s.weights(step, {"rate": 0.5, "mse": 20.0, "task": 0.8})
    assert w["mse"] * 20.0 == pytest.approx(budget / 2, rel=1e-6)


def test_magnitude_state_roundtrip_continues_identically():
    a = Magnitude(LAM, True, TAU, MU, calib_steps=2, momentum=0.9)
    seq = [{"rate": 0.3, "mse": 50.0 / (1 + k), "task": 1.0 + 0.1 * k} for k in range(10)]
    for k in range(5):
        a.weights(k, seq[k])
    b = Magnitude(LAM, True, TAU, MU, calib_steps=2, momentum=0.9)
    b.load_state_dict(a.state_dict())
    for k in range(5, 10):
        assert a.weights(k, seq[k]) == b.weights(k, seq[k])


def test_magnitude_ignores_non_finite_values():
    s = Magnitude(LAM, False, TAU, MU, calib_steps=1)
    s.weights(0, {"rate": 0.1, "mse": 10.0, "task": 0.0})
    before = dict(s.ema)
    s.weights(1, {"rate": 0.1, "mse": float("nan"), "task": 0.0})
    assert s.ema == before and all(math.isfinite(v) for v in s.ema.values())


def test_make_strategy_names_and_errors():
    preset = get_preset("ci")
    assert set(STRATEGIES) == {"mse", "fixed", "dynamic", "auto"}
    mse = make_strategy("mse", LAM, 10, False, preset)
    assert mse.weights(0, {}) == {"rate": 1.0, "mse": LAM, "task": 0.0}
    fixed = make_strategy("fixed", LAM, 10, True, preset)
    assert fixed.weights(0, {})["task"] == pytest.approx(preset.icm_task_weight * LAM)
    assert isinstance(make_strategy("dynamic", LAM, 10, True, preset), Dynamic)
    assert isinstance(make_strategy("auto", LAM, 10, True, preset), Magnitude)
    with pytest.raises(ValueError, match="unknown weighting strategy"):
        make_strategy("gradnorm", LAM, 10, True, preset)
    with pytest.raises(ValueError, match="takes no task"):
        make_strategy("mse", LAM, 10, True, preset)
    with pytest.raises(ValueError, match="needs a task"):
        make_strategy("dynamic", LAM, 10, False, preset)


def test_schedule_helper_does_not_advance_the_strategy():
    from icmlib.training import schedule

    s = Magnitude(LAM, True, TAU, MU, calib_steps=2)
    sch = schedule(s, 5, [{"rate": 1.0, "mse": 10.0 * (k + 1), "task": 1.0} for k in range(5)])
    assert len(sch["task"]) == 5 and s.seen == 0
    dyn = schedule(Dynamic(LAM, 10, TAU, MU), 10)
    assert dyn["task"][0] == 0 and dyn["task"][-1] == pytest.approx(TAU * LAM)
