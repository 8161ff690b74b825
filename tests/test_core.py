"""Tests for bnlib.core: Algorithm 1, its backward pass and inference-mode BN.

The reference is PyTorch (``torch.nn.functional.batch_norm`` and autograd) for
the numbers, NumPy for the statistics, and hypothesis for shape/axis handling.
"""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing import assert_allclose

import bnlib.core
from bnlib import batch_norm_backward, batch_norm_forward, batch_norm_inference, batch_statistics, normalized

# The tensors here are tiny: torch's intra-op threads only add overhead, and on a
# busy machine their spin-waiting made the suite ~10x slower. One thread also
# fixes torch's reduction order, so the measured errors below are reproducible.
torch.set_num_threads(1)

# Tolerances against torch (CPU), per dtype, as assert_allclose(rtol, atol).
# Measured maximum errors over the torch cases in this module (seeds fixed below):
#   float64: |err| <= 1.5e-14 (dgamma, values O(10)), <= 3.1e-15 on y, dx, inference.
#   float32: |err| <= 3.8e-6 (dgamma, relative 1.9e-6), <= 9.6e-7 on y, dx, inference.
# The worst case uses 13% of the float32 tolerance and 0.1% of the float64 one;
# the margin is for other CPUs / SIMD paths, which change the summation order.
TOL = {
    np.float64: dict(rtol=1e-10, atol=1e-12),
    np.float32: dict(rtol=1e-5, atol=5e-6),
}
DTYPES = [np.float32, np.float64]
# (N, C), (N, C, L), (N, C, H, W), (N, C, D, H, W), and the smallest legal batch.
SHAPES = [(16, 5), (8, 4, 7), (4, 3, 5, 6), (2, 3, 2, 3, 4), (2, 3)]
EPS = 1e-5

# Hypothesis: small shapes, fixed seed (derandomize), no deadline (first call is slow).
PROPERTY = settings(max_examples=50, deadline=None, derandomize=True)


def make_batch(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A batch whose channels have different means (-5..5) and scales (0.5..3)."""
    bshape = (1, shape[1]) + (1,) * (len(shape) - 2)
    scale = rng.uniform(0.5, 3.0, size=bshape)
    shift = rng.uniform(-5.0, 5.0, size=bshape)
    return (rng.normal(size=shape) * scale + shift).astype(dtype)


def reduce_axes(ndim: int) -> tuple[int, ...]:
    return (0,) + tuple(range(2, ndim))


def case(shape, dtype, seed=0):
    """x, gamma, beta, dy for one shape and dtype."""
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = make_batch(rng, shape, dtype)
    gamma = rng.normal(size=C).astype(dtype)
    beta = rng.normal(size=C).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    return x, gamma, beta, dy


def torch_training_grads(x, gamma, beta, dy):
    """y, dx, dgamma, dbeta from F.batch_norm(training=True) and autograd."""
    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    yt = F.batch_norm(xt, None, None, gt, bt, training=True, eps=EPS)
    yt.backward(torch.tensor(dy))
    return yt.detach().numpy(), xt.grad.numpy(), gt.grad.numpy(), bt.grad.numpy()


params = pytest.mark.parametrize(
    "shape, dtype",
    [(s, d) for d in DTYPES for s in SHAPES],
    ids=[f"{np.dtype(d).name}-{'x'.join(map(str, s))}" for d in DTYPES for s in SHAPES],
)


# ------------------------------------------------------------------ against torch
@params
def test_forward_matches_torch_training_mode(shape, dtype):
    x, gamma, beta, dy = case(shape, dtype)
    y, _ = batch_norm_forward(x, gamma, beta, eps=EPS)
    y_torch, *_ = torch_training_grads(x, gamma, beta, dy)
    assert_allclose(y, y_torch, **TOL[dtype])


@params
@pytest.mark.parametrize("grad", ["dx", "dgamma", "dbeta"])
def test_backward_matches_torch_autograd(shape, dtype, grad):
    x, gamma, beta, dy = case(shape, dtype)
    _, cache = batch_norm_forward(x, gamma, beta, eps=EPS)
    ours = dict(zip(("dx", "dgamma", "dbeta"), batch_norm_backward(dy, cache)))
    _, *theirs = torch_training_grads(x, gamma, beta, dy)
    assert_allclose(ours[grad], dict(zip(("dx", "dgamma", "dbeta"), theirs))[grad], **TOL[dtype])


@params
def test_inference_matches_torch_eval_mode(shape, dtype):
    x, gamma, beta, _ = case(shape, dtype)
    rng = np.random.default_rng(1)
    mean = rng.normal(size=shape[1]).astype(dtype)
    var = rng.uniform(0.1, 3.0, size=shape[1]).astype(dtype)
    y = batch_norm_inference(x, mean, var, gamma, beta, eps=EPS)
    t = [torch.tensor(a) for a in (x, mean, var, gamma, beta)]
    y_torch = F.batch_norm(t[0], t[1], t[2], t[3], t[4], training=False, eps=EPS)
    assert_allclose(y, y_torch.numpy(), **TOL[dtype])


# ------------------------------------------------------------------ fixed-seed properties
@params
def test_forward_cache_holds_batch_mean_and_biased_variance(shape, dtype):
    x, gamma, beta, _ = case(shape, dtype)
    _, cache = batch_norm_forward(x, gamma, beta, eps=EPS)
    axes = reduce_axes(x.ndim)
    x64 = x.astype(np.float64)
    got = np.concatenate([cache["mean"], cache["var"]])
    assert_allclose(got, np.concatenate([x64.mean(axis=axes), x64.var(axis=axes)]), **TOL[dtype])


def test_inference_with_batch_statistics_equals_training_forward():
    x, gamma, beta, _ = case((8, 4, 5), np.float64)
    mean, var = batch_statistics(x)
    y_train, _ = batch_norm_forward(x, gamma, beta, eps=EPS)
    y_inference = batch_norm_inference(x, mean, var, gamma, beta, eps=EPS)
    assert_allclose(y_inference, y_train, rtol=1e-12, atol=1e-12)


def test_inference_treats_each_example_independently():
    x, gamma, beta, _ = case((6, 3, 4), np.float64)
    mean, var = np.array([0.5, -1.0, 2.0]), np.array([1.0, 0.25, 4.0])
    y = batch_norm_inference(x, mean, var, gamma, beta)
    one_by_one = [batch_norm_inference(x[i : i + 1], mean, var, gamma, beta) for i in range(6)]
    np.testing.assert_array_equal(y, np.concatenate(one_by_one))


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1, 1)])
def test_inference_accepts_one_value_per_channel(shape):
    x = np.arange(3.0).reshape(shape)
    y = batch_norm_inference(x, np.zeros(3), np.full(3, 4.0), np.ones(3), np.ones(3), eps=1e-12)
    assert_allclose(y.ravel(), [1.0, 1.5, 2.0], rtol=1e-12)


def test_docstring_examples_hold():
    results = doctest.testmod(bnlib.core)
    assert results.attempted > 0 and results.failed == 0


# ------------------------------------------------------------------ hypothesis
def _has_two_values_per_channel(shape: tuple[int, ...]) -> bool:
    return math.prod(shape) // shape[1] > 1


# ndim 2..5, every side 1..4, at least two values per channel (training mode).
train_shapes = hnp.array_shapes(min_dims=2, max_dims=5, min_side=1, max_side=4).filter(
    _has_two_values_per_channel
)


def batches(dtype=np.float64, shapes=train_shapes):
    width = 32 if dtype == np.float32 else 64
    elements = st.floats(-1e3, 1e3, width=width, allow_subnormal=False)
    return shapes.flatmap(lambda s: hnp.arrays(dtype, s, elements=elements))


def unit_affine(C: int, dtype=np.float64):
    return np.ones(C, dtype=dtype), np.zeros(C, dtype=dtype)


@PROPERTY
@given(x=st.one_of(batches(np.float32), batches(np.float64)))
def test_forward_output_has_input_shape_and_dtype(x):
    y, _ = batch_norm_forward(x, *unit_affine(x.shape[1]))
    assert (y.shape, y.dtype) == (x.shape, x.dtype)


@PROPERTY
@given(x=batches())
def test_forward_output_has_zero_mean_per_channel(x):
    y, _ = batch_norm_forward(x, *unit_affine(x.shape[1]), eps=EPS)
    assert_allclose(y.mean(axis=reduce_axes(x.ndim)), 0.0, atol=1e-9)


@PROPERTY
@given(x=batches())
def test_forward_output_has_biased_variance_var_over_var_plus_eps(x):
    y, _ = batch_norm_forward(x, *unit_affine(x.shape[1]), eps=EPS)
    var = x.var(axis=reduce_axes(x.ndim))
    assert_allclose(y.var(axis=reduce_axes(x.ndim)), var / (var + EPS), rtol=1e-9, atol=1e-9)


@PROPERTY
@given(x=batches(), seed=st.integers(0, 2**32 - 1))
def test_forward_normalises_each_channel_over_all_other_axes(x, seed):
    """(N, C, *spatial) gives the same as (N * prod(spatial), C) with the channel last."""
    rng = np.random.default_rng(seed)
    C = x.shape[1]
    gamma, beta = rng.normal(size=C), rng.normal(size=C)
    y, _ = batch_norm_forward(x, gamma, beta, eps=EPS)
    x_cl = np.moveaxis(x, 1, -1)
    y_2d, _ = batch_norm_forward(x_cl.reshape(-1, C), gamma, beta, eps=EPS)
    assert_allclose(y, np.moveaxis(y_2d.reshape(x_cl.shape), -1, 1), rtol=1e-9, atol=1e-9)


@PROPERTY
@given(x=batches())
def test_batch_statistics_equal_numpy_mean_and_biased_var(x):
    axes = reduce_axes(x.ndim)
    mean, var = batch_statistics(x)
    expected = np.stack([x.mean(axis=axes), x.var(axis=axes)])
    assert_allclose(np.stack([mean, var]), expected, rtol=1e-12, atol=1e-12)


def _backward_case(x, seed):
    """dx, the cache and dy for random gamma, beta and dy (float64)."""
    rng = np.random.default_rng(seed)
    C = x.shape[1]
    _, cache = batch_norm_forward(x, rng.normal(size=C), rng.normal(size=C), eps=EPS)
    dy = rng.normal(size=x.shape)
    dx, dgamma, _ = batch_norm_backward(dy, cache)
    return dx, dgamma, dy, cache


def _rounding_bound(dy, cache):
    """Per-channel size of the terms of dx times m; rounding errors are a tiny fraction."""
    axes = reduce_axes(dy.ndim)
    m = dy.size // dy.shape[1]
    scale = np.abs(cache["gamma"] * cache["inv_std"])
    return scale * m * np.abs(dy).max(axis=axes) * (1 + np.abs(normalized(cache)).max(axis=axes)) ** 2


@PROPERTY
@given(x=batches(), seed=st.integers(0, 2**32 - 1))
def test_backward_dx_sums_to_zero_per_channel(x, seed):
    dx, _, dy, cache = _backward_case(x, seed)
    total = dx.sum(axis=reduce_axes(x.ndim))
    assert np.all(np.abs(total) <= 1e-13 * _rounding_bound(dy, cache))


@PROPERTY
@given(x=batches(), seed=st.integers(0, 2**32 - 1))
def test_backward_dx_is_orthogonal_to_x_hat_up_to_the_eps_term(x, seed):
    """sum_i dx_i x_hat_i = gamma * inv_std * dgamma * eps / (var + eps) per channel.

    This is zero for eps = 0 (y is invariant to scaling x); with eps > 0 the
    right-hand side is the exact remainder, about dgamma * eps / var for var >> eps.
    The identity uses sum_i x_hat_i = 0, which holds up to the rounding of the
    mean: for a constant channel x - mu_B is an ulp, not 0, and sum_i x_hat_i times
    sum_i dy_i / m enters the dot product (allowed for below).
    """
    dx, dgamma, dy, cache = _backward_case(x, seed)
    axes = reduce_axes(x.ndim)
    x_hat = normalized(cache)
    dot = np.sum(dx * x_hat, axis=axes)
    remainder = cache["gamma"] * cache["inv_std"] * dgamma * EPS / (cache["var"] + EPS)
    mean_rounding = np.abs(cache["gamma"] * cache["inv_std"] * dy.sum(axis=axes) * x_hat.sum(axis=axes))
    m = dy.size // dy.shape[1]
    assert np.all(np.abs(dot - remainder) <= 1e-13 * _rounding_bound(dy, cache) + 2 * mean_rounding / m)


def test_backward_dx_is_orthogonal_to_x_hat_when_var_dominates_eps():
    x, gamma, beta, dy = case((64, 3, 4), np.float64)
    _, cache = batch_norm_forward(x, gamma, beta, eps=1e-12)
    dx, _, _ = batch_norm_backward(dy, cache)
    a, b = (v.swapaxes(0, 1).reshape(3, -1) for v in (dx, normalized(cache)))
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert np.all(np.abs(cosine) < 1e-12)


@PROPERTY
@given(x=st.one_of(batches(np.float32), batches(np.float64)))
def test_backward_dx_has_dy_shape_and_dtype(x):
    _, cache = batch_norm_forward(x, *unit_affine(x.shape[1], x.dtype))
    dx, _, _ = batch_norm_backward(np.ones_like(x), cache)
    assert (dx.shape, dx.dtype) == (x.shape, x.dtype)


# ------------------------------------------------------------------ bad inputs
X = np.random.default_rng(2).normal(size=(4, 3))
ONES, ZEROS = np.ones(3), np.zeros(3)


def forward(x=X, gamma=ONES, beta=ZEROS, eps=EPS):
    return batch_norm_forward(x, gamma, beta, eps=eps)


def inference(x=X, mean=ZEROS, var=ONES, gamma=ONES, beta=ZEROS, eps=EPS):
    return batch_norm_inference(x, mean, var, gamma, beta, eps=eps)


def backward(dy):
    _, cache = forward()
    return batch_norm_backward(dy, cache)


def x_with(value):
    x = X.copy()
    x[1, 2] = value
    return x


BAD_INPUTS = {
    # x: not an array, not floating, wrong ndim, no channels, one value per channel
    "forward-x-list": (lambda: forward(x=X.tolist()), TypeError, r"^x must be a NumPy array"),
    "inference-x-list": (lambda: inference(x=X.tolist()), TypeError, r"^x must be a NumPy array"),
    "statistics-x-list": (
        lambda: batch_statistics(X.tolist()), TypeError, r"^x must be a NumPy array"
    ),
    "forward-x-int": (
        lambda: forward(x=np.ones((4, 3), dtype=np.int64)),
        TypeError,
        r"^x must have a floating dtype",
    ),
    "inference-x-int": (
        lambda: inference(x=np.ones((4, 3), dtype=np.int32)),
        TypeError,
        r"^x must have a floating dtype",
    ),
    "statistics-x-int": (
        lambda: batch_statistics(np.ones((4, 3), dtype=int)),
        TypeError,
        r"^x must have a floating dtype",
    ),
    "forward-x-1d": (lambda: forward(x=np.ones(3)), ValueError, r"^x must have shape \(N, C\)"),
    "inference-x-1d": (lambda: inference(x=np.ones(3)), ValueError, r"^x must have shape \(N, C\)"),
    "statistics-x-1d": (
        lambda: batch_statistics(np.ones(3)), ValueError, r"^x must have shape \(N, C\)"
    ),
    "forward-x-0d": (lambda: forward(x=np.array(1.0)), ValueError, r"^x must have shape"),
    "forward-x-no-channels": (
        lambda: forward(x=np.ones((4, 0))), ValueError, r"^x must have at least one channel"
    ),
    "forward-x-1x3": (
        lambda: forward(x=np.ones((1, 3))), ValueError, r"^x must have shape .* in training mode"
    ),
    "forward-x-1x3x1x1": (
        lambda: forward(x=np.ones((1, 3, 1, 1))),
        ValueError,
        r"^x must have shape .* in training mode",
    ),
    "statistics-x-1x3": (
        lambda: batch_statistics(np.ones((1, 3))),
        ValueError,
        r"^x must have shape .* in training mode",
    ),
    # x: non-finite values are never normalised into a silent NaN
    "forward-x-nan": (
        lambda: forward(x=x_with(np.nan)),
        ValueError,
        r"variance of x is not finite in channel\(s\) \[2\]",
    ),
    # per-channel vectors must match the channel axis of x
    "forward-gamma-length": (
        lambda: forward(gamma=np.ones(4)), ValueError, r"^gamma must have shape \(C,\) = \(3,\)"
    ),
    "forward-beta-length": (
        lambda: forward(beta=np.zeros(2)), ValueError, r"^beta must have shape \(C,\) = \(3,\)"
    ),
    "forward-gamma-2d": (
        lambda: forward(gamma=np.ones((1, 3))), ValueError, r"^gamma must have shape"
    ),
    "forward-gamma-strings": (
        lambda: forward(gamma=np.array(["a", "b", "c"])), TypeError, r"^gamma must be numeric"
    ),
    "inference-mean-length": (
        lambda: inference(mean=np.zeros(4)), ValueError, r"^mean must have shape"
    ),
    "inference-var-length": (
        lambda: inference(var=np.ones(2)), ValueError, r"^var must have shape"
    ),
    "inference-gamma-length": (
        lambda: inference(gamma=np.ones(4)), ValueError, r"^gamma must have shape"
    ),
    "inference-beta-length": (
        lambda: inference(beta=np.zeros(4)), ValueError, r"^beta must have shape"
    ),
    # statistics for inference: finite, variance non-negative
    "inference-var-negative": (
        lambda: inference(var=np.array([1.0, -0.5, 1.0])), ValueError, r"^var must be non-negative"
    ),
    "inference-var-nan": (
        lambda: inference(var=np.array([1.0, np.nan, 1.0])),
        ValueError,
        r"^var is not finite in channel\(s\) \[1\]",
    ),
    "inference-mean-inf": (
        lambda: inference(mean=np.array([np.inf, 0, 0])),
        ValueError,
        r"^mean is not finite in channel\(s\) \[0\]",
    ),
    # eps: a positive finite number
    "forward-eps-zero": (
        lambda: forward(eps=0.0), ValueError, r"^eps must be a positive finite float"
    ),
    "forward-eps-negative": (
        lambda: forward(eps=-1e-5), ValueError, r"^eps must be a positive finite float"
    ),
    "forward-eps-nan": (
        lambda: forward(eps=float("nan")), ValueError, r"^eps must be a positive finite float"
    ),
    "forward-eps-inf": (
        lambda: forward(eps=float("inf")), ValueError, r"^eps must be a positive finite float"
    ),
    "forward-eps-string": (
        lambda: forward(eps="1e-5"), TypeError, r"^eps must be a positive float"
    ),
    "forward-eps-none": (lambda: forward(eps=None), TypeError, r"^eps must be a positive float"),
    "forward-eps-bool": (lambda: forward(eps=True), TypeError, r"^eps must be a positive float"),
    "inference-eps-zero": (
        lambda: inference(eps=0), ValueError, r"^eps must be a positive finite float"
    ),
    "inference-eps-string": (
        lambda: inference(eps="small"), TypeError, r"^eps must be a positive float"
    ),
    # dy: the shape of the forward input
    "backward-dy-transposed": (
        lambda: backward(np.ones((3, 4))),
        ValueError,
        r"^dy must be an array with the shape of the forward input \(4, 3\)",
    ),
    "backward-dy-broadcastable": (
        lambda: backward(np.ones((1, 3))), ValueError, r"^dy must be an array with the shape"
    ),
    "backward-dy-list": (
        lambda: backward(np.ones((4, 3)).tolist()), ValueError, r"^dy must be an array"
    ),
}


@pytest.mark.parametrize("call, error, match", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_an_error_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


# inf - inf inside the mean subtraction warns before the check raises.
@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")
def test_forward_rejects_infinite_x():
    with pytest.raises(ValueError, match=r"variance of x is not finite in channel\(s\) \[2\]"):
        forward(x=x_with(np.inf))
