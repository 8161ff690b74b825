"""bnlib.distributed: P processes with SyncBatchNorm compute single-process BN on the full batch."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.multiprocessing import ProcessRaisedException

from bnlib.distributed import SyncBatchNorm, launch, shard_forward_backward

TOL = 1e-5


def full_batch_reference(xs: torch.Tensor, dys: torch.Tensor, momentum=0.1):
    """One process, nn.BatchNorm*d on the whole batch of every step."""
    bn = {3: nn.BatchNorm1d, 4: nn.BatchNorm1d, 5: nn.BatchNorm2d}[xs.dim()](xs.shape[2],
                                                                         momentum=momentum)
    for t in range(xs.shape[0]):
        x = xs[t].clone().requires_grad_(True)
        bn.zero_grad()
        y = bn(x)
        y.backward(dys[t])
    return y.detach(), x.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var


def steps(shape, seed=0, loc=2.0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return loc + scale * torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize("shape", [(3, 11, 4), (2, 6, 3, 2, 2)], ids=["(N,C) uneven", "(N,C,H,W)"])
def test_two_processes_equal_single_process_bn_on_the_full_batch(shape):
    xs, dys = steps(shape)
    shards = launch(shard_forward_backward, 2, args=(xs, dys), timeout=60)
    y, dx, dgamma, dbeta, rmean, rvar = full_batch_reference(xs, dys)
    assert np.abs(np.concatenate([s.y for s in shards]) - y.numpy()).max() < TOL
    assert np.abs(np.concatenate([s.dx for s in shards]) - dx.numpy()).max() < TOL
    # Parameter gradients are local; their sum over processes is the full-batch gradient.
    assert np.abs(sum(s.dgamma for s in shards) - dgamma.numpy()).max() < TOL
    assert np.abs(sum(s.dbeta for s in shards) - dbeta.numpy()).max() < TOL
    for s in shards:                       # every process holds the same running statistics
        assert np.abs(s.running_mean - rmean.numpy()).max() < TOL
        assert np.abs(s.running_var - rvar.numpy()).max() < TOL


def test_per_process_bn_differs_from_full_batch_bn():
    xs, dys = steps((1, 8, 3))
    shards = launch(shard_forward_backward, 2, args=(xs, dys, "local"), timeout=60)
    y = full_batch_reference(xs, dys)[0]
    assert np.abs(np.concatenate([s.y for s in shards]) - y.numpy()).max() > 1e-2


@pytest.mark.parametrize("momentum", [0.1, None])
def test_without_a_process_group_it_is_batch_norm(momentum):
    xs, dys = steps((4, 16, 5))
    sync = SyncBatchNorm(5, momentum=momentum)
    ref = nn.BatchNorm1d(5, momentum=momentum)
    for t in range(xs.shape[0]):
        x1, x2 = xs[t].clone().requires_grad_(True), xs[t].clone().requires_grad_(True)
        sync(x1).backward(dys[t])
        ref(x2).backward(dys[t])
    assert (x1.grad - x2.grad).abs().max() < TOL
    assert (sync.weight.grad - ref.weight.grad).abs().max() < TOL
    assert (sync.running_var - ref.running_var).abs().max() < TOL
    assert sync.num_batches_tracked.item() == ref.num_batches_tracked.item() == 4
    sync.eval(); ref.eval()
    assert (sync(xs[0][:1]) - ref(xs[0][:1])).abs().max() < TOL


def test_statistics_stay_accurate_when_the_mean_dwarfs_the_std():
    x = (1e4 + torch.randn(256, 3, generator=torch.Generator().manual_seed(0))).float()
    y = SyncBatchNorm(3)(x)
    x64 = x.double()
    expected = (x64 - x64.mean(0)) / torch.sqrt(x64.var(0, unbiased=False) + 1e-5)
    assert (y.double() - expected).abs().max() < 1e-3


def test_a_single_value_per_channel_raises():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        SyncBatchNorm(3)(torch.ones(1, 3))


def test_launch_names_a_port_that_is_taken():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(RuntimeError, match="already in use"):
            launch(shard_forward_backward, 2, port=s.getsockname()[1])


def test_launch_rejects_a_function_the_processes_cannot_import():
    with pytest.raises(ValueError, match="module-level function"):
        launch(lambda rank, world_size: rank, 2)


def test_launch_reports_an_error_raised_in_a_process():
    xs, dys = steps((1, 4, 2))
    with pytest.raises(ProcessRaisedException, match="layer must be"):
        launch(shard_forward_backward, 2, args=(xs, dys, "no such layer"), timeout=60)


def sleep_then_return(rank: int, world_size: int, seconds: float) -> int:
    time.sleep(seconds)
    return rank


def test_launch_times_out_and_stops_the_processes():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="timed out"):
        launch(sleep_then_return, 2, args=(30.0,), timeout=2.0)
    assert time.monotonic() - start < 20
    assert launch(sleep_then_return, 2, args=(0.0,), timeout=60) == [0, 1]


# --------------------------------------------------------------------------- a training run under DDP
from bnlib.data import iterate_minibatches, load_digits_splits  # noqa: E402
from bnlib.distributed import (  # noqa: E402
    accumulation_train, convert_sync_batch_norm, ddp_train, ddp_train_many, single_process_train,
)
from bnlib.models import mlp  # noqa: E402


@pytest.fixture(scope="module")
def run():
    """Five SGD steps on batches of 25 digits (float64), trained in one process on whole batches."""
    batches = list(iterate_minibatches(*load_digits_splits(seed=0).train, 25, seed=0))[:5]
    X = torch.from_numpy(np.stack([b[0] for b in batches])).double()
    y = torch.from_numpy(np.stack([b[1] for b in batches]))
    return X, y, single_process_train(X, y)


@pytest.mark.parametrize("sizes", [[9, 8, 8], [13, 12, 0], [20, 5]], ids=["uneven", "empty shard", "two"])
def test_ddp_with_sync_bn_equals_one_process_on_the_whole_batch(run, sizes):
    X, y, ref = run
    out = [r["sync"] for r in launch(ddp_train, len(sizes), args=(X, y, sizes), timeout=120)]
    for o in out:                                     # weights and BN buffers, on every process
        for name, value in ref["state"].items():
            np.testing.assert_allclose(o["state"][name], value, rtol=0, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(np.concatenate([o["logits"] for o in out]), ref["logits"], atol=1e-12)
    # The minimised losses add up to P times the whole batch's mean loss, at every step.
    np.testing.assert_allclose(sum(o["losses"] for o in out), len(sizes) * ref["losses"], rtol=1e-12)


def test_the_mean_of_the_shards_mean_losses_is_not_the_batch_mean(run):
    X, y, ref = run
    uneven = [r["sync"] for r in launch(ddp_train, 3, args=(X, y, [9, 8, 8]), timeout=120)]
    naive = np.mean([o["shard_means"] for o in uneven], axis=0)
    assert np.abs(naive - ref["losses"]).min() > 1e-4          # every step: not the batch mean
    empty = [r["sync"] for r in launch(ddp_train, 3, args=(X, y, [13, 12, 0]), timeout=120)]
    assert np.isnan(empty[2]["shard_means"]).all()             # an empty shard has no mean


def test_per_process_bn_under_ddp_trains_another_network(run):
    X, y, ref = run
    out = launch(ddp_train, 2, args=(X, y, [13, 12], 0.05, 0, ("local",)), timeout=120)
    assert max(np.abs(out[0]["local"]["state"][k] - v).max() for k, v in ref["state"].items()) > 1e-3


@pytest.mark.parametrize("kwargs, name", [
    ({"shard_sizes": [10, 10]}, "shard_sizes"),
    ({"shard_sizes": [9, 8, 7]}, "shard_sizes"),
    ({"shard_sizes": [26, -1, 0]}, "shard_sizes"),
    ({"layers": "sync"}, "layers"),
    ({"layers": ("global",)}, "layers"),
    ({"loss": "sum"}, "loss"),
])
def test_ddp_train_rejects_bad_arguments_before_communicating(run, kwargs, name):
    X, y, _ = run
    args = {"shard_sizes": [9, 8, 8]} | kwargs
    with pytest.raises(ValueError, match=name):
        ddp_train(0, 3, X, y, **args)


def test_convert_sync_batch_norm_keeps_parameters_buffers_and_mode():
    net = mlp(seed=0)
    net[1].running_mean += 1.0
    net[4].eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    converted = convert_sync_batch_norm(net)
    assert converted is net and isinstance(net[1], SyncBatchNorm) and isinstance(net[4], SyncBatchNorm)
    assert net[1].training and not net[4].training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    x = torch.randn(8, 64)
    reference = mlp(seed=0)
    reference.load_state_dict(before)
    assert torch.allclose(net.train()(x), reference.train()(x), atol=1e-6)   # no process group: plain BN
    bn = nn.BatchNorm2d(3, momentum=None, affine=False)
    sync = convert_sync_batch_norm(bn)
    assert isinstance(sync, SyncBatchNorm) and sync.momentum is None and not sync.affine


def test_each_process_minimising_its_own_mean_loss_trains_silently_wrong(run):
    """An empty shard's mean loss is NaN, but it sends no gradient: the weights stay finite and wrong."""
    X, y, ref = run
    out = [r["sync"] for r in launch(ddp_train, 3, args=(X, y, [13, 12, 0], 0.05, 0, ("sync",), "local_mean"),
                                     timeout=120)]
    assert np.isnan(out[2]["losses"]).all()
    for o in out:
        assert all(np.isfinite(v).all() for v in o["state"].values())
        assert max(np.abs(o["state"][k] - v).max() for k, v in ref["state"].items()) > 1e-3


@pytest.mark.parametrize("sizes", [[9, 8, 8], [13, 12], [5, 5, 5, 10]])
def test_ddp_without_sync_bn_is_gradient_accumulation_over_the_same_groups(run, sizes):
    """Same weights to float64 rounding; process 0's buffers are those of the first micro-batch only."""
    X, y, _ = run
    local = launch(ddp_train, len(sizes), args=(X, y, sizes, 0.05, 0, ("local",)), timeout=120)[0]["local"]["state"]
    first = accumulation_train(X, y, sizes, running="first")["state"]
    every = accumulation_train(X, y, sizes)["state"]
    for name, value in local.items():
        np.testing.assert_allclose(first[name], value, rtol=0, atol=1e-12, err_msg=name)
        if "running" not in name and "num_batches" not in name:
            np.testing.assert_allclose(every[name], value, rtol=0, atol=1e-12, err_msg=name)
    assert every["1.num_batches_tracked"] == len(sizes) * local["1.num_batches_tracked"] == len(sizes) * X.shape[0]
    assert np.abs(every["1.running_mean"] - local["1.running_mean"]).max() > 1e-3


def test_accumulation_in_one_micro_batch_is_plain_training(run):
    X, y, ref = run
    one = accumulation_train(X, y, [X.shape[1]])
    for name, value in ref["state"].items():
        np.testing.assert_allclose(one["state"][name], value, rtol=0, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(one["losses"], ref["losses"], rtol=1e-12)


@pytest.mark.parametrize("kwargs, name", [
    ({"micro_sizes": [10, 10]}, "micro_sizes"),
    ({"micro_sizes": [25, 0]}, "micro_sizes"),
    ({"micro_sizes": [24, 1]}, "micro_sizes"),
    ({"micro_sizes": [True, 24]}, "micro_sizes"),
    ({"micro_sizes": [12.5, 12.5]}, "micro_sizes"),
    ({"micro_sizes": []}, "micro_sizes"),
    ({"running": "last"}, "running"),
])
def test_accumulation_train_rejects_bad_arguments(run, kwargs, name):
    X, y, _ = run
    with pytest.raises(ValueError, match=name):
        accumulation_train(X, y, **({"micro_sizes": [13, 12]} | kwargs))


def test_accumulation_train_takes_numpy_sizes_and_checks_shapes(run):
    X, y, _ = run
    one = accumulation_train(X[:1], y[:1], np.array([13, 12]))
    assert one["losses"].shape == (1,)
    with pytest.raises(ValueError, match=r"X must be a tensor of shape \(T, m, features\)"):
        accumulation_train(X[0], y[0], [13, 12])


def test_several_runs_in_one_process_group_equal_separate_launches(run):
    X, y, _ = run
    runs = [{"X": X, "y": y, "shard_sizes": [9, 8, 8], "layers": ("sync", "local")},
            {"X": X, "y": y, "shard_sizes": [13, 12, 0], "loss": "local_mean"}]
    together = launch(ddp_train_many, 3, args=(runs,), timeout=120)
    for i, kwargs in enumerate(runs):
        alone = launch(ddp_train, 3, args=(X, y, kwargs["shard_sizes"], 0.05, 0, kwargs.get("layers", ("sync",)),
                                           kwargs.get("loss", "global")), timeout=120)
        for rank in range(3):
            for layer, result in alone[rank].items():
                for name, value in result["state"].items():
                    np.testing.assert_array_equal(together[rank][i][layer]["state"][name], value, err_msg=name)
    with pytest.raises(ValueError, match="runs must be a sequence of dicts"):
        ddp_train_many(0, 3, runs[0])
