"""Algorithm 2 for a torch model: re-estimate every BN layer's population statistics.

Ioffe & Szegedy (2015), Algorithm 2, steps 8-11: with the weights frozen, process
many training mini-batches and set E[x] to the average of the batch means and
Var[x] to m/(m-1) times the average of the batch (biased) variances. In PyTorch
terms: reset the running statistics and run the batches in training mode with
``momentum=None`` (a cumulative average of the unbiased batch variances), which is
what ``torch.optim.swa_utils.update_bn`` does: the estimator "unbiased_mean" of
:func:`~bnlib.population.population_statistics`. Wu & Johnson (2021) call this recomputation
PreciseBN (fvcore's implementation pools the variance instead, the estimator
"pooled"). Importing this module imports torch.

Algorithm 2 can be read two ways. ``order="together"`` (the default, equal to
``update_bn``) runs every BN layer in training mode at once, so a later layer's
statistics are those of its inputs *as training mode makes them*, normalised by
the earlier layers' batch statistics. ``order="layerwise"`` follows the
algorithm's loop over layers (steps 8-12): layer k's statistics are computed
with layers 1..k-1 already in inference mode with their new population
statistics, so they are those of its inputs *as inference will see them*.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sized
from typing import Any

import torch
from torch import nn

from .models import batch_norm_layers

__all__ = ["ORDERS", "recalibrate"]

#: The two readings of Algorithm 2 that :func:`recalibrate` offers.
ORDERS = ("together", "layerwise")


def _call_order(model: nn.Module, layers: list, batch: Any) -> list:
    """``layers`` in the order one forward pass calls them (uncalled ones last)."""
    calls: list = []
    hooks = [bn.register_forward_pre_hook(lambda module, args: calls.append(module)) for bn in layers]
    try:
        model(batch[0] if isinstance(batch, (list, tuple)) else batch)
    finally:
        for hook in hooks:
            hook.remove()
    if len(set(map(id, calls))) < len(calls):
        raise ValueError("order='layerwise' needs every BN layer called once per forward pass; "
                         "this model calls one of them more than once")
    return calls + [bn for bn in layers if all(bn is not c for c in calls)]


def recalibrate(
    model: nn.Module,
    batches: Iterable[Any],
    num_batches: int | None = None,
    progress: bool = False,
    order: str = "together",
) -> int:
    """Replace every BN layer's running statistics by population statistics.

    Parameters
    ----------
    model : torch.nn.Module
        Any model with ``nn.BatchNorm*d`` layers. Its weights are not changed and
        no gradients are computed; every submodule is left in the mode
        (train/eval) it was in.
    batches : iterable
        Training mini-batches: tensors of shape (m, ...) or tuples/lists whose
        first element is the input tensor (as a ``DataLoader`` yields).
    num_batches : int or None, default None
        Use at most this many batches (all of them if None).
    progress : bool, default False
        Show a progress bar (tqdm) for long runs.
    order : {"together", "layerwise"}, default "together"
        ``"together"``: one pass, every BN layer in training mode, exactly
        ``torch.optim.swa_utils.update_bn`` (every module in training mode).
        ``"layerwise"``: one pass per BN layer, in the order a forward pass calls
        them (found with hooks on the first batch); while layer k's statistics are
        gathered, every other module is in inference mode (dropout off), the BN
        layers before it with their new population statistics and those after it
        with reset ones, which do not affect layer k's inputs. Each BN layer must
        be called once per forward pass. The batches are read once per layer
        (plus once to find the order), so a one-shot iterator is first stored as
        a list and a model with L BN layers costs about L times one pass.

    Returns
    -------
    int
        The number of batches used. After the call each BN layer's
        ``running_mean`` is the average of the batch means and ``running_var``
        the average of the unbiased batch variances over those batches
        (eq-inference-pop-mean, eq-inference-pop-var), and
        ``num_batches_tracked`` equals that number. No batch beyond
        ``num_batches`` is read from ``batches``.

    Raises
    ------
    TypeError
        If ``model`` is not a ``torch.nn.Module``.
    ValueError
        If ``num_batches`` is not a positive int, ``order`` is not one of the
        two readings, no batch was given, or (layerwise) a BN layer is called more
        than once per forward pass. If a batch raises, the running
        statistics are restored before re-raising.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if num_batches is not None and (isinstance(num_batches, bool)
                                    or not isinstance(num_batches, int) or num_batches < 1):
        raise ValueError(f"num_batches must be a positive int or None; got {num_batches!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}; got {order!r}")
    layers = [bn for bn in batch_norm_layers(model) if bn.track_running_stats]
    if not layers:
        return 0
    total = len(batches) if isinstance(batches, Sized) else None
    if num_batches is not None:
        total = num_batches if total is None else min(total, num_batches)
        batches = itertools.islice(batches, num_batches)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=total, desc="recalibrating BN", leave=False)
    modes = [(module, module.training) for module in model.modules()]
    momenta = [bn.momentum for bn in layers]
    saved = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
             for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None                      # cumulative average: alpha_t = 1/t
    # Each pass: the layers in `gather` average their batch statistics (training mode),
    # every other BN layer normalises with its running statistics (inference mode).
    if order == "layerwise":
        batches = list(batches)
    used = 0
    try:
        with torch.no_grad():
            if order == "together":
                model.train()                               # as update_bn: dropout etc. train too
                passes = [layers]
            else:
                model.eval()                                # every module as inference computes it
                if not batches:
                    raise ValueError("batches must contain at least one mini-batch")
                passes = [[bn] for bn in _call_order(model, layers, batches[0])]
            for gather in passes:
                for bn in layers:
                    bn.train(any(bn is g for g in gather))
                used = 0
                for batch in batches:
                    x = batch[0] if isinstance(batch, (list, tuple)) else batch
                    model(x)
                    used += 1
                if used == 0:
                    raise ValueError("batches must contain at least one mini-batch")
    except BaseException:
        for bn, (mean, var, count) in zip(layers, saved):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(count)
        raise
    finally:
        for bn, momentum in zip(layers, momenta):
            bn.momentum = momentum
        for module, mode in modes:
            module.training = mode
    return used
