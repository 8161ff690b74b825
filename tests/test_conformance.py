"""bnlib against torch 2.13 on the edge cases torch's own BatchNorm tests exercise.

Ported from the classes of input in PyTorch's ``test/test_nn.py`` and its module
test inputs (empty batches, ``bias=False``, mixed dtypes, running statistics
switched off after construction, channels-last and non-contiguous inputs, large
float32 batches), fvcore's PreciseBN tests and Keras' BatchNormalization tests.
The deliberate differences of ``bnlib.BatchNorm`` (momentum outside [0, 1], a
negative running variance, float16 input) are checked to raise clear errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

import bnlib
from bnlib import BatchNorm, batch_norm_backward, batch_norm_forward, batch_norm_inference

torch.set_num_threads(1)

TORCH_MODULE = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
                5: torch.nn.BatchNorm3d}
TOL64 = dict(rtol=1e-10, atol=1e-12)
TOL32 = dict(rtol=1e-5, atol=5e-6)


def torch_bn(shape, dtype=torch.float64, **kwargs) -> torch.nn.Module:
    return TORCH_MODULE[len(shape)](shape[1], dtype=dtype, **kwargs)


def both(shape, momentum=0.1, **kwargs):
    """A float64 bnlib layer and the torch module for inputs of ``shape``."""
    return BatchNorm(shape[1], momentum=momentum, dtype=np.float64, **kwargs), \
        torch_bn(shape, momentum=momentum, **kwargs)


def batch(shape, seed=0, dtype=np.float64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(2.0, 3.0, size=shape)).astype(dtype)


def forward_backward(bn: BatchNorm, ref: torch.nn.Module, x: np.ndarray, dy: np.ndarray):
    """Outputs, input gradients and parameter gradients of both layers on the same batch."""
    xt = torch.tensor(x, requires_grad=True)
    yt = ref(xt)
    yt.backward(torch.tensor(dy))
    y = bn(x)
    dx = bn.backward(dy)
    grads = [p.grad.numpy() if p is not None and p.grad is not None else None for p in (ref.weight, ref.bias)]
    return (y, dx, bn.dgamma, bn.dbeta), (yt.detach().numpy(), xt.grad.numpy(), *grads)


SHAPES = [(4, 3), (4, 3, 5), (2, 3, 4, 4), (2, 3, 2, 3, 3)]
EMPTY = [(0, 3), (0, 3, 5), (0, 3, 4, 4), (0, 3, 2, 3, 3), (2, 3, 0)]


def ids(shape) -> str:
    return "x".join(map(str, shape))


# ------------------------------------------------------------------ empty batches
@pytest.mark.parametrize("shape", EMPTY, ids=ids)
def test_empty_batch_in_training_mode_matches_torch(shape):
    bn, ref = both(shape)
    dy = np.zeros(shape)
    (y, dx, dgamma, dbeta), (y_ref, dx_ref, dw_ref, db_ref) = forward_backward(bn, ref, np.zeros(shape), dy)
    assert y.shape == y_ref.shape == shape and dx.shape == dx_ref.shape == shape
    assert_allclose(dgamma, dw_ref) and assert_allclose(dbeta, db_ref)
    assert not dgamma.any() and not dbeta.any()
    assert_allclose(bn.running_mean, ref.running_mean.numpy())            # unchanged: 0
    assert_allclose(bn.running_var, ref.running_var.numpy())              # unchanged: 1
    assert bn.num_batches_tracked == int(ref.num_batches_tracked) == 1    # but counted


def test_empty_batch_counts_in_the_cumulative_average_as_in_torch():
    """With momentum=None the batch after an empty one gets weight 1/2, in torch and in bnlib."""
    bn, ref = both((4, 3), momentum=None)
    x = batch((4, 3))
    with torch.no_grad():
        for b in (np.zeros((0, 3)), x):
            bn(b), ref(torch.tensor(b))
    assert_allclose(bn.running_mean, ref.running_mean.numpy(), **TOL64)
    assert_allclose(bn.running_mean, x.mean(axis=0) / 2, **TOL64)
    assert_allclose(bn.running_var, ref.running_var.numpy(), **TOL64)


@pytest.mark.parametrize("shape", EMPTY[:3], ids=ids)
def test_empty_batch_in_eval_mode_matches_torch(shape):
    bn, ref = both(shape)
    bn.eval(), ref.eval()
    with torch.no_grad():
        assert bn(np.zeros(shape)).shape == ref(torch.zeros(shape, dtype=torch.float64)).shape == shape


def test_functional_api_on_an_empty_batch():
    x, gamma, beta = np.zeros((0, 3), np.float32), np.ones(3), np.zeros(3)
    y, cache = batch_norm_forward(x, gamma, beta)
    assert y.shape == (0, 3) and y.dtype == np.float32
    y_ref = torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, training=True)
    assert tuple(y_ref.shape) == y.shape
    dx, dgamma, dbeta = batch_norm_backward(np.zeros((0, 3), np.float32), cache)
    assert dx.shape == (0, 3) and not dgamma.any() and not dbeta.any()
    assert np.isnan(cache["mean"]).all() and np.isnan(bnlib.batch_statistics(x)[1]).all()
    assert batch_norm_inference(x, np.zeros(3), np.ones(3), gamma, beta).shape == (0, 3)


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 3, 1, 1), (1, 3, 1, 1, 1)], ids=ids)
def test_one_value_per_channel_still_raises_in_training_mode(shape):
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        torch_bn(shape)(torch.zeros(shape, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"N\*prod\(spatial\) > 1"):
        BatchNorm(3, dtype=np.float64)(np.zeros(shape))
    with pytest.raises(ValueError, match=r"N\*prod\(spatial\) > 1"):
        batch_norm_forward(np.zeros(shape), np.ones(3), np.zeros(3))


# ------------------------------------------------------------------ bias=False
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("shape", SHAPES, ids=ids)
def test_bias_false_matches_torch(shape, mode):
    bn, ref = both(shape, bias=False)
    assert ref.bias is None and len(bn.parameters()) == 1 and bn.parameters()[0] is bn.gamma
    bn.gamma[:] = ref.weight.detach().numpy()[:] = np.linspace(0.5, 1.5, shape[1])
    with torch.no_grad():                                   # give eval mode running statistics
        for s in range(3):
            b = batch(shape, seed=10 + s)
            bn(b), ref(torch.tensor(b))
    bn.train(mode == "train"), ref.train(mode == "train")
    (y, dx, dgamma, dbeta), (y_ref, dx_ref, dw_ref, db_ref) = forward_backward(
        bn, ref, batch(shape), batch(shape, seed=1))
    assert db_ref is None and not dbeta.any()
    for ours, theirs in [(y, y_ref), (dx, dx_ref), (dgamma, dw_ref),
                         (bn.running_mean, ref.running_mean.numpy()), (bn.running_var, ref.running_var.numpy())]:
        assert_allclose(ours, theirs, **TOL64)
    assert "bias=False" in repr(bn)


# ------------------------------------------------------------------ mixed dtypes
@pytest.mark.parametrize("layer_dtype, x_dtype", [(np.float32, np.float64), (np.float64, np.float32)])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_mixed_dtypes_raise_in_the_layer_as_in_torch(layer_dtype, x_dtype, mode):
    x = batch((4, 3), dtype=x_dtype)
    ref = torch.nn.BatchNorm1d(3, dtype=torch.float32 if layer_dtype == np.float32 else torch.float64)
    with pytest.raises(RuntimeError, match="mixed dtype"):
        ref.train(mode == "train")(torch.from_numpy(x))
    bn = BatchNorm(3, dtype=layer_dtype).train(mode == "train")
    with pytest.raises(TypeError, match=rf"^x must have the layer's dtype {np.dtype(layer_dtype)} \(mixed dtype"):
        bn(x)
    assert bn.num_batches_tracked == 0


def test_functional_api_casts_gamma_and_beta_to_the_dtype_of_x():
    x = batch((8, 3), dtype=np.float32)
    y, cache = batch_norm_forward(x, np.ones(3, np.float64), np.zeros(3, np.float64))
    assert y.dtype == cache["gamma"].dtype == np.float32


# ------------------------------------------------------------------ track_running_stats switched off
def test_track_running_stats_switched_off_after_construction_matches_torch():
    """torch: eval mode still normalises with the stored statistics; training mode updates nothing."""
    shape = (8, 3, 4)
    bn, ref = both(shape)
    with torch.no_grad():
        for s in range(5):
            b = batch(shape, seed=s)
            bn(b), ref(torch.tensor(b))
        bn.track_running_stats = ref.track_running_stats = False
        stored = bn.running_mean.copy(), bn.running_var.copy()
        b = batch(shape, seed=9)
        assert_allclose(bn(b), ref(torch.tensor(b)).numpy(), **TOL64)        # training: batch statistics
        assert bn.num_batches_tracked == int(ref.num_batches_tracked) == 5   # not counted
        assert_allclose(bn.running_mean, stored[0]) and assert_allclose(bn.running_var, stored[1])
        assert_allclose(ref.running_mean.numpy(), stored[0], **TOL64)
        bn.eval(), ref.eval()
        y, y_ref = bn(b), ref(torch.tensor(b)).numpy()
    assert_allclose(y, y_ref, **TOL64)
    assert_allclose(y, batch_norm_inference(b, *stored, bn.gamma, bn.beta), **TOL64)   # running stats


# ------------------------------------------------------------------ memory layouts
def channels_last(x: np.ndarray) -> np.ndarray:
    """The same values, stored with the channel axis last in memory (torch.channels_last)."""
    order = (0,) + tuple(range(2, x.ndim)) + (1,)
    back = np.argsort(order)
    return np.ascontiguousarray(x.transpose(order)).transpose(back)


LAYOUTS = {
    "channels_last_2d": ((4, 3, 5, 6), channels_last, lambda t: t.to(memory_format=torch.channels_last)),
    "channels_last_3d": ((2, 3, 3, 4, 5), channels_last, lambda t: t.to(memory_format=torch.channels_last_3d)),
    "strided_batch": ((12, 3, 5), lambda a: a[::3], lambda t: t[::3]),
    "strided_spatial": ((4, 3, 6, 8), lambda a: a[:, :, 1::2, ::3], lambda t: t[:, :, 1::2, ::3]),
    "transposed_1d": ((3, 8), lambda a: a.T.copy().T, lambda t: t.t().contiguous().t()),
}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=list(LAYOUTS))
def test_channels_last_and_non_contiguous_inputs_match_torch(layout, mode):
    shape, ours, theirs = LAYOUTS[layout]
    if layout == "transposed_1d":
        shape = (8, 3)
    x_full, dy_full = batch(shape), batch(shape, seed=1)
    x, dy = ours(x_full), ours(dy_full)
    xt, dyt = theirs(torch.tensor(x_full)), theirs(torch.tensor(dy_full))
    assert not x.flags.c_contiguous and not xt.is_contiguous()
    bn, ref = both(x.shape)
    with torch.no_grad():
        for s in range(2):
            b = ours(batch(shape, seed=20 + s))
            bn(b), ref(theirs(torch.tensor(batch(shape, seed=20 + s))))
    bn.train(mode == "train"), ref.train(mode == "train")
    xt.requires_grad_(True)
    yt = ref(xt)
    yt.backward(dyt)
    y, dx = bn(x), bn.backward(dy)
    for a, b in [(y, yt.detach()), (dx, xt.grad), (bn.dgamma, ref.weight.grad), (bn.dbeta, ref.bias.grad),
                 (bn.running_mean, ref.running_mean), (bn.running_var, ref.running_var)]:
        assert_allclose(a, b.numpy(), **TOL64)
    assert_allclose(y, BatchNorm(3, dtype=np.float64).train(mode == "train")(np.ascontiguousarray(x))
                    if mode == "train" else y, **TOL64)


# ------------------------------------------------------------------ large float32 batches
# Both libraries accumulate float32 sums in float32, so on hundreds of thousands of
# values per channel their float32 results drift from the exact (float64) ones by
# up to about 1e-3 on outputs of order 1 (torch's own error is of the same size);
# a float64 computation of the same batch is the reference.
LARGE = [(880801, 2), (2, 2, 440400), (16, 3, 128, 128)]


@pytest.mark.parametrize("shape", LARGE, ids=ids)
def test_large_float32_batch_is_close_to_float64(shape):
    x = batch(shape, dtype=np.float32) + np.float32(3.0)
    C = shape[1]
    gamma, beta = np.linspace(0.5, 1.5, C).astype(np.float32), np.linspace(-1, 1, C).astype(np.float32)
    y, cache = batch_norm_forward(x, gamma, beta)
    y64, cache64 = batch_norm_forward(x.astype(np.float64), gamma, beta)
    with torch.no_grad():
        y_torch = torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, torch.from_numpy(gamma),
                                                 torch.from_numpy(beta), training=True).numpy()
    err, err_torch = np.abs(y - y64).max(), np.abs(y_torch - y64).max()
    assert y.dtype == np.float32
    assert err < 5e-3 and err_torch < 5e-3, (err, err_torch)
    assert_allclose(cache["mean"], cache64["mean"], rtol=1e-3)
    assert_allclose(cache["var"], cache64["var"], rtol=2e-3)
    dy = batch(shape, seed=1, dtype=np.float32)
    dx, dgamma, dbeta = batch_norm_backward(dy, cache)
    dx64, dgamma64, dbeta64 = batch_norm_backward(dy.astype(np.float64), cache64)
    scale = np.abs(dx64).max()
    assert np.abs(dx - dx64).max() < 5e-3 * scale
    assert_allclose(dbeta, dbeta64, rtol=1e-3, atol=1e-3 * np.abs(dy).sum(axis=(0,) + tuple(range(2, dy.ndim))).max())


def test_large_float32_batch_running_statistics_match_torch():
    shape = (100000, 4)
    x = batch(shape, dtype=np.float32)
    bn, ref = BatchNorm(4), torch.nn.BatchNorm1d(4)
    with torch.no_grad():
        bn(x), ref(torch.from_numpy(x))
    assert_allclose(bn.running_mean, ref.running_mean.numpy(), **TOL32)
    assert_allclose(bn.running_var, ref.running_var.numpy(), rtol=1e-4)


# ------------------------------------------------------------------ deliberate differences
def test_deliberate_differences_raise_clear_errors():
    torch.nn.BatchNorm1d(3, momentum=1.5)                               # torch accepts it
    with pytest.raises(ValueError, match=r"^momentum must be in \[0, 1\]"):
        BatchNorm(3, momentum=1.5)
    bn = BatchNorm(3, dtype=np.float64).eval()
    bn.running_var[0] = -1.0
    with pytest.raises(ValueError, match="var must be non-negative"):
        bn(batch((4, 3)))
    torch.nn.BatchNorm1d(3, dtype=torch.float16)(torch.ones(4, 3, dtype=torch.float16))   # torch runs
    with pytest.raises(TypeError, match=r"^dtype must be a floating dtype, float32 or float64; got float16"):
        BatchNorm(3, dtype=np.float16)
    with pytest.raises(TypeError, match=r"^x must have a floating dtype \(float32 or float64\); got float16"):
        batch_norm_forward(batch((4, 3), dtype=np.float16), np.ones(3), np.zeros(3))
