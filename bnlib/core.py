"""Batch Normalization as pure NumPy functions: Algorithm 1 and its backward pass.

Ioffe & Szegedy (2015), "Batch Normalization: Accelerating Deep Network Training
by Reducing Internal Covariate Shift", Algorithm 1 (training) and Section 3.1
(inference). Every function works on a mini-batch ``x`` of shape ``(N, C)`` or
``(N, C, *spatial)``; statistics are taken per channel ``C`` over all other axes,
so the effective batch size is ``m = N * prod(spatial)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "batch_norm_forward",
    "batch_norm_backward",
    "batch_norm_inference",
    "batch_statistics",
    "normalized",
]

Cache = dict[str, Any]


# --------------------------------------------------------------------------- checks
def _check_x(x: Any, *, name: str = "x", training: bool) -> np.ndarray:
    """Validate a mini-batch once, at the boundary."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array; got {type(x).__name__}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(
            f"{name} must have a floating dtype (float32 or float64); got {x.dtype}"
        )
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have shape (N, C) or (N, C, *spatial); got shape {x.shape}"
        )
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one channel (axis 1); got shape {x.shape}")
    if training and x.size // x.shape[1] == 1:
        raise ValueError(
            f"{name} must have shape (N, C) or (N, C, *spatial) with N*prod(spatial) > 1 "
            f"in training mode (one value per channel cannot be normalised); "
            f"got shape {x.shape}"
        )
    return x


def _check_channel_vector(v: Any, name: str, num_channels: int, dtype) -> np.ndarray:
    """Return ``v`` as a 1-D array of length ``num_channels`` in ``dtype``."""
    arr = np.asarray(v)
    if arr.shape != (num_channels,):
        raise ValueError(
            f"{name} must have shape (C,) = ({num_channels},) to match the channel axis "
            f"of x; got shape {arr.shape}"
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be numeric; got dtype {arr.dtype}")
    return arr.astype(dtype, copy=False)


def _check_eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)):
        raise TypeError(f"eps must be a positive float; got {eps!r}")
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a positive finite float; got {eps!r}")
    return float(eps)


def _reduce_axes(x: np.ndarray) -> tuple[int, ...]:
    """All axes but the channel axis 1."""
    return (0,) + tuple(range(2, x.ndim))


def _as_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    """Reshape a ``(C,)`` vector so it broadcasts against ``(N, C, *spatial)``."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _channel_view(a: np.ndarray) -> np.ndarray:
    """``a`` as (N, C, prod(spatial)), for einsum's per-channel sums."""
    return a.reshape(a.shape[0], a.shape[1], math.prod(a.shape[2:]))


def _channel_sum(a: np.ndarray) -> np.ndarray:
    """Per-channel sum of ``a`` over all axes but 1 (einsum: faster than sum over two axes)."""
    return np.einsum("ijk->j", _channel_view(a))


def _channel_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-channel sum of ``a * b`` over all axes but 1, without a temporary."""
    return np.einsum("ijk,ijk->j", _channel_view(a), _channel_view(b))


def _raise_if_not_finite(values: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"{what} is not finite in channel(s) {bad[:8].tolist()}")


# --------------------------------------------------------------------------- forward
def batch_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of a mini-batch (eq-bn-mean, eq-bn-var).

    Parameters
    ----------
    x : ndarray, shape (N, C) or (N, C, *spatial), float
        The mini-batch; statistics are taken over every axis but axis 1.
        ``m = N * prod(spatial)`` must not be 1.

    Returns
    -------
    mu_B : ndarray, shape (C,)
        Mean over the ``m = N * prod(spatial)`` values of each channel (NaN
        for an empty batch, m = 0).
    sigma2_B : ndarray, shape (C,)
        Biased variance, the sum of squared deviations divided by ``m`` (NaN
        for an empty batch).

    Examples
    --------
    >>> mu, var = batch_statistics(np.array([[1.0], [2.0]]))
    >>> float(mu[0]), float(var[0])
    (1.5, 0.25)
    """
    _check_x(x, training=True)
    if x.size == 0:                                  # an empty batch has no statistics
        return np.full(x.shape[1], np.nan, x.dtype), np.full(x.shape[1], np.nan, x.dtype)
    axes = _reduce_axes(x)
    mu = x.mean(axis=axes)
    xc = x - _as_channel(mu, x.ndim)
    var = np.mean(np.square(xc, out=xc), axis=axes)
    return mu, var


def batch_norm_forward(
    x: np.ndarray, gamma: Any, beta: Any, eps: float = 1e-5
) -> tuple[np.ndarray, Cache]:
    """Training-mode Batch Normalization, Algorithm 1 of Ioffe & Szegedy (2015).

    For each channel c, with ``m = N * prod(spatial)`` values in the mini-batch,

    .. math::

        \\mu_B = \\frac1m \\sum_i x_i,\\quad
        \\sigma^2_B = \\frac1m \\sum_i (x_i - \\mu_B)^2,\\quad
        \\hat x_i = \\frac{x_i - \\mu_B}{\\sqrt{\\sigma^2_B + \\epsilon}},\\quad
        y_i = \\gamma \\hat x_i + \\beta.

    The variance used for normalising is the *biased* one (divide by m), as in
    the paper and in ``torch.nn.functional.batch_norm(training=True)``.

    The pass writes one new array: ``x - mu_B`` goes into ``y``, whose sum of
    squares gives the variance, and is then scaled by ``gamma / sqrt(sigma2_B +
    eps)`` and shifted by ``beta`` in place. Like torch, it caches the input,
    the mean and ``1/sqrt(sigma2_B + eps)``, not ``x_hat``: the backward pass
    recomputes ``x - mu_B`` from them.

    Parameters
    ----------
    x : ndarray, shape (N, C) or (N, C, *spatial), float32 or float64
        The mini-batch; ``m = N * prod(spatial)`` must not be 1 (one value per
        channel cannot be normalised). An empty batch (m = 0) gives an empty
        output, as in torch.
    gamma, beta : array_like, shape (C,)
        Scale and shift, cast to ``x.dtype``.
    eps : float, default 1e-5
        Added to the variance for numerical stability; must be positive.

    Returns
    -------
    y : ndarray, same shape and dtype as x
        The normalised, scaled and shifted batch.
    cache : dict
        What :func:`batch_norm_backward` needs: ``x`` (the input itself, not a
        copy), ``gamma``, ``mean`` and ``var`` (the batch statistics, shape
        (C,)) and ``inv_std`` = 1/sqrt(sigma2_B + eps) (shape (C,)); the
        statistics are NaN for an empty batch. ``x_hat`` is
        ``(x - mean) * inv_std`` per channel (:func:`normalized`).

    Raises
    ------
    TypeError
        If x is not a floating NumPy array.
    ValueError
        If x has fewer than 2 dimensions, one value per channel, non-finite
        values, or gamma/beta do not have shape (C,), or eps <= 0.

    Examples
    --------
    >>> y, _ = batch_norm_forward(np.array([[1.0], [3.0]]), [1.0], [0.0], eps=1e-12)
    >>> np.round(y.ravel(), 6)
    array([-1.,  1.])
    """
    _check_x(x, training=True)
    eps = _check_eps(eps)
    C = x.shape[1]
    gamma = _check_channel_vector(gamma, "gamma", C, x.dtype)
    beta = _check_channel_vector(beta, "beta", C, x.dtype)
    if x.size == 0:                                           # m = 0: nothing to normalise
        nan = np.full(C, np.nan, x.dtype)
        return np.empty_like(x), {"x": x, "gamma": gamma, "inv_std": nan, "mean": nan, "var": nan}

    mu = x.mean(axis=_reduce_axes(x))                         # mu_B
    y = x - _as_channel(mu, x.ndim)                           # x_i - mu_B: the one new array
    var = _channel_dot(y, y) / (x.size // C)                  # sigma2_B, biased
    _raise_if_not_finite(var, "the batch variance of x")
    inv_std = 1.0 / np.sqrt(var + eps)
    y *= _as_channel(gamma * inv_std, x.ndim)                 # normalise and scale, in place
    y += _as_channel(beta, x.ndim)                            # shift
    return y, {"x": x, "gamma": gamma, "inv_std": inv_std, "mean": mu, "var": var}


def normalized(cache: Cache) -> np.ndarray:
    """The normalised batch x_hat = (x - mu_B) / sqrt(sigma2_B + eps) of a forward pass.

    Parameters
    ----------
    cache : dict
        The second value returned by :func:`batch_norm_forward`.

    Returns
    -------
    x_hat : ndarray, shape and dtype of the forward input
        Per channel, mean 0 and variance sigma2_B / (sigma2_B + eps).
    """
    x = cache["x"]
    x_hat = x - _as_channel(cache["mean"], x.ndim)
    x_hat *= _as_channel(cache["inv_std"], x.ndim)
    return x_hat


# --------------------------------------------------------------------------- backward
def batch_norm_backward(
    dy: np.ndarray, cache: Cache
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward pass of training-mode Batch Normalization, in compact form.

    With ``m`` values per channel, the paper's chain rule simplifies to

    .. math::

        \\frac{\\partial\\ell}{\\partial x_i} = \\frac{\\gamma}{\\sqrt{\\sigma^2_B+\\epsilon}}
        \\Big(dy_i - \\tfrac1m\\textstyle\\sum_j dy_j
        - \\hat x_i\\,\\tfrac1m\\sum_j dy_j \\hat x_j\\Big),\\quad
        \\frac{\\partial\\ell}{\\partial\\gamma} = \\sum_i dy_i \\hat x_i,\\quad
        \\frac{\\partial\\ell}{\\partial\\beta} = \\sum_i dy_i.

    Parameters
    ----------
    dy : ndarray, same shape as the forward input
        Upstream gradient dl/dy.
    cache : dict
        The second value returned by :func:`batch_norm_forward`.

    Returns
    -------
    dx : ndarray, shape of dy
        Gradient with respect to the input; per channel it sums to zero, and its
        dot product with x_hat is gamma * inv_std * dgamma * eps / (sigma2_B + eps),
        so it is orthogonal to x_hat only up to that eps term.
    dgamma, dbeta : ndarray, shape (C,)
        Gradients with respect to the scale and shift.

    Raises
    ------
    ValueError
        If dy does not have the shape of the forward input.
    """
    x = cache["x"]
    if not isinstance(dy, np.ndarray) or dy.shape != x.shape:
        raise ValueError(
            f"dy must be an array with the shape of the forward input {x.shape}; "
            f"got {getattr(dy, 'shape', type(dy).__name__)}"
        )
    dbeta = _channel_sum(dy)
    if dy.size == 0:                                     # an empty batch: zero gradients, as in torch
        return np.empty_like(dy), np.zeros_like(dbeta), dbeta
    m = dy.size // dy.shape[1]
    inv_std = cache["inv_std"]
    dx = x - _as_channel(cache["mean"], x.ndim)          # x_i - mu_B = x_hat_i / inv_std: the one new array
    dgamma = inv_std * _channel_dot(dy, dx)              # sum_i dy_i x_hat_i
    # dx = gamma * inv_std * (dy - dbeta/m - x_hat * dgamma/m), finished in place
    # with no temporaries of the size of dy.
    dx *= _as_channel(-inv_std * dgamma / m, dy.ndim)
    dx += dy
    dx -= _as_channel(dbeta / m, dy.ndim)
    dx *= _as_channel(cache["gamma"] * inv_std, dy.ndim)
    return dx.astype(dy.dtype, copy=False), dgamma, dbeta


# --------------------------------------------------------------------------- inference
def batch_norm_inference(
    x: np.ndarray, mean: Any, var: Any, gamma: Any, beta: Any, eps: float = 1e-5
) -> np.ndarray:
    """Inference-mode Batch Normalization: a fixed affine map per channel.

    .. math::

        y = \\frac{\\gamma}{\\sqrt{\\mathrm{Var}[x] + \\epsilon}}\\, x
        + \\Big(\\beta - \\frac{\\gamma\\,\\mathrm{E}[x]}{\\sqrt{\\mathrm{Var}[x] + \\epsilon}}\\Big)

    Parameters
    ----------
    x : ndarray, shape (N, C) or (N, C, *spatial), float
        Any batch, including a single example (N = 1).
    mean, var : array_like, shape (C,)
        Population (or running) statistics E[x] and Var[x]; must be finite and
        var must be non-negative.
    gamma, beta : array_like, shape (C,)
        Scale and shift.
    eps : float, default 1e-5

    Returns
    -------
    y : ndarray, same shape and dtype as x
        Each example depends only on itself, deterministically.
    """
    _check_x(x, training=False)
    eps = _check_eps(eps)
    C = x.shape[1]
    mean = _check_channel_vector(mean, "mean", C, x.dtype)
    var = _check_channel_vector(var, "var", C, x.dtype)
    gamma = _check_channel_vector(gamma, "gamma", C, x.dtype)
    beta = _check_channel_vector(beta, "beta", C, x.dtype)
    _raise_if_not_finite(mean, "mean")
    _raise_if_not_finite(var, "var")
    if np.any(var < 0):
        raise ValueError(f"var must be non-negative; got min {var.min()}")
    scale = gamma / np.sqrt(var + eps)
    shift = beta - scale * mean
    y = x * _as_channel(scale, x.ndim)
    y += _as_channel(shift, x.ndim)
    return y
