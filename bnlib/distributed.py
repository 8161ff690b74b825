"""Synchronised Batch Normalization on ``torch.distributed``, and a small launcher.

In data-parallel training each of P processes holds a shard of m_p examples of
the global batch of m = sum_p m_p. :class:`SyncBatchNorm` normalises every shard
with the statistics of the *global* batch, so that P processes compute exactly
what one process computes on the whole batch (the book's chapter on batch
statistics across processes, eq-dist-merge, eq-dist-backward, eq-dist-running):

* forward: each process computes (m_p, mu_p, M2_p) of its shard by two passes;
  one all-gather gives every process all P triples (2C + 1 numbers each), which
  it merges with Chan's formula -- the same numbers on every process, and none
  of the cancellation of sum x^2 - (sum x)^2 / m;
* backward: one all-reduce of (sum dy, sum dy * x_hat), 2C numbers.

All sums are accumulated in float64. ``torch.nn.SyncBatchNorm`` communicates
the same way (it gathers mean, 1/std and count), and like it this layer returns
each process's *local* gradients for gamma and beta: a data-parallel wrapper
(``DistributedDataParallel``) all-reduces parameter gradients itself. Unlike
``torch.nn.SyncBatchNorm`` it runs on CPU tensors with the ``gloo`` backend.

:func:`launch` starts P processes on this machine (127.0.0.1), runs a function in
each with a process group initialised, and returns what each returned. Worker
functions must be importable by the new processes, so the ones the book uses
live here: :func:`shard_forward_backward`, :func:`sync_and_local` and
:func:`torch_sync_batch_norm_error`.

Importing this module imports torch.
"""

from __future__ import annotations

import math
import multiprocessing
import operator
import pickle
import queue as queue_module
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SyncBatchNorm",
    "ShardResult",
    "accumulation_train",
    "convert_sync_batch_norm",
    "ddp_train",
    "ddp_train_many",
    "launch",
    "single_process_train",
    "shard_forward_backward",
    "sync_and_local",
    "torch_sync_batch_norm_error",
]

_HOST = "127.0.0.1"


# --------------------------------------------------------------------------- the layer
def _all_reduce(t: torch.Tensor, group: Any) -> None:
    """Sum ``t`` in place over the processes of ``group`` (no-op without a group)."""
    if group is not None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)


class _SyncBatchNormFunction(torch.autograd.Function):
    """Training-mode BN with global statistics; forward and backward communicate."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group):
        C = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = (1, C) + (1,) * (x.dim() - 2)
        # This shard's (m_p, mu_p, M2_p) by two passes, accumulated in float64.
        m_p = x.numel() // C
        mu_p = x.sum(dims, dtype=torch.float64) / max(m_p, 1)
        dev = x - mu_p.to(x.dtype).view(shape)
        m2_p = (dev * dev).sum(dims, dtype=torch.float64)
        local = torch.cat([mu_p.new_tensor([m_p]), mu_p, m2_p])
        # One round: every process receives every shard's 2C + 1 numbers ...
        if group is None:
            parts = local[None]
        else:
            gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
            dist.all_gather(gathered, local, group=group)
            parts = torch.stack(gathered)
        counts, means, m2s = parts[:, :1], parts[:, 1:C + 1], parts[:, C + 1:]
        # ... and merges them with Chan's formula for P parts (eq-dist-merge).
        m = counts.sum().item()
        if m <= 1:
            raise ValueError(
                f"Expected more than 1 value per channel in the global batch when training; "
                f"got {int(m)} (local input shape {tuple(x.shape)})"
            )
        mean = (counts * means).sum(0) / m
        m2 = m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)
        var = m2 / m                                      # biased: normalises the batch
        inv_std = torch.rsqrt(var + eps)
        x_hat = (x - mean.to(x.dtype).view(shape)) * inv_std.to(x.dtype).view(shape)
        y = x_hat * weight.view(shape) + bias.view(shape)
        ctx.save_for_backward(x_hat, weight, inv_std)
        ctx.m, ctx.group, ctx.shape = m, group, shape
        var_unbiased = m2 / (m - 1)                       # Bessel with the global m
        ctx.mark_non_differentiable(mean, var_unbiased)
        return y, mean, var_unbiased

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        x_hat, weight, inv_std = ctx.saved_tensors
        C, shape, m = x_hat.shape[1], ctx.shape, ctx.m
        dims = [0, *range(2, dy.dim())]
        sums = torch.cat([dy.sum(dims, dtype=torch.float64),
                          (dy * x_hat).sum(dims, dtype=torch.float64)])
        # Local sums: the data-parallel wrapper all-reduces parameter gradients.
        dbeta = sums[:C].to(weight.dtype, copy=True) if ctx.needs_input_grad[2] else None
        dgamma = sums[C:].to(weight.dtype, copy=True) if ctx.needs_input_grad[1] else None
        dx = None
        if ctx.needs_input_grad[0]:
            _all_reduce(sums, ctx.group)                  # eq-dist-backward: 2C numbers
            mean_dy = (sums[:C] / m).to(dy.dtype).view(shape)
            mean_dy_xhat = (sums[C:] / m).to(dy.dtype).view(shape)
            scale = (weight.double() * inv_std).to(dy.dtype).view(shape)
            dx = (dy - mean_dy - x_hat * mean_dy_xhat) * scale
        return dx, dgamma, dbeta, None, None


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch Normalization over the global batch of all processes of a group.

    A drop-in for ``torch.nn.BatchNorm1d/2d/3d`` (same parameters, buffers and
    PyTorch conventions: ``momentum`` is the weight alpha of the new batch,
    ``None`` for the cumulative average; running variance unbiased) that works
    on CPU tensors with the ``gloo`` backend.

    In training mode every process normalises its shard with the mean and the
    biased variance of the concatenation of all shards, and the running
    statistics are updated with the global mean and the global *unbiased*
    variance, Bessel's correction using the global count m = sum_p m_p
    (eq-dist-running). Without an initialised process group it is plain
    Batch Normalization. In eval mode it uses the running statistics and does
    not communicate.

    Parameters
    ----------
    num_features : int
        Number of channels C; inputs have shape (N_p, C) or (N_p, C, *spatial).
    eps : float, default 1e-5
    momentum : float or None, default 0.1
        PyTorch's momentum alpha (weight of the new batch).
    affine : bool, default True
    track_running_stats : bool, default True
    process_group : ProcessGroup or None, default None
        The processes whose shards form the batch; the default group if None.
    device, dtype : optional
        Of the parameters and buffers.

    Examples
    --------
    Without a process group it equals ``nn.BatchNorm1d``:

    >>> x = torch.randn(8, 3)
    >>> torch.allclose(SyncBatchNorm(3)(x), nn.BatchNorm1d(3)(x), atol=1e-6)
    True
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.process_group = process_group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"x must have shape (N, {self.num_features}) or (N, {self.num_features}, *spatial); "
                f"got shape {tuple(x.shape)}"
            )

    def _group(self) -> Any:
        if not (dist.is_available() and dist.is_initialized()):
            return None
        return self.process_group if self.process_group is not None else dist.group.WORLD

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise this process's shard ``x``, shape (N_p, C, ...); returns the same shape."""
        self._check_input_dim(x)
        if not self.training and self.running_mean is not None:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        if not self.training:                          # no running stats: local batch stats
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        weight = self.weight if self.affine else torch.ones(self.num_features, dtype=x.dtype,
                                                            device=x.device)
        bias = self.bias if self.affine else torch.zeros_like(weight)
        y, mean, var_unbiased = _SyncBatchNormFunction.apply(x, weight, bias, self.eps,
                                                             self._group())
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                alpha = (1.0 / self.num_batches_tracked.item() if self.momentum is None
                         else self.momentum)
                self.running_mean.mul_(1 - alpha).add_(mean.to(self.running_mean.dtype), alpha=alpha)
                self.running_var.mul_(1 - alpha).add_(var_unbiased.to(self.running_var.dtype),
                                                      alpha=alpha)
        return y


def convert_sync_batch_norm(module: nn.Module, process_group: Any = None) -> nn.Module:
    """``module`` with every ``torch.nn.BatchNorm1d/2d/3d`` replaced by :class:`SyncBatchNorm`.

    The counterpart of ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` (which
    makes layers that refuse CPU tensors): each replacement keeps the layer's
    settings, parameters, buffers and train/eval mode. Children are replaced in
    place; the returned module is ``module`` itself unless it is a BN layer.

    Parameters
    ----------
    module : torch.nn.Module
    process_group : ProcessGroup or None, default None
        Of every new layer; the default group if None.

    Returns
    -------
    torch.nn.Module

    Examples
    --------
    >>> net = convert_sync_batch_norm(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)))
    >>> type(net[1]).__name__
    'SyncBatchNorm'
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        sync = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats, process_group)
        with torch.no_grad():
            if module.affine:
                sync.weight, sync.bias = module.weight, module.bias
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(sync, name, getattr(module, name))
        return sync.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batch_norm(child, process_group))
    return module


def _train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, lr: float, loss_of) -> dict[str, Any]:
    """SGD (heavy-ball 0.9) over the T batches X[t], y[t]; the state, last step's logits, the losses.

    ``losses`` holds the loss that was minimised, ``shard_means`` the mean loss over this
    process's examples (NaN for none), both per step.
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses, shard_means = [], []
    for t in range(X.shape[0]):
        logits = model(X[t])
        per_example = F.cross_entropy(logits, y[t], reduction="none")
        loss = loss_of(per_example)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        shard_means.append(per_example.mean().item() if len(per_example) else math.nan)
    module = getattr(model, "module", model)
    return {"state": {k: v.detach().numpy().copy() for k, v in module.state_dict().items()},
            "logits": logits.detach().numpy(), "losses": np.array(losses),
            "shard_means": np.array(shard_means)}


def single_process_train(X: torch.Tensor, y: torch.Tensor, lr: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """The reference for :func:`ddp_train`: one process, every batch whole, mean loss.

    Parameters
    ----------
    X : Tensor, shape (T, m, 64) float64
        T batches of m digit images.
    y : Tensor, shape (T, m) int64
    lr : float, default 0.05
        Learning rate of SGD with heavy-ball momentum 0.9.
    seed : int, default 0
        Seeds :func:`bnlib.models.mlp`'s weights.

    Returns
    -------
    dict
        ``state`` (the final ``state_dict`` as NumPy arrays: weights and BN
        buffers), ``logits`` (last step, shape (m, 10)) and ``losses`` (T).
    """
    from .models import mlp

    return _train(mlp(seed=seed).double(), X, y, lr, lambda per_example: per_example.mean())


def _sizes(sizes: Sequence[int], name: str, m: int, smallest: int) -> list[int]:
    """``sizes`` as a list of ints, each at least ``smallest``, summing to m; or raise naming ``name``."""
    try:
        values = [operator.index(v) for v in sizes]
    except TypeError:
        values = None
    if not values or any(isinstance(v, bool) for v in sizes) or min(values) < smallest or sum(values) != m:
        shown = [v.item() if hasattr(v, "item") else v for v in sizes] if hasattr(sizes, "__iter__") else sizes
        raise ValueError(f"{name} must be integers, each at least {smallest}, summing to m = {m}; got {shown}")
    return values


def accumulation_train(
    X: torch.Tensor,
    y: torch.Tensor,
    micro_sizes: Sequence[int],
    lr: float = 0.05,
    seed: int = 0,
    running: str = "every",
) -> dict[str, Any]:
    """Gradient accumulation in one process: each batch as micro-batches, one SGD step per batch.

    Micro-batch j holds examples ``sum(micro_sizes[:j])`` to ``sum(micro_sizes[:j + 1])``
    of every batch; each runs forward (its BN layers normalise it with its own
    statistics) and backward on its summed per-example loss divided by m, so the
    accumulated gradient is that of the batch's mean loss, and one step follows.
    The weights are those of :func:`ddp_train` with ``layers=("local",)`` on
    shards of the same sizes: data parallel without synchronised BN and gradient
    accumulation normalise the same groups of examples and, with the loss
    scaled by P/m as there, take the same steps; they differ only in the
    running statistics. With equal micro-batches this is Ghost Batch
    Normalization with the micro-batch as ghost batch; with unequal ones each
    group's loss counts in proportion to its size, where Ghost BN averages the
    groups' mean losses.

    Parameters
    ----------
    X, y, lr, seed
        As in :func:`single_process_train`.
    micro_sizes : sequence of int
        The micro-batch sizes, each at least 2 (a BN layer in training mode
        needs two values per feature), summing to m.
    running : {"every", "first"}, default "every"
        ``"every"``: every micro-batch updates the running statistics, k
        updates per step, as gradient accumulation (and Ghost BN) does;
        ``"first"``: only the first micro-batch does (the others' updates are
        undone), as the buffers of process 0 under ``DistributedDataParallel``,
        which broadcasts them before every forward pass (when process 0's shard
        is empty they never change).

    Returns
    -------
    dict
        As :func:`single_process_train`: ``state``, ``logits`` (the last
        batch, shape (m, 10)) and ``losses`` (the mean loss of each batch).
    """
    from .models import mlp

    if not (isinstance(X, torch.Tensor) and X.dim() == 3 and isinstance(y, torch.Tensor)
            and y.shape == X.shape[:2]):
        raise ValueError(f"X must be a tensor of shape (T, m, features) and y one of shape (T, m); got "
                         f"{tuple(getattr(X, 'shape', ()))} and {tuple(getattr(y, 'shape', ()))}")
    sizes = _sizes(micro_sizes, "micro_sizes", X.shape[1], smallest=2)
    if running not in ("every", "first"):
        raise ValueError(f"running must be 'every' or 'first'; got {running!r}")
    model = mlp(seed=seed).double().train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    m = X.shape[1]
    losses = []
    for t in range(X.shape[0]):
        opt.zero_grad()
        logits, loss = [], 0.0
        for j, (xb, yb) in enumerate(zip(X[t].split(sizes), y[t].split(sizes))):
            kept = [b.clone() for b in model.buffers()] if running == "first" and j > 0 else None
            out = model(xb)
            micro_loss = F.cross_entropy(out, yb, reduction="sum") / m
            micro_loss.backward()
            if kept is not None:                          # only process 0's update survives
                with torch.no_grad():
                    for b, old in zip(model.buffers(), kept):
                        b.copy_(old)
            logits.append(out.detach())
            loss += micro_loss.item()
        opt.step()
        losses.append(loss)
    return {"state": {k: v.detach().numpy().copy() for k, v in model.state_dict().items()},
            "logits": torch.cat(logits).numpy(), "losses": np.array(losses)}


def ddp_train(
    rank: int,
    world_size: int,
    X: torch.Tensor,
    y: torch.Tensor,
    shard_sizes: Sequence[int],
    lr: float = 0.05,
    seed: int = 0,
    layers: Sequence[str] = ("sync",),
    loss: str = "global",
) -> dict[str, dict[str, Any]]:
    """Worker: :func:`single_process_train` under ``DistributedDataParallel``, each batch sharded.

    Every process builds the same ``mlp(seed=seed)`` in float64 and wraps it in
    ``torch.nn.parallel.DistributedDataParallel`` (gloo, CPU), which averages
    the gradients of the P processes. Process p takes examples
    ``sum(shard_sizes[:p])`` to ``sum(shard_sizes[:p + 1])`` of every batch;
    shards may differ in size, and one may be empty.

    Parameters
    ----------
    rank, world_size : int
        Passed by :func:`launch`.
    X, y, lr, seed
        As in :func:`single_process_train`.
    shard_sizes : sequence of int
        One size per process, summing to m.
    layers : sequence of {"sync", "local"}, default ("sync",)
        Train one model for each, one after the other: ``"sync"``: BN layers
        replaced by :class:`SyncBatchNorm` (:func:`convert_sync_batch_norm`);
        ``"local"``: torch's BN on each shard alone (per-process statistics;
        DDP broadcasts process 0's buffers before every forward pass, as by
        default, and each process then updates them with its own shard).
    loss : {"global", "local_mean"}, default "global"
        ``"global"``: each process's summed per-example loss times P / m, so
        that DDP's average of the gradients is the gradient of the mean loss
        over the whole batch, whatever the shard sizes; ``"local_mean"``: each
        process's mean over its own shard, as a script written for one process
        computes it (NaN on an empty shard, whose process then contributes no
        gradient: the step is silently wrong).

    Returns
    -------
    dict of str to dict
        For each of ``layers``, as :func:`single_process_train`, with this
        process's ``logits`` (its shard), ``losses`` (its term of the loss) and
        ``shard_means`` (its mean loss, NaN for an empty shard).
    """
    from torch.nn.parallel import DistributedDataParallel

    from .models import mlp

    shard_sizes = _sizes(shard_sizes, "shard_sizes", X.shape[1], smallest=0)
    if len(shard_sizes) != world_size:
        raise ValueError(f"shard_sizes must hold {world_size} sizes summing to m = {X.shape[1]}; "
                         f"got {shard_sizes}")
    if isinstance(layers, str) or any(layer not in ("sync", "local") for layer in layers):
        raise ValueError(f"layers must be a sequence of 'sync' and 'local'; got {layers!r}")
    if loss == "global":
        loss_of = lambda per_example: per_example.sum() * world_size / X.shape[1]  # noqa: E731
    elif loss == "local_mean":
        loss_of = lambda per_example: per_example.mean()  # noqa: E731
    else:
        raise ValueError(f"loss must be 'global' or 'local_mean'; got {loss!r}")
    start = sum(shard_sizes[:rank])
    shard = slice(start, start + shard_sizes[rank])
    results = {}
    for layer in layers:
        model = mlp(seed=seed).double()
        if layer == "sync":
            model = convert_sync_batch_norm(model)
        results[layer] = _train(DistributedDataParallel(model), X[:, shard], y[:, shard], lr, loss_of)
    return results


def ddp_train_many(rank: int, world_size: int, runs: Sequence[dict[str, Any]]) -> list[dict[str, dict[str, Any]]]:
    """Worker: several :func:`ddp_train` runs, one after the other, in one process group.

    Starting P processes costs seconds (each imports torch); runs that share P can
    share them. Each run builds its own model and ``DistributedDataParallel``
    wrapper, so the results are those of separate launches.

    Parameters
    ----------
    rank, world_size : int
        Passed by :func:`launch`.
    runs : sequence of dict
        The keyword arguments of each :func:`ddp_train` call (``X``, ``y``,
        ``shard_sizes`` and any of ``lr``, ``seed``, ``layers``, ``loss``).

    Returns
    -------
    list
        This process's result of each run, in order.
    """
    if isinstance(runs, dict) or not all(isinstance(run, dict) for run in runs):
        raise ValueError(f"runs must be a sequence of dicts of ddp_train arguments; got {type(runs).__name__}")
    return [ddp_train(rank, world_size, **run) for run in runs]


# --------------------------------------------------------------------------- the launcher
def _run_rank(rank, fn, world_size, port, args, results, timeout):
    """Body of each started process: join the group, run fn, send back its result."""
    torch.set_num_threads(1)
    store = dist.TCPStore(_HOST, port, world_size, is_master=False,
                          timeout=timedelta(seconds=timeout))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout))
    try:
        value = fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()
    results.put((rank, pickle.dumps(value)))


def launch(
    fn: Callable[..., Any],
    world_size: int,
    args: Sequence[Any] = (),
    timeout: float = 60.0,
    port: int | None = None,
    start_method: str = "forkserver",
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` new processes.

    Each process joins a ``gloo`` process group before calling ``fn``; the call
    returns when all have finished. The rendezvous is a ``TCPStore`` that this
    process serves on 127.0.0.1 -- on a free port the operating system picks
    (bound as port 0) unless ``port`` is given -- so the new processes connect
    at once. With the default ``"forkserver"`` start method a server process
    imports torch once and each launch forks from it (a fraction of a second),
    instead of every process importing torch again as with ``"spawn"``. As with
    any start method but fork, a script that calls it must do so under
    ``if __name__ == "__main__":``, because the new processes import the script.

    Parameters
    ----------
    fn : callable
        A module-level function that the new processes can import (not a
        lambda, and not one defined in a notebook or script run as
        ``__main__``). Its return value must be picklable: move CUDA tensors to
        the CPU first.
    world_size : int
        Number of processes P, at least 1.
    args : sequence, default ()
        Extra arguments for ``fn``, pickled to every process.
    timeout : float, default 60
        Seconds after which still-running processes are terminated and
        :class:`TimeoutError` is raised; also the process group's timeout.
    port : int or None, default None
        TCP port of the rendezvous on 127.0.0.1; None picks a free one.
    start_method : {"forkserver", "spawn"}, default "forkserver"

    Returns
    -------
    list
        ``[fn(0, P, *args), ..., fn(P - 1, P, *args)]``, in rank order.

    Raises
    ------
    ValueError, TypeError
        For an invalid ``world_size``, ``timeout``, ``port``, ``start_method`` or ``fn``.
    RuntimeError
        If ``port`` is already in use on 127.0.0.1.
    TimeoutError
        If the processes have not all finished after ``timeout`` seconds.
    Exception
        ``torch.multiprocessing.ProcessRaisedException`` if ``fn`` raised in a
        process (its traceback is in the message).
    """
    import torch.multiprocessing as tmp

    if not callable(fn):
        raise TypeError(f"fn must be a function; got {type(fn).__name__}")
    if getattr(fn, "__module__", None) == "__main__" or "<lambda>" in getattr(fn, "__qualname__", ""):
        raise ValueError(
            f"fn must be a module-level function the new processes can import; "
            f"{getattr(fn, '__qualname__', fn)!r} is defined in __main__ (a notebook or script) "
            f"or is a lambda: move it into a module"
        )
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int; got {world_size!r}")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds; got {timeout!r}")
    if start_method not in ("forkserver", "spawn"):
        raise ValueError(f"start_method must be 'forkserver' or 'spawn'; got {start_method!r}")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                             or not 0 < port < 65536):
        raise ValueError(f"port must be an int in [1, 65535] or None; got {port!r}")
    try:
        store = dist.TCPStore(_HOST, port or 0, None, is_master=True, wait_for_workers=False,
                              timeout=timedelta(seconds=timeout))
    except RuntimeError as err:
        raise RuntimeError(
            f"cannot serve the rendezvous on {_HOST}:{port}: the port is already in use; "
            f"pass port=None to let launch pick a free one"
        ) from err
    if start_method == "forkserver":
        multiprocessing.set_forkserver_preload(["torch", "torch.distributed", __name__])
    results = multiprocessing.get_context(start_method).Queue()
    context = tmp.start_processes(
        _run_rank, args=(fn, world_size, store.port, tuple(args), results, float(timeout)),
        nprocs=world_size, join=False, start_method=start_method,
    )
    deadline = time.monotonic() + timeout
    received: dict[int, Any] = {}

    def drain(wait: float) -> None:
        try:
            while len(received) < world_size:
                rank, blob = results.get(timeout=wait)
                received[rank] = pickle.loads(blob)
        except queue_module.Empty:
            pass

    while True:
        drain(0.01)
        if context.join(timeout=0.05):
            break
        if time.monotonic() > deadline:
            running = [r for r, p in enumerate(context.processes) if p.is_alive()]
            for p in context.processes:
                if p.is_alive():
                    p.terminate()
            for p in context.processes:
                p.join(5)
            raise TimeoutError(
                f"launch timed out after {timeout:g} s with rank(s) {running} still running "
                f"(a process may be waiting in a collective for a peer that failed)"
            )
    drain(5.0)
    missing = sorted(set(range(world_size)) - set(received))
    if missing:
        raise RuntimeError(f"rank(s) {missing} finished without returning a result")
    return [received[r] for r in range(world_size)]


# --------------------------------------------------------------------------- workers
class ShardResult(NamedTuple):
    """What one process returns from :func:`shard_forward_backward` (NumPy arrays).

    Attributes
    ----------
    y, dx : ndarray, shape of the process's shard
        This process's shard of the output and of the input gradient, last step.
    dgamma, dbeta : ndarray, shape (C,)
        This process's local parameter gradients, last step.
    running_mean, running_var : ndarray, shape (C,)
        The layer's buffers after all steps.
    seconds_per_step : float
        Median wall time of one forward + backward pass over the steps after the
        first (which warms up), or of the only step.
    """

    y: np.ndarray
    dx: np.ndarray
    dgamma: np.ndarray
    dbeta: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray
    seconds_per_step: float


_LOCAL_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def shard_forward_backward(
    rank: int,
    world_size: int,
    xs: torch.Tensor,
    dys: torch.Tensor,
    layer: str = "sync",
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    device: str = "cpu",
) -> ShardResult:
    """Worker: T training steps of one BN layer on this process's shard of each batch.

    Batch t is ``xs[t]`` of shape (m, C, ...); process ``rank`` takes its
    contiguous shard ``torch.tensor_split(xs[t], world_size)[rank]`` (m_p
    examples), runs the layer forward, then backward with the matching shard of
    ``dys[t]``. The weights are not updated between steps.

    Parameters
    ----------
    rank, world_size : int
        Passed by :func:`launch`.
    xs, dys : Tensor, shape (T, m, C, ...)
        Inputs and upstream gradients of T steps.
    layer : {"sync", "local", "torch_sync"}, default "sync"
        ``"sync"``: :class:`SyncBatchNorm` (global statistics); ``"local"``:
        ``torch.nn.BatchNorm*d`` on the shard alone (per-process statistics);
        ``"torch_sync"``: ``torch.nn.SyncBatchNorm`` (needs a GPU).
    momentum, eps : as for the layers.
    device : str, default "cpu"

    Returns
    -------
    ShardResult
    """
    C = xs.shape[2]
    if layer == "sync":
        bn = SyncBatchNorm(C, eps=eps, momentum=momentum)
    elif layer == "local":
        bn = _LOCAL_BN[xs.dim() - 1](C, eps=eps, momentum=momentum)
    elif layer == "torch_sync":
        bn = nn.SyncBatchNorm(C, eps=eps, momentum=momentum)
    else:
        raise ValueError(f"layer must be 'sync', 'local' or 'torch_sync'; got {layer!r}")
    bn = bn.to(device).train()
    shard = torch.tensor_split(torch.arange(xs.shape[1]), world_size)[rank]
    times = []
    for t in range(xs.shape[0]):
        x = xs[t, shard].to(device).requires_grad_(True)
        dy = dys[t, shard].to(device)
        bn.zero_grad()
        dist.barrier()                                   # start every step together
        start = time.perf_counter()
        y = bn(x)
        (y * dy).sum().backward()                        # = y.backward(dy), whose first call
        times.append(time.perf_counter() - start)        # imports sympy (about a second)

    def cpu(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy()

    steady = times[1:] or times                          # the first step warms up
    return ShardResult(cpu(y), cpu(x.grad), cpu(bn.weight.grad), cpu(bn.bias.grad),
                       cpu(bn.running_mean), cpu(bn.running_var), float(np.median(steady)))


def torch_sync_batch_norm_error(rank: int, world_size: int) -> str:
    """Worker: the error ``torch.nn.SyncBatchNorm`` raises on a CPU tensor ('' if none)."""
    try:
        nn.SyncBatchNorm(3).train()(torch.ones(4, 3))
    except ValueError as err:
        return str(err)
    return ""


def sync_and_local(
    rank: int, world_size: int, xs: torch.Tensor, dys: torch.Tensor, momentum: float | None = 0.1
) -> tuple[ShardResult, ShardResult]:
    """Worker: :func:`shard_forward_backward` with ``layer="sync"``, then ``"local"``."""
    return (shard_forward_backward(rank, world_size, xs, dys, "sync", momentum),
            shard_forward_backward(rank, world_size, xs, dys, "local", momentum))
