"""The backward pass of Batch Normalization: what chapter 2 claims about batch_norm_backward.

It is the gradient (finite differences in float64, torch autograd for 2-D and 4-D
inputs), it sums to zero per channel, it is orthogonal to x_hat up to the factor
eps / (sigma2_B + eps), and its Jacobian couples every example of the batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bnlib import batch_norm_backward, batch_norm_forward, normalized

SHAPES = st.tuples(
    st.integers(2, 5), st.integers(1, 3), st.lists(st.integers(1, 3), max_size=2)
).map(lambda t: (t[0], t[1], *t[2]))


def _problem(shape, seed, dtype=np.float64):
    """A batch, random gamma and beta, and upstream weights w: the loss is sum(w * y)."""
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = rng.normal(1.0, 2.0, size=shape).astype(dtype)
    gamma = rng.uniform(0.5, 2.0, C).astype(dtype)
    beta = rng.normal(size=C).astype(dtype)
    w = rng.normal(size=shape).astype(dtype)
    return x, gamma, beta, w


def _numerical_gradient(f, a, h=1e-5):
    """Central differences of the scalar function f at every entry of a (modified in place)."""
    grad = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + h
        up = f()
        a[idx] = old - h
        down = f()
        a[idx] = old
        grad[idx] = (up - down) / (2 * h)
    return grad


def _rel_error(a, b, scale=0.0):
    """max |a - b| relative to the larger of |a|, |b| and a natural scale of the problem."""
    return np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), scale)


@settings(max_examples=15, deadline=None)
@given(shape=SHAPES, seed=st.integers(0, 2**16))
def test_gradients_match_finite_differences_in_float64(shape, seed):
    x, gamma, beta, w = _problem(shape, seed)
    _, cache = batch_norm_forward(x, gamma, beta)
    dx, dgamma, dbeta = batch_norm_backward(w, cache)

    def loss():
        return float(np.sum(w * batch_norm_forward(x, gamma, beta)[0]))

    # With m = 2, dx is of order eps (exercise ex-ch02-predict-pairs): compare it on the
    # scale of its terms, gamma * inv_std * |w|, not on its own tiny size.
    dx_scale = np.max(gamma * cache["inv_std"]) * np.abs(w).max()
    assert _rel_error(dx, _numerical_gradient(loss, x), dx_scale) < 1e-6
    assert _rel_error(dgamma, _numerical_gradient(loss, gamma)) < 1e-6
    assert _rel_error(dbeta, _numerical_gradient(loss, beta)) < 1e-6


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 5, 5)], ids=["2-D", "4-D"])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_gradients_equal_torch_autograd(shape, dtype, tol):
    x, gamma, beta, w = _problem(shape, seed=sum(shape), dtype=dtype)
    _, cache = batch_norm_forward(x, gamma, beta)
    dx, dgamma, dbeta = batch_norm_backward(w, cache)

    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    yt = torch.nn.functional.batch_norm(xt, None, None, gt, bt, training=True, eps=1e-5)
    yt.backward(torch.from_numpy(w))
    for ours, theirs in ((dx, xt), (dgamma, gt), (dbeta, bt)):
        assert ours.dtype == dtype
        assert _rel_error(ours, theirs.grad.numpy()) < tol


@settings(max_examples=25, deadline=None)
@given(shape=SHAPES, seed=st.integers(0, 2**16))
def test_input_gradient_sums_to_zero_per_channel(shape, seed):
    x, gamma, beta, w = _problem(shape, seed)
    _, cache = batch_norm_forward(x, gamma, beta)
    dx, _, _ = batch_norm_backward(w, cache)
    axes = (0,) + tuple(range(2, x.ndim))
    scale = gamma * cache["inv_std"] * np.abs(w).sum(axis=axes)   # size of the summed terms
    assert np.all(np.abs(dx.sum(axis=axes)) <= 1e-13 * scale)


@settings(max_examples=25, deadline=None)
@given(shape=SHAPES, seed=st.integers(0, 2**16), eps=st.sampled_from([1e-5, 1e-3, 1.0]))
def test_input_gradient_is_orthogonal_to_x_hat_up_to_eps(shape, seed, eps):
    """sum_i dx_i x_hat_i = gamma * inv_std * dgamma * eps / (sigma2_B + eps), zero as eps -> 0."""
    x, gamma, beta, w = _problem(shape, seed)
    _, cache = batch_norm_forward(x, gamma, beta, eps=eps)
    dx, dgamma, _ = batch_norm_backward(w, cache)
    axes = (0,) + tuple(range(2, x.ndim))
    inv_std = cache["inv_std"]
    expected = gamma * inv_std * dgamma * eps * inv_std**2
    got = np.sum(dx * normalized(cache), axis=axes)
    terms = gamma * inv_std * np.sum(np.abs(w * normalized(cache)), axis=axes)
    assert np.all(np.abs(got - expected) <= 1e-12 * terms)


def test_input_gradient_is_orthogonal_to_x_hat_for_tiny_eps():
    x, gamma, beta, w = _problem((32, 4), seed=3)
    _, cache = batch_norm_forward(x, gamma, beta, eps=1e-12)
    dx, _, _ = batch_norm_backward(w, cache)
    cos = np.sum(dx * normalized(cache), axis=0) / (
        np.linalg.norm(dx, axis=0) * np.linalg.norm(normalized(cache), axis=0)
    )
    assert np.abs(cos).max() < 1e-10


def test_jacobian_couples_every_example_of_the_batch():
    """dy_i/dx_j = gamma * inv_std * (delta_ij - 1/m - x_hat_i x_hat_j / m), one channel."""
    m = 6
    x = np.random.default_rng(7).normal(size=(m, 1))
    gamma = np.array([1.7])
    _, cache = batch_norm_forward(x, gamma, [0.3])
    jac = np.stack([batch_norm_backward(e[:, None], cache)[0][:, 0] for e in np.eye(m)])
    xh = normalized(cache)[:, 0]
    expected = gamma[0] * cache["inv_std"][0] * (np.eye(m) - 1.0 / m - np.outer(xh, xh) / m)
    assert np.allclose(jac, expected, rtol=1e-12, atol=1e-14)
    assert np.all(np.abs(jac[~np.eye(m, dtype=bool)]) > 0)


def test_wrong_upstream_shape_is_refused_by_name():
    x, gamma, beta, _ = _problem((4, 3), seed=0)
    _, cache = batch_norm_forward(x, gamma, beta)
    with pytest.raises(ValueError, match="dy must"):
        batch_norm_backward(np.ones((4, 2)), cache)
