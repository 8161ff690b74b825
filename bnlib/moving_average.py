"""Moving averages of batch statistics: the recursion behind BN's running statistics.

A Batch Normalization layer in training mode keeps, for every channel, a running
estimate of the mean (and of the variance) of its activation,

.. math::

    \\bar\\mu_t = (1 - \\alpha)\\,\\bar\\mu_{t-1} + \\alpha\\,\\mu_{\\mathcal{B}_t},

an exponential moving average (EMA) of the batch statistics. This module computes
that recursion and the quantities the book derives from it (chapter "How does a
moving average of batch statistics work?", equations ``eq-ema-*``): the unrolled
weights, the effective window and half-life, the debiased EMA of Adam (Kingma &
Ba, 2015) and Haiku, and the cumulative average, PyTorch's ``momentum=None``.

Two conventions share the name "momentum"; this module always says which:

* **alpha**, the weight of the **new** batch: PyTorch's ``momentum`` (default 0.1);
* **rho = 1 - alpha**, the weight of the **old** average, the *decay*: Keras'
  and Flax's ``momentum`` (default 0.99), cs231n's ``momentum`` (0.9), Haiku's
  ``decay_rate``.

Everything is NumPy and computed in float64.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "ema",
    "ema_weights",
    "debiased_ema",
    "cumulative_average",
    "effective_window",
    "half_life",
    "decay_to_momentum",
    "momentum_to_decay",
    "accumulation_momentum",
    "ema_lag",
    "ema_noise_sd",
    "startup_bias",
    "ema_error",
    "RunningMeanBand",
    "running_mean_band",
    "trusts_ema_tracking",
]


# --------------------------------------------------------------------------- checks
def _check_unit_interval(value: Any, name: str, *, allow_zero: bool = True) -> float:
    """Return ``value`` as a float in [0, 1] (or (0, 1]), or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a float in [0, 1]; got {value!r}")
    value = float(value)
    if allow_zero and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1]; got {value!r}")
    if not allow_zero and not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1]; got {value!r}")
    return value


def _check_values(values: Any) -> np.ndarray:
    """Return the batch statistics as a float64 array of shape (T, *shape)."""
    arr = np.asarray(values)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"values must be numeric; got dtype {arr.dtype}")
    if arr.ndim < 1 or arr.shape[0] < 1:
        raise ValueError(
            f"values must have shape (T, *shape) with T >= 1 steps on axis 0; got shape {arr.shape}"
        )
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("values must be finite; got NaN or infinity")
    return arr


def _check_init(init: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Return the initial value broadcast to ``shape`` (the shape of one step)."""
    arr = np.asarray(init, dtype=np.float64)
    try:
        arr = np.broadcast_to(arr, shape)
    except ValueError:
        raise ValueError(
            f"init must be a scalar or broadcastable to the shape of one step {shape}; "
            f"got shape {arr.shape}"
        ) from None
    if not np.all(np.isfinite(arr)):
        raise ValueError("init must be finite; got NaN or infinity")
    return arr


def _recursion(values: np.ndarray, alphas: np.ndarray, init: np.ndarray) -> np.ndarray:
    """m_t = (1 - alpha_t) m_{t-1} + alpha_t v_t for t = 1..T; returns m_1..m_T."""
    out = np.empty_like(values)
    m = init
    for t in range(values.shape[0]):
        m = (1.0 - alphas[t]) * m + alphas[t] * values[t]
        out[t] = m
    return out


# --------------------------------------------------------------------------- averages
def ema(values: Any, alpha: float, init: Any = 0.0) -> np.ndarray:
    """Trajectory of the exponential moving average (eq-ema-recursion).

    .. math::

        \\bar\\mu_t = (1 - \\alpha)\\,\\bar\\mu_{t-1} + \\alpha\\,v_t,
        \\qquad \\bar\\mu_0 = \\text{init},

    the update of ``torch.nn.BatchNorm*d``'s running statistics with
    ``momentum = alpha`` (feed the batch means for ``running_mean``, init 0, and
    the *unbiased* batch variances for ``running_var``, init 1).

    Parameters
    ----------
    values : array_like, shape (T, *shape)
        The statistic of batches 1..T, one step per row (e.g. per-channel batch
        means, shape (T, C)). Must be finite.
    alpha : float in [0, 1]
        Weight of the **new** value (PyTorch's ``momentum``). For a decay rho
        (Keras' ``momentum``) pass ``decay_to_momentum(rho)``.
    init : float or array_like broadcastable to shape, default 0.0
        The initial value bar-mu_0.

    Returns
    -------
    ndarray, shape (T, *shape), float64
        bar-mu_1, ..., bar-mu_T: row t-1 is the average after step t.

    Raises
    ------
    TypeError
        If alpha is not a real number or values are not numeric.
    ValueError
        If alpha is outside [0, 1], values are empty or not finite, or init does
        not broadcast to the shape of one step.

    Examples
    --------
    >>> ema([1.0, 1.0, 1.0], alpha=0.5)
    array([0.5  , 0.75 , 0.875])
    """
    alpha = _check_unit_interval(alpha, "alpha")
    values = _check_values(values)
    init = _check_init(init, values.shape[1:])
    return _recursion(values, np.full(values.shape[0], alpha), init)


def ema_weights(alpha: float, t: int) -> tuple[np.ndarray, float]:
    """Weights of the unrolled EMA after t steps (eq-ema-unrolled).

    .. math::

        \\bar\\mu_t = \\sum_{k=0}^{t-1} \\alpha(1-\\alpha)^k\\,v_{t-k}
        + (1-\\alpha)^t\\,\\bar\\mu_0 .

    Parameters
    ----------
    alpha : float in [0, 1]
        Weight of the new value (PyTorch's ``momentum``).
    t : int >= 0
        Number of steps taken.

    Returns
    -------
    weights : ndarray, shape (t,), float64
        ``weights[k] = alpha * (1 - alpha)**k``, the weight of the value
        k steps ago (k = 0 is the newest). They sum to ``1 - (1 - alpha)**t``
        (eq-ema-weight-sum).
    init_weight : float
        ``(1 - alpha)**t``, the weight still left on the initial value
        (eq-ema-init-weight); ``weights.sum() + init_weight == 1``.

    Raises
    ------
    TypeError, ValueError
        If alpha is not in [0, 1] or t is not a non-negative int.

    Examples
    --------
    >>> w, w0 = ema_weights(0.5, 3)
    >>> w, w0
    (array([0.5  , 0.25 , 0.125]), 0.125)
    """
    alpha = _check_unit_interval(alpha, "alpha")
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
        raise TypeError(f"t must be a non-negative int (a number of steps); got {t!r}")
    if t < 0:
        raise ValueError(f"t must be a non-negative int (a number of steps); got {t}")
    k = np.arange(int(t), dtype=np.float64)
    return alpha * (1.0 - alpha) ** k, float((1.0 - alpha) ** int(t))


def debiased_ema(values: Any, alpha: float) -> np.ndarray:
    """EMA started at 0 and divided by the weight it has gathered (eq-ema-debiased).

    .. math::

        \\hat\\mu_t = \\frac{\\bar\\mu_t}{1 - (1-\\alpha)^t},
        \\qquad \\bar\\mu_0 = 0,

    the bias correction of Adam (Kingma & Ba, 2015) and of Haiku's
    ``ExponentialMovingAverage(zero_debias=True)``. It is the weighted average
    of the values seen so far with weights alpha (1 - alpha)^k renormalised to
    sum to 1, so a constant sequence is returned unchanged from step 1.

    Parameters
    ----------
    values : array_like, shape (T, *shape)
        The statistic of batches 1..T. Must be finite.
    alpha : float in (0, 1]
        Weight of the new value (PyTorch's ``momentum``); 0 is refused, since
        the average then never gathers any weight.

    Returns
    -------
    ndarray, shape (T, *shape), float64
        hat-mu_1, ..., hat-mu_T.

    Raises
    ------
    TypeError, ValueError
        As :func:`ema`, and if alpha is 0.

    Examples
    --------
    >>> debiased_ema([2.0, 2.0, 2.0], alpha=0.1)
    array([2., 2., 2.])
    """
    alpha = _check_unit_interval(alpha, "alpha", allow_zero=False)
    values = _check_values(values)
    raw = _recursion(values, np.full(values.shape[0], alpha), np.zeros(values.shape[1:]))
    t = np.arange(1, values.shape[0] + 1, dtype=np.float64)
    gathered = 1.0 - (1.0 - alpha) ** t
    return raw / gathered.reshape((-1,) + (1,) * (values.ndim - 1))


def cumulative_average(values: Any) -> np.ndarray:
    """Running equal-weight average, the recursion with alpha_t = 1/t (eq-ema-cumulative).

    .. math::

        \\bar\\mu_t = \\Big(1 - \\frac1t\\Big)\\bar\\mu_{t-1} + \\frac1t\\,v_t
        = \\frac1t \\sum_{s=1}^{t} v_s .

    This is PyTorch's ``momentum=None``: since alpha_1 = 1 the initial value
    is forgotten at the first step. With the weights of the network fixed it
    is exactly the average of Algorithm 2 of Ioffe & Szegedy (2015).

    Parameters
    ----------
    values : array_like, shape (T, *shape)
        The statistic of batches 1..T. Must be finite.

    Returns
    -------
    ndarray, shape (T, *shape), float64
        Row t-1 is the mean of the first t values.

    Raises
    ------
    TypeError, ValueError
        If values are not numeric, empty, or not finite.

    Examples
    --------
    >>> cumulative_average([1.0, 2.0, 6.0])
    array([1. , 1.5, 3. ])
    """
    values = _check_values(values)
    alphas = 1.0 / np.arange(1, values.shape[0] + 1, dtype=np.float64)
    return _recursion(values, alphas, np.zeros(values.shape[1:]))


# --------------------------------------------------------------------------- time scales
def effective_window(alpha: float) -> float:
    """Effective window of the EMA in steps, 1/alpha (eq-ema-window).

    The total weight of the batches divided by the weight of the newest one,
    sum_k alpha (1 - alpha)^k / alpha = 1/alpha as t grows: an equal-weight
    average giving the newest batch the same weight would span 1/alpha batches.
    It is also the mean age of the weights, sum_k (k + 1) alpha (1 - alpha)^k.

    Parameters
    ----------
    alpha : float in (0, 1]
        Weight of the new value (PyTorch's ``momentum``).

    Returns
    -------
    float
        1/alpha, in steps (mini-batches).

    Examples
    --------
    >>> effective_window(0.1)
    10.0
    """
    return 1.0 / _check_unit_interval(alpha, "alpha", allow_zero=False)


def half_life(alpha: float, exact: bool = False) -> float:
    """Steps after which a batch's weight has halved (eq-ema-half-life).

    The weight of the batch k steps ago is alpha (1 - alpha)^k; it is half the
    newest batch's weight when (1 - alpha)^h = 1/2, i.e.
    h = ln 2 / (-ln(1 - alpha)), which is ln 2 / alpha to first order in alpha.
    The newest h batches also hold half of the total weight.

    Parameters
    ----------
    alpha : float in (0, 1]
        Weight of the new value (PyTorch's ``momentum``).
    exact : bool, default False
        Return ln 2 / (-ln(1 - alpha)) instead of the approximation ln 2 / alpha
        (the book's rule of thumb). For alpha = 1 the exact half-life is 0.

    Returns
    -------
    float
        The half-life, in steps.

    Examples
    --------
    >>> round(half_life(0.1), 2), round(half_life(0.1, exact=True), 2)
    (6.93, 6.58)
    """
    alpha = _check_unit_interval(alpha, "alpha", allow_zero=False)
    if not exact:
        return math.log(2.0) / alpha
    if alpha == 1.0:
        return 0.0
    return math.log(2.0) / -math.log1p(-alpha)


# --------------------------------------------------------------------------- conventions
def decay_to_momentum(decay: float) -> float:
    """Convert a decay rho (Keras/Flax/cs231n ``momentum``) to PyTorch's momentum alpha.

    ``running = rho * running + (1 - rho) * new`` is PyTorch's
    ``running = (1 - alpha) * running + alpha * new`` with alpha = 1 - rho.

    Parameters
    ----------
    decay : float in [0, 1]
        Weight of the **old** average.

    Returns
    -------
    float
        alpha = 1 - decay, the weight of the **new** batch.

    Examples
    --------
    >>> round(decay_to_momentum(0.99), 12)
    0.01
    """
    return 1.0 - _check_unit_interval(decay, "decay")


def momentum_to_decay(momentum: float) -> float:
    """Convert PyTorch's momentum alpha to a decay rho (Keras/Flax/cs231n ``momentum``).

    Parameters
    ----------
    momentum : float in [0, 1]
        alpha, the weight of the **new** batch (PyTorch's meaning).

    Returns
    -------
    float
        rho = 1 - momentum, the weight of the **old** average.

    Examples
    --------
    >>> momentum_to_decay(0.1)
    0.9
    """
    return 1.0 - _check_unit_interval(momentum, "momentum")


def accumulation_momentum(alpha: float, k: int) -> float:
    """The momentum for k updates per step that forgets as fast as one update with ``alpha``.

    Under gradient accumulation every one of the k micro-batches of an optimiser
    step updates the running statistics, so over one step the old average keeps
    the weight (1 - alpha)^k and the window, counted in optimiser steps, shrinks
    to 1/(k alpha). The momentum alpha_k = 1 - (1 - alpha)^(1/k) restores the
    decay of one update per step, (1 - alpha_k)^k = 1 - alpha
    (eq-pitfalls-accumulation-momentum).

    Parameters
    ----------
    alpha : float in (0, 1]
        The momentum (PyTorch convention) wanted per optimiser step.
    k : int >= 1
        Micro-batches, hence updates of the running statistics, per optimiser step.

    Returns
    -------
    float
        alpha_k in (0, alpha], equal to alpha when k = 1.

    Examples
    --------
    >>> round(accumulation_momentum(0.1, 4), 6)
    0.025996
    """
    alpha = _check_unit_interval(alpha, "alpha", allow_zero=False)
    k = _check_positive_int(k, "k", " (micro-batches per optimiser step)")
    return -math.expm1(math.log1p(-alpha) / k) if alpha < 1.0 else 1.0


# --------------------------------------------------------------------------- errors of a running mean
def _check_steps(steps: Any) -> float:
    """``steps`` as a float: a non-negative int, or None for the steady state (infinity)."""
    if steps is None:
        return math.inf
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a non-negative int or None (the steady state); got {steps!r}")
    return float(steps)


def _check_positive_int(value: Any, name: str, meaning: str = "") -> int:
    """``value`` as a positive int, or raise naming ``name`` (and saying what it counts)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int{meaning}; got {value!r}")
    return int(value)


def _check_real(value: Any, name: str, *, positive: bool = False) -> float:
    """``value`` as a finite float (positive if asked), or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a finite{' positive' if positive else ''} number; got {value!r}")
    if not math.isfinite(value) or (positive and not value > 0):
        raise ValueError(f"{name} must be a finite{' positive' if positive else ''} number; got {value!r}")
    return float(value)


def ema_lag(alpha: float, drift: float, steps: int | None = None, after_update: bool = False) -> float:
    """How far the running mean trails a population mean that moves by ``drift`` per step (eq-misleads-lag).

    With the batch means on the target mu_t = mu_0 + drift t and the running mean
    started on it, the error e_t = mu_t - r_t obeys e_t = (1 - alpha)(e_{t-1} + drift),
    so e_t = drift (1 - alpha)(1 - (1 - alpha)^t) / alpha, which tends to
    drift (1 - alpha) / alpha: the running mean reports the population mean of
    (1 - alpha)/alpha steps ago.

    In training, the batch of step t passes through the weights *before* that
    step's update, and a checkpoint (or :func:`bnlib.tracking.staleness`)
    compares the running mean with the network *after* it: then
    e_t = drift + (1 - alpha) e_{t-1}, so e_t = drift (1 - (1 - alpha)^t) / alpha,
    one step's drift more per window, drift / alpha in the steady state
    (``after_update=True``).

    Parameters
    ----------
    alpha : float in (0, 1]
        Weight of the new batch (PyTorch's ``momentum``).
    drift : float
        Change of the population mean per step, in any unit (the book uses
        population standard deviations); its sign is kept.
    steps : int >= 0 or None, default None
        Steps since the running mean was on target; None for the steady state.
    after_update : bool, default False
        Measure the lag against the network after the last update (as at a
        checkpoint), not against the one the last batch passed through.

    Returns
    -------
    float
        The lag, in the unit of ``drift``.

    Examples
    --------
    >>> round(ema_lag(0.1, 0.02), 12), round(ema_lag(0.1, 0.02, after_update=True), 12)
    (0.18, 0.2)
    """
    alpha = _check_unit_interval(alpha, "alpha", allow_zero=False)
    drift, t = _check_real(drift, "drift"), _check_steps(steps)
    if not isinstance(after_update, bool):
        raise TypeError(f"after_update must be a bool; got {after_update!r}")
    return drift * (1.0 if after_update else 1.0 - alpha) * (1.0 - (1.0 - alpha) ** t) / alpha


def ema_noise_sd(alpha: float, batch_size: int, steps: int | None = None) -> float:
    """Standard deviation of the running mean from batch noise alone (eq-misleads-noise).

    Weights frozen, independent batches of ``batch_size`` independent values of
    variance 1: the running mean is a weighted sum of batch means with weights
    alpha (1 - alpha)^k, k < t, so its variance is
    alpha (1 - (1 - alpha)^(2t)) / ((2 - alpha) m), which tends to
    alpha / ((2 - alpha) m), as noisy as the mean of (2 - alpha) / alpha batches.
    (The variance of the starting value is not counted: it is a constant.) In a
    convolutional layer the m H W values of a channel are not independent; with
    m H W for ``batch_size`` this is a lower bound when they are positively
    correlated and the batches independent. Batches drawn without replacement
    from a small training set (an epoch of a few batches) are less noisy than
    this.

    Parameters
    ----------
    alpha : float in (0, 1]
        Weight of the new batch (PyTorch's ``momentum``).
    batch_size : int >= 1
        Number m of independent values per batch and channel.
    steps : int >= 0 or None, default None
        Updates so far; None for the steady state.

    Returns
    -------
    float
        The standard deviation, in population standard deviations.

    Examples
    --------
    >>> round(ema_noise_sd(0.1, 32), 4)
    0.0406
    """
    alpha = _check_unit_interval(alpha, "alpha", allow_zero=False)
    batch_size = _check_positive_int(batch_size, "batch_size")
    t = _check_steps(steps)
    return math.sqrt(alpha * (1.0 - (1.0 - alpha) ** (2.0 * t)) / ((2.0 - alpha) * batch_size))


def startup_bias(alpha: float, steps: int, start_distance: float) -> float:
    """What is left of the starting value's error after ``steps`` updates: (1 - alpha)^t d_0.

    PyTorch starts the running mean at 0 and the running variance at 1; a
    population mean ``start_distance`` away from the starting value still
    leaves the weight (1 - alpha)^t on it after t updates.

    Parameters
    ----------
    alpha : float in (0, 1]
        Weight of the new batch (PyTorch's ``momentum``).
    steps : int >= 0
        Updates so far.
    start_distance : float
        Population value minus starting value, in any unit; its sign is kept.

    Returns
    -------
    float
        The remaining error, in the unit of ``start_distance``.

    Examples
    --------
    >>> round(startup_bias(0.01, 100, 1.0), 3)
    0.366
    """
    alpha = _check_unit_interval(alpha, "alpha", allow_zero=False)
    t = _check_steps(steps)
    if t == math.inf:
        raise ValueError("steps must be a non-negative int; got None")
    return (1.0 - alpha) ** t * _check_real(start_distance, "start_distance")


def ema_error(alpha: float, batch_size: int, drift: float = 0.0, steps: int | None = None,
              start_distance: float = 0.0, after_update: bool = False) -> float:
    """Root-mean-square distance of the running mean from the population mean: bias, lag and noise.

    The expected error is the start-up bias plus the lag,
    (1 - alpha)^t d_0 + :func:`ema_lag`; the batch noise adds the variance
    :func:`ema_noise_sd` squared; the result is
    sqrt((bias + lag)^2 + noise^2). With drift and start distance in population
    standard deviations, it is in population standard deviations, the unit of
    :func:`bnlib.tracking.staleness`'s ``"mean_distance"`` (which is a mean
    absolute distance, not a root-mean-square: for pure Gaussian noise about
    0.8 of it).

    Parameters
    ----------
    alpha : float in (0, 1]
        Weight of the new batch (PyTorch's ``momentum``).
    batch_size : int >= 1
        Number m of independent values per batch and channel.
    drift : float, default 0.0
        Change of the population mean per step.
    steps : int >= 0 or None, default None
        Updates so far; None for the steady state (no start-up bias left).
    start_distance : float, default 0.0
        Population mean minus starting value at step 0.
    after_update : bool, default False
        As in :func:`ema_lag`.

    Returns
    -------
    float
        The root-mean-square error.

    Examples
    --------
    >>> round(ema_error(0.1, 32, drift=0.005), 4)
    0.0606
    """
    start_distance = _check_real(start_distance, "start_distance")
    bias = 0.0 if steps is None else startup_bias(alpha, steps, start_distance)
    mean_error = bias + ema_lag(alpha, drift, steps, after_update)
    return math.hypot(mean_error, ema_noise_sd(alpha, batch_size, steps))


# --------------------------------------------------------------------------- the explorer's closed forms
class RunningMeanBand(NamedTuple):
    """Where a running mean is expected at step t, and how widely batch noise spreads it.

    Both in population standard deviations. ``error`` is the population mean
    minus the expected running mean; the running mean lies within
    ``error +- noise_sd`` of it with probability about 68 % (normal noise).
    """

    error: float
    noise_sd: float


_KINDS = ("ema", "debiased", "cumulative")


def running_mean_band(alpha: float | None, batch_size: int, drift: float, steps: int,
                      start_distance: float = 0.0, kind: str = "ema") -> RunningMeanBand:
    """Expected error and noise of a running mean at a checkpoint, for three averages.

    The book's model (chapter 7): at step t, after the t-th update of the
    weights, the population mean is mu_t = mu_0 + drift t, in population
    standard deviations; the batch of step t passed through the weights before
    that update, so its mean is mu_{t-1} plus noise of variance 1/m, independent
    from batch to batch. The running mean starts at 0 and the population mean at mu_0 =
    ``start_distance``.

    * ``"ema"`` (PyTorch's ``momentum=alpha``): error
      (1 - alpha)^t d_0 + drift (1 - (1 - alpha)^t) / alpha (:func:`startup_bias`
      plus :func:`ema_lag` with ``after_update=True``), noise :func:`ema_noise_sd`.
    * ``"debiased"`` (the EMA divided by 1 - (1 - alpha)^t, eq-ema-debiased):
      no start-up bias; error drift (1 + A_t), where A_t is the mean age of its
      normalised weights, alpha sum_j j (1 - alpha)^j / (1 - (1 - alpha)^t)
      over j < t; noise :func:`ema_noise_sd` / (1 - (1 - alpha)^t).
    * ``"cumulative"`` (``momentum=None``, eq-ema-cumulative; ``alpha`` is
      ignored): error drift (t + 1) / 2, noise 1 / sqrt(t m).

    These are the numbers the explorable figure of chapter 7 draws.

    Parameters
    ----------
    alpha : float in (0, 1], or None for ``kind="cumulative"``
        Weight of the new batch (PyTorch's ``momentum``).
    batch_size : int >= 1
        Number m of independent values per batch and channel.
    drift : float
        Change of the population mean per step.
    steps : int
        The checkpoint t: >= 0 for ``"ema"``, >= 1 for the others (they have no
        value before the first batch).
    start_distance : float, default 0.0
        Population mean minus the running mean's starting value 0, at step 0.
    kind : {"ema", "debiased", "cumulative"}, default "ema"

    Returns
    -------
    RunningMeanBand
        ``(error, noise_sd)``.

    Examples
    --------
    >>> band = running_mean_band(0.1, 32, 0.002, 100, start_distance=1.0)
    >>> round(band.error, 4), round(band.noise_sd, 4)
    (0.02, 0.0406)
    >>> round(running_mean_band(None, 32, 0.002, 100, kind="cumulative").error, 3)
    0.101
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}; got {kind!r}")
    drift = _check_real(drift, "drift")
    start_distance = _check_real(start_distance, "start_distance")
    t = _check_steps(steps)
    if t == math.inf:
        raise ValueError("steps must be a non-negative int; got None")
    if kind != "ema" and t < 1:
        raise ValueError(f"steps must be >= 1 for kind={kind!r} (no value before the first batch); got {steps!r}")
    batch_size = _check_positive_int(batch_size, "batch_size")
    if kind == "cumulative":
        return RunningMeanBand(drift * (t + 1) / 2, 1.0 / math.sqrt(t * batch_size))
    alpha = _check_unit_interval(alpha, "alpha", allow_zero=False)
    if kind == "ema":
        error = startup_bias(alpha, steps, start_distance) + ema_lag(alpha, drift, steps, after_update=True)
        return RunningMeanBand(error, ema_noise_sd(alpha, batch_size, steps))
    rho = 1.0 - alpha
    filled = -math.expm1(t * math.log1p(-alpha)) if alpha < 1.0 else 1.0      # 1 - rho^t
    ages = sum(j * rho ** j for j in range(int(t)))                              # sum_j j rho^j
    return RunningMeanBand(drift * (1.0 + alpha * ages / filled),
                           ema_noise_sd(alpha, batch_size, steps) / filled)


def trusts_ema_tracking(alpha: float, batch_size: int, drift: float, s_star: float) -> bool:
    """The book's rule (eq-misleads-rule): is EMA-tracked accuracy to be trusted here?

    Trust it when sqrt(2/pi) s_rms <= s_star, where s_rms is the steady-state
    root-mean-square distance of the running mean from the population mean at a
    checkpoint, :func:`ema_error` ``(alpha, batch_size, drift, after_update=True)``,
    and sqrt(2/pi) turns it into the mean absolute distance that ``s_star`` (a
    threshold calibrated in chapter 7, in population standard deviations) is
    measured in. Conservative where the batch's values are correlated.

    Parameters
    ----------
    alpha : float in (0, 1]
        PyTorch's ``momentum``.
    batch_size : int >= 1
        Examples per batch (independent values per channel).
    drift : float
        Change of the population mean per step, in population standard deviations.
    s_star : float > 0
        The calibrated threshold.

    Returns
    -------
    bool

    Examples
    --------
    >>> trusts_ema_tracking(0.1, 256, 0.001, 0.035), trusts_ema_tracking(0.1, 32, 0.005, 0.035)
    (True, False)
    """
    s_star = _check_real(s_star, "s_star", positive=True)
    s_rms = ema_error(alpha, batch_size, drift, after_update=True)
    return math.sqrt(2.0 / math.pi) * s_rms <= s_star
