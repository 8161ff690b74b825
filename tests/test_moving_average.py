"""bnlib.ema: the moving averages behind BN's running statistics, as the book derives them."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bnlib
from bnlib import (
    BatchNorm,
    cumulative_average,
    debiased_ema,
    decay_to_momentum,
    effective_window,
    ema,
    ema_weights,
    half_life,
    momentum_to_decay,
)

ROOT = Path(__file__).resolve().parents[1]
alphas = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
steps = st.integers(min_value=0, max_value=400)
# Running statistics are float32 buffers in torch and bnlib.BatchNorm: compare with
# float32-sized tolerances on values of order 1-10.
STATE_TOL = dict(rtol=1e-5, atol=1e-5)


@settings(max_examples=50, deadline=None)
@given(alpha=alphas, t=steps)
def test_unrolled_weights_sum_to_one_minus_decay_power(alpha, t):
    weights, init_weight = ema_weights(alpha, t)
    assert weights.shape == (t,)
    assert math.isclose(weights.sum(), 1 - (1 - alpha) ** t, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(weights.sum() + init_weight, 1.0, rel_tol=1e-9)


@settings(max_examples=30, deadline=None)
@given(
    alpha=alphas,
    t=st.integers(min_value=1, max_value=60),
    shape=st.lists(st.integers(1, 3), max_size=2).map(tuple),
    seed=st.integers(0, 2**16),
)
def test_unrolled_weights_reproduce_the_recursion(alpha, t, shape, seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(t,) + shape)
    init = rng.normal(size=shape)
    weights, init_weight = ema_weights(alpha, t)
    unrolled = np.tensordot(weights, values[::-1], axes=1) + init_weight * init
    trajectory = ema(values, alpha, init)
    assert trajectory.shape == values.shape
    np.testing.assert_allclose(trajectory[-1], unrolled, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.1, 0.01, 0.001])
def test_debiasing_recovers_a_constant_signal_exactly(alpha):
    constant = np.full((500, 3), [2.5, -1.0, 7.0])
    np.testing.assert_allclose(ema(constant, alpha)[0], alpha * constant[0])   # raw: biased to 0
    np.testing.assert_allclose(debiased_ema(constant, alpha), constant, rtol=1e-12)


def test_cumulative_average_equals_the_plain_mean_of_batch_statistics():
    rng = np.random.default_rng(0)
    batch_means = rng.normal(3.0, 2.0, size=(300, 4))
    running = cumulative_average(batch_means)
    for t in (1, 2, 17, 300):
        np.testing.assert_allclose(running[t - 1], batch_means[:t].mean(axis=0), rtol=1e-12)


def test_effective_window_is_total_weight_over_newest_weight_and_mean_age():
    for alpha in (0.5, 0.1, 0.01):
        weights, _ = ema_weights(alpha, 20_000)
        assert math.isclose(weights.sum() / weights[0], effective_window(alpha), rel_tol=1e-9)
        mean_age = np.sum(np.arange(1, weights.size + 1) * weights)
        assert math.isclose(mean_age, effective_window(alpha), rel_tol=1e-9)


def test_half_life_halves_the_weight_and_approximates_ln2_over_alpha():
    for alpha in (0.5, 0.1, 0.01, 0.001):
        h = half_life(alpha, exact=True)
        assert math.isclose((1 - alpha) ** h, 0.5, rel_tol=1e-12)
        assert half_life(alpha) == pytest.approx(math.log(2) / alpha)
        assert h <= half_life(alpha) <= h * (1 + alpha)   # ln 2/alpha overestimates, by < alpha
    assert half_life(1.0, exact=True) == 0.0


def test_decay_and_momentum_conventions_are_inverse_and_match_from_decay():
    for rho in (0.0, 0.9, 0.99, 1.0):
        assert math.isclose(momentum_to_decay(decay_to_momentum(rho)), rho, abs_tol=1e-15)
        assert math.isclose(BatchNorm.from_decay(2, rho).momentum, decay_to_momentum(rho))
    rng = np.random.default_rng(1)
    values, rho, running = rng.normal(size=(50, 2)), 0.99, np.zeros(2)
    for v in values:                                           # the Keras/Flax update
        running = rho * running + (1 - rho) * v
    np.testing.assert_allclose(ema(values, decay_to_momentum(rho))[-1], running, rtol=1e-12)


def _drifting_batches(rng, steps, shape):
    """Float32 batches whose mean and scale drift, as activations do during training."""
    for t in range(steps):
        yield rng.normal(np.sin(t / 40) + t / 100, 1.0 + t / 300, size=shape).astype(np.float32)


def _batch_stats(batches):
    """Per-channel batch means and unbiased variances, float64."""
    x = np.stack(batches).astype(np.float64)                   # (T, N, C)
    return x.mean(axis=1), x.var(axis=1, ddof=1)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_ema_reproduces_bnlib_batchnorm_running_statistics(momentum):
    rng = np.random.default_rng(2)
    layer = BatchNorm(4, momentum=momentum)
    batches = list(_drifting_batches(rng, 400, (32, 4)))
    for xb in batches:
        layer(xb)
    means, unbiased_vars = _batch_stats(batches)
    if momentum is None:
        mean_est, var_est = cumulative_average(means), cumulative_average(unbiased_vars)
    else:
        mean_est, var_est = ema(means, momentum, 0.0), ema(unbiased_vars, momentum, 1.0)
    np.testing.assert_allclose(layer.running_mean, mean_est[-1], **STATE_TOL)
    np.testing.assert_allclose(layer.running_var, var_est[-1], **STATE_TOL)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_ema_reproduces_torch_batchnorm1d_running_statistics(momentum):
    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    ref = torch.nn.BatchNorm1d(4, momentum=momentum)
    batches = list(_drifting_batches(rng, 400, (16, 4)))
    means, unbiased_vars = _batch_stats(batches)
    for t, xb in enumerate(batches, start=1):
        ref(torch.from_numpy(xb))
        if t in (1, 10, 100, 400):
            if momentum is None:
                mean_est, var_est = cumulative_average(means[:t]), cumulative_average(unbiased_vars[:t])
            else:
                mean_est, var_est = ema(means[:t], momentum, 0.0), ema(unbiased_vars[:t], momentum, 1.0)
            np.testing.assert_allclose(ref.running_mean.numpy(), mean_est[-1], **STATE_TOL)
            np.testing.assert_allclose(ref.running_var.numpy(), var_est[-1], **STATE_TOL)
    assert int(ref.num_batches_tracked) == len(batches)


def test_the_ema_api_is_exported_eagerly_and_needs_no_torch():
    names = ["ema", "ema_weights", "debiased_ema", "cumulative_average", "effective_window",
             "half_life", "decay_to_momentum", "momentum_to_decay"]
    assert set(names) <= set(bnlib.__all__) and set(names) <= set(vars(bnlib))
    code = f"import sys, bnlib; [getattr(bnlib, n) for n in {names!r}]; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: ema([1.0, 2.0], 1.5), ValueError, r"alpha must be in \[0, 1\]"),
        (lambda: ema([1.0, 2.0], -0.1), ValueError, r"alpha must be in \[0, 1\]"),
        (lambda: ema([1.0, 2.0], True), TypeError, "alpha must be a float"),
        (lambda: ema([1.0, 2.0], "0.1"), TypeError, "alpha must be a float"),
        (lambda: ema([1.0, 2.0], float("nan")), ValueError, "alpha must be in"),
        (lambda: ema([], 0.1), ValueError, r"values must have shape \(T, \*shape\)"),
        (lambda: ema(3.0, 0.1), ValueError, r"values must have shape \(T, \*shape\)"),
        (lambda: ema([1.0, np.nan], 0.1), ValueError, "values must be finite"),
        (lambda: ema(["a", "b"], 0.1), TypeError, "values must be numeric"),
        (lambda: ema(np.ones((5, 3)), 0.1, init=np.ones(4)), ValueError, "init must be a scalar or broadcastable"),
        (lambda: ema(np.ones((5, 3)), 0.1, init=np.nan), ValueError, "init must be finite"),
        (lambda: debiased_ema([1.0], 0.0), ValueError, r"alpha must be in \(0, 1\]"),
        (lambda: ema_weights(0.1, -1), ValueError, "t must be a non-negative int"),
        (lambda: ema_weights(0.1, 2.5), TypeError, "t must be a non-negative int"),
        (lambda: effective_window(0.0), ValueError, r"alpha must be in \(0, 1\]"),
        (lambda: half_life(0.0), ValueError, r"alpha must be in \(0, 1\]"),
        (lambda: decay_to_momentum(1.01), ValueError, r"decay must be in \[0, 1\]"),
        (lambda: momentum_to_decay(None), TypeError, "momentum must be a float"),
        (lambda: bnlib.accumulation_momentum(0.1, 0), ValueError, "k must be a positive int"),
        (lambda: bnlib.accumulation_momentum(0.1, 2.0), ValueError, "k must be a positive int"),
        (lambda: bnlib.accumulation_momentum(0.0, 2), ValueError, r"alpha must be in \(0, 1\]"),
    ],
)
def test_invalid_arguments_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------- errors of a running mean
from bnlib.moving_average import ema_error, ema_lag, ema_noise_sd, startup_bias  # noqa: E402


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("steps", [0, 1, 7, 300])
def test_lag_and_startup_bias_equal_the_recursion(alpha, steps):
    """A population mean 0.3 above the starting value 0, drifting by 0.02 per step: the recursion's
    error at step t is the start-up bias plus the lag, exactly."""
    target = 0.3 + 0.02 * np.arange(1, steps + 1)
    running = ema(target, alpha, init=0.0)[-1] if steps else 0.0
    error = (0.3 + 0.02 * steps) - running
    assert error == pytest.approx(startup_bias(alpha, steps, 0.3) + ema_lag(alpha, 0.02, steps), abs=1e-12)
    assert ema_error(alpha, 10**14, 0.02, steps, 0.3) == pytest.approx(abs(error), abs=1e-6)   # no noise


def test_steady_state_lag_and_noise():
    assert ema_lag(0.1, 0.02) == pytest.approx(0.02 * 0.9 / 0.1)
    assert ema_lag(0.1, -0.02, 10**6) == pytest.approx(-0.18)
    assert ema_noise_sd(0.1, 32) ** 2 == pytest.approx(0.1 / (1.9 * 32))
    assert ema_noise_sd(1.0, 8, 5) ** 2 == pytest.approx(1 / 8)       # alpha = 1: the last batch
    assert ema_noise_sd(0.1, 32, 0) == 0.0
    assert ema_error(0.1, 32) == pytest.approx(ema_noise_sd(0.1, 32))


@pytest.mark.parametrize("alpha, steps", [(0.1, 5), (0.1, None), (0.5, 40)])
def test_noise_sd_matches_simulated_running_means(alpha, steps):
    """20 000 running means of batch means of 16 standard normal values, weights frozen."""
    rng = np.random.default_rng(0)
    t = steps or 400
    batch_means = rng.normal(0.0, np.sqrt(1 / 16), size=(t, 20_000))
    measured = ema(batch_means, alpha, init=0.0)[-1].std(ddof=1)
    assert measured == pytest.approx(ema_noise_sd(alpha, 16, steps), rel=0.03)


@pytest.mark.parametrize("call, name", [
    (lambda: ema_lag(0.0, 0.1), "alpha"),
    (lambda: ema_lag(0.1, float("nan")), "drift"),
    (lambda: ema_lag(0.1, 0.1, steps=-1), "steps"),
    (lambda: ema_lag(0.1, 0.1, steps=2.5), "steps"),
    (lambda: ema_noise_sd(0.1, 0), "batch_size"),
    (lambda: ema_noise_sd(0.1, 3.0), "batch_size"),
    (lambda: startup_bias(0.1, None, 1.0), "steps"),
    (lambda: startup_bias(0.1, 3, "1"), "start_distance"),
    (lambda: ema_error(0.1, 32, start_distance=float("inf")), "start_distance"),
    (lambda: ema_error(1.5, 32), "alpha"),
])
def test_errors_of_a_running_mean_reject_bad_arguments(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call()


@pytest.mark.parametrize("alpha", [0.03, 0.1, 0.9])
def test_lag_after_the_update_equals_a_batch_norm_layer(alpha):
    """A BatchNorm1d whose input mean drifts by 0.01 per step, the running mean compared with the
    input mean after each step (the network after the update): drift/alpha in the steady state."""
    torch = pytest.importorskip("torch")
    bn = torch.nn.BatchNorm1d(1, momentum=alpha, dtype=torch.float64)
    base = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
    for t in range(1, 41):
        bn(base + 0.01 * (t - 1))                    # the batch of step t, before the update
        error = 0.01 * t - bn.running_mean.item()    # against the population mean after it
    assert error == pytest.approx(ema_lag(alpha, 0.01, 40, after_update=True), abs=1e-12)


@pytest.mark.parametrize("alpha", [1e-4, 0.01, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("k", [1, 2, 4, 16])
def test_k_updates_with_the_accumulation_momentum_forget_as_one_update(alpha, k):
    """k updates with alpha_k on k equal values give one update with alpha, for any old average."""
    alpha_k = bnlib.accumulation_momentum(alpha, k)
    assert math.isclose((1 - alpha_k) ** k, 1 - alpha, rel_tol=1e-12, abs_tol=1e-15)
    assert 0 < alpha_k <= alpha and (k > 1 or alpha_k == alpha)
    np.testing.assert_allclose(ema(np.full(k, 3.0), alpha_k, init=1.0)[-1], ema([3.0], alpha, init=1.0)[-1],
                               rtol=1e-12)


# --------------------------------------------------------------------------- the explorer's closed forms
from bnlib.moving_average import cumulative_average, debiased_ema, running_mean_band, trusts_ema_tracking  # noqa: E402


@pytest.mark.parametrize("alpha", [0.001, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("steps", [1, 2, 37, 400])
@pytest.mark.parametrize("kind", ["ema", "debiased", "cumulative"])
def test_running_mean_band_equals_the_recursion_on_the_batch_means(alpha, steps, kind):
    """Error: the average run on the expected batch means mu_0, ..., mu_{t-1}; noise: sqrt(sum w^2 / m)."""
    drift, start, m = 0.003, 0.7, 16
    mu = start + drift * np.arange(steps + 1)                 # mu_0 .. mu_t; batch k has mean mu_{k-1}
    batches = mu[:-1]
    w, _ = ema_weights(alpha, steps)                          # newest first
    if kind == "ema":
        expected, weights = ema(batches, alpha, init=0.0)[-1], w
    elif kind == "debiased":
        expected, weights = debiased_ema(batches, alpha)[-1], w / w.sum()
    else:
        expected, weights = cumulative_average(batches)[-1], np.full(steps, 1.0 / steps)
    band = running_mean_band(None if kind == "cumulative" else alpha, m, drift, steps, start, kind)
    assert math.isclose(band.error, mu[-1] - expected, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(band.noise_sd, math.sqrt((weights ** 2).sum() / m), rel_tol=1e-9)


def test_running_mean_band_matches_a_simulation():
    """Monte Carlo over 4000 runs of noisy batches: mean and spread of the EMA at step 60."""
    rng = np.random.default_rng(0)
    alpha, m, drift, start, t = 0.05, 8, 0.01, 1.0, 60
    batches = start + drift * np.arange(t) + rng.standard_normal((4000, t, m)).mean(axis=2)
    running = ema(batches.T, alpha, init=0.0)[-1]             # (4000,)
    band = running_mean_band(alpha, m, drift, t, start)
    target = start + drift * t
    assert abs((target - running.mean()) - band.error) < 3 * band.noise_sd / math.sqrt(4000)
    assert abs(running.std(ddof=1) / band.noise_sd - 1) < 0.05


def test_the_rule_is_the_closed_form_of_chapter_7():
    s_star = 0.035
    for alpha, m, drift in [(0.1, 32, 0.0), (0.1, 256, 0.001), (0.5, 32, 0.01), (0.01, 1024, 0.0)]:
        s_rms = math.sqrt((drift / alpha) ** 2 + alpha / ((2 - alpha) * m))
        assert trusts_ema_tracking(alpha, m, drift, s_star) == (math.sqrt(2 / math.pi) * s_rms <= s_star)
    assert trusts_ema_tracking(0.1, 256, 0.001, s_star) and not trusts_ema_tracking(0.1, 32, 0.005, s_star)


@pytest.mark.parametrize("call, error, match", [
    (lambda: running_mean_band(0.1, 32, 0.0, 10, kind="window"), ValueError, "kind must be one of"),
    (lambda: running_mean_band(0.1, 32, 0.0, 0, kind="debiased"), ValueError, "steps must be >= 1"),
    (lambda: running_mean_band(0.1, 0, 0.0, 10), ValueError, "batch_size must be a positive int"),
    (lambda: running_mean_band(0.0, 32, 0.0, 10), ValueError, r"alpha must be in \(0, 1\]"),
    (lambda: running_mean_band(0.1, 32, float("nan"), 10), ValueError, "drift must be a finite number"),
    (lambda: running_mean_band(0.1, 32, 0.0, None), ValueError, "steps must be a non-negative int"),
    (lambda: trusts_ema_tracking(0.1, 32, 0.0, 0.0), ValueError, "s_star must be a finite positive number"),
])
def test_explorer_functions_reject_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
