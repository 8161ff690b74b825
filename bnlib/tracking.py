"""Evaluate a BN model with each kind of statistics, and track them while it trains.

Ioffe & Szegedy (2015), Section 3.1: "Using moving averages instead, we can track
the accuracy of a model as it trains." A model with Batch Normalization can be
evaluated with three kinds of statistics, and :func:`evaluate` computes each of
them (and a fourth, the running statistics debiased) without changing the model:

- ``"batch"``: each layer normalises with the statistics of the *evaluation*
  mini-batch itself (training-mode BN; what you get when you forget
  ``model.eval()``). The result depends on the batch size and composition.
- ``"ema"``: the running (moving-average) statistics the layers updated as a side
  effect of training, on training mini-batches (``model.eval()``). Free.
- ``"population"``: statistics re-estimated with the current, frozen weights over
  training mini-batches (Algorithm 2, :func:`~bnlib.recalibration.recalibrate`), at the price of
  an extra pass.
- ``"debiased_ema"``: the running statistics with their start-up bias removed
  (:func:`debiased_running_statistics`, eq. ``eq-ema-debiased``). Free.

:func:`train_and_track` trains a model with SGD and records the three on the
validation data at checkpoints; asked for ``methods``, it also records each
method's predictions against a reference, its cost in forward passes, and how
stale the running statistics are (:func:`staleness`). Importing this module
imports torch.
"""


from __future__ import annotations

import copy
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import iterate_minibatches
from .models import batch_norm_layers
from .recalibration import recalibrate

__all__ = [
    "EvalResult",
    "History",
    "STALENESS",
    "STATS",
    "debiased_running_statistics",
    "disagreement",
    "evaluate",
    "staleness",
    "train_and_track",
]

#: The kinds of statistics :func:`evaluate` can normalise with.
STATS = ("ema", "batch", "population", "debiased_ema")

#: The summaries :func:`staleness` returns.
STALENESS = ("mean_distance", "log_var_ratio", "abs_log_var_ratio")


@dataclass(frozen=True)
class EvalResult:
    """Accuracy (fraction in [0, 1]) and mean cross-entropy loss over ``num_examples``.

    ``predictions``, shape (num_examples,) int64, is the predicted class (argmax
    of the logits) of every example, in the order of the evaluation batches. It
    does not take part in ``==``, which compares the three numbers.
    """

    accuracy: float
    loss: float
    num_examples: int
    predictions: np.ndarray | None = field(default=None, compare=False, repr=False)


def _as_tensor(a: Any) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))


def _with_running_statistics(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [bn for bn in batch_norm_layers(model) if bn.running_mean is not None]


def _snapshot(model: nn.Module) -> tuple[list[tuple[bool, nn.Module]], list[dict]]:
    """Every module's mode and every BN layer's buffers and momentum, to restore later."""
    modes = [(m.training, m) for m in model.modules()]
    bns = [{"layer": bn, "momentum": bn.momentum,
            "buffers": {k: b.clone() for k, b in bn.named_buffers(recurse=False)}}
           for bn in batch_norm_layers(model)]
    return modes, bns


def _restore(snapshot: tuple[list[tuple[bool, nn.Module]], list[dict]]) -> None:
    modes, bns = snapshot
    for training, m in modes:
        m.training = training
    for saved in bns:
        bn = saved["layer"]
        bn.momentum = saved["momentum"]
        for k, b in bn.named_buffers(recurse=False):
            b.copy_(saved["buffers"][k])


def debiased_running_statistics(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A BN layer's running mean and variance with their start-up bias removed (eq-ema-debiased).

    After t = ``num_batches_tracked`` updates with momentum alpha, a running
    statistic is r_t = (1 - alpha)^t s_0 plus the batch statistics weighted by
    alpha (1 - alpha)^k, weights that sum to 1 - (1 - alpha)^t; PyTorch starts
    from s_0 = 0 for ``running_mean`` and s_0 = 1 for ``running_var``. Removing
    the initial value's share and renormalising the weights,

    .. math::

        \\hat r_t = \\frac{r_t - (1-\\alpha)^t s_0}{1 - (1-\\alpha)^t},

    gives :func:`bnlib.moving_average.debiased_ema` of the batch statistics.
    With ``momentum=None`` (the cumulative average, which keeps nothing of the
    initial value) the running statistics are returned unchanged.

    The formula holds only for buffers built by one uninterrupted moving average
    with the layer's current momentum from PyTorch's starting values: not after
    :func:`~bnlib.recalibration.recalibrate` or ``update_bn`` (which leave
    ``num_batches_tracked`` counting the recalibration batches), after loading
    other statistics, or after a change of momentum. Where that shows (a
    negative or non-finite debiased variance) it raises; a change that leaves
    the variance positive cannot be detected.

    Parameters
    ----------
    layer : torch.nn.BatchNorm1d, BatchNorm2d or BatchNorm3d
        A layer with running statistics (``track_running_stats=True``), each of
        shape (C,).

    Returns
    -------
    mean, var : torch.Tensor, shape (C,)
        New tensors in the dtype of the buffers (computed in float64); the
        layer is not changed.

    Raises
    ------
    ValueError
        If ``layer`` is not a BN layer with running statistics, if its momentum
        is 0 (the average never gathers weight), if its
        ``num_batches_tracked`` is 0 (no training step yet, nothing to debias),
        or if a debiased variance is negative or not finite (the buffers are not
        one moving average from the starting values, see above).

    Examples
    --------
    >>> import torch
    >>> bn = torch.nn.BatchNorm1d(1, momentum=0.5)
    >>> _ = bn(torch.tensor([[1.0], [3.0]]))           # batch mean 2, unbiased variance 2
    >>> bn.running_mean, debiased_running_statistics(bn)[0]
    (tensor([1.]), tensor([2.]))
    """
    if not isinstance(layer, nn.modules.batchnorm._BatchNorm) or layer.running_mean is None:
        raise ValueError(f"layer must be a BN layer with running statistics; got {type(layer).__name__}")
    t = int(layer.num_batches_tracked)
    if t == 0:
        raise ValueError("layer.num_batches_tracked is 0: the running statistics have seen no "
                         "training batch, so there is no start-up bias to remove")
    mean, var = layer.running_mean.double(), layer.running_var.double()
    if layer.momentum is not None:
        if not 0 < layer.momentum <= 1:
            raise ValueError(f"layer.momentum must be in (0, 1] or None to debias; got {layer.momentum!r}")
        initial_weight = (1.0 - layer.momentum) ** t
        mean = mean / (1.0 - initial_weight)
        var = (var - initial_weight) / (1.0 - initial_weight)
        if not torch.isfinite(var).all() or (var < 0).any():
            raise ValueError(
                "the debiased running variance of layer is negative or not finite: its running "
                "statistics are not one uninterrupted moving average with momentum "
                f"{layer.momentum} from PyTorch's starting values 0 and 1 (e.g. they were "
                "recalibrated, loaded, or the momentum changed)")
    return mean.to(layer.running_mean.dtype), var.to(layer.running_var.dtype)


def evaluate(
    model: nn.Module,
    batches: Iterable[Any],
    stats: str = "ema",
    recalibration_batches: Iterable[Any] | None = None,
    num_recalibration_batches: int | None = None,
) -> EvalResult:
    """Accuracy and mean cross-entropy of ``model`` on ``batches``, with the chosen BN statistics.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier returning logits of shape (n, num_classes).
    batches : iterable of (inputs, labels), or one (inputs, labels) pair
        The evaluation data (usually the validation set), as pairs of tensors or
        arrays: inputs of shape (n, ...) float32, labels of shape (n,) int64. A
        single pair (such as a ``Split`` of :func:`bnlib.data.load_digits_splits`)
        is one batch.
        With ``stats="ema"``, ``"debiased_ema"`` or ``"population"`` the
        batching does not change the result; with ``stats="batch"`` it does, and
        every batch needs n >= 2.
    stats : {"ema", "batch", "population", "debiased_ema"}, default "ema"
        Which statistics every BN layer normalises with:
        ``"ema"`` the running statistics (inference mode, ``model.eval()``);
        ``"batch"`` those of each evaluation batch (training-mode BN, every other
        module in inference mode);
        ``"population"`` statistics re-estimated over ``recalibration_batches``
        with the current weights (Algorithm 2, eq. ``eq-track-population``), then
        inference mode;
        ``"debiased_ema"`` the running statistics with their start-up bias
        removed (:func:`debiased_running_statistics`), then inference mode.
    recalibration_batches : iterable, optional
        Training mini-batches for ``stats="population"`` (inputs, or tuples whose
        first element is the input); required for it, ignored otherwise.
    num_recalibration_batches : int, optional
        Use at most this many of ``recalibration_batches`` (all if None).

    Returns
    -------
    EvalResult
        ``accuracy`` in [0, 1], ``loss`` the cross-entropy averaged over all
        examples, ``num_examples``, and ``predictions`` of shape (n,), the
        predicted classes in the order of ``batches``.

    Raises
    ------
    ValueError
        If ``stats`` is not one of ``STATS``; if ``stats="population"`` and no
        ``recalibration_batches`` are given; if ``stats="debiased_ema"`` and a
        BN layer has tracked no batch or has momentum 0; if ``batches`` is
        empty; if ``stats="batch"`` and a batch has fewer than 2 examples.

    Notes
    -----
    The model is left exactly as it was: every module's train/eval mode, every BN
    layer's running statistics, ``num_batches_tracked`` and momentum are restored,
    also when an exception is raised. No gradients are computed.

    Examples
    --------
    >>> from bnlib.data import load_digits_splits
    >>> from bnlib.models import mlp
    >>> data = load_digits_splits()
    >>> result = evaluate(mlp(), data.val, "ema")
    >>> result.num_examples, result.predictions.shape
    (359, (359,))
    """
    if stats not in STATS:
        raise ValueError(f"stats must be one of {STATS}; got {stats!r}")
    if stats == "population" and recalibration_batches is None:
        raise ValueError("recalibration_batches must be given when stats='population'")
    if isinstance(batches, tuple) and len(batches) == 2 and all(
            isinstance(a, (np.ndarray, torch.Tensor)) for a in batches):
        batches = [batches]
    snapshot = _snapshot(model)
    try:
        if stats == "population":
            recalibrate(model, recalibration_batches, num_batches=num_recalibration_batches)
        elif stats == "debiased_ema":
            for bn, (mean, var) in [(bn, debiased_running_statistics(bn))
                                    for bn in _with_running_statistics(model)]:
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
        model.eval()
        if stats == "batch":
            for bn in batch_norm_layers(model):
                bn.train()
        correct, total_loss, n, predictions = 0, 0.0, 0, []
        with torch.no_grad():
            for x, y in batches:
                x, y = _as_tensor(x), _as_tensor(y)
                if stats == "batch" and len(x) < 2:
                    raise ValueError(
                        f"every batch must hold at least 2 examples when stats='batch'; got {len(x)}")
                logits = model(x)
                total_loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
                predictions.append(logits.argmax(dim=1))
                correct += int((predictions[-1] == y).sum())
                n += len(y)
        if n == 0:
            raise ValueError("batches must contain at least one example")
    finally:
        _restore(snapshot)
    predicted = torch.cat(predictions).numpy()
    predicted.flags.writeable = False
    return EvalResult(accuracy=correct / n, loss=total_loss / n, num_examples=n, predictions=predicted)


def disagreement(a: EvalResult, b: EvalResult) -> float:
    """Fraction of the examples whose predicted class differs between two evaluations.

    Two evaluations with the same accuracy can still disagree on which examples
    they get right; this counts the examples they classify differently.

    Parameters
    ----------
    a, b : EvalResult
        Two results of :func:`evaluate` on the same examples in the same order,
        ``predictions`` of shape (n,) each.

    Returns
    -------
    float
        In [0, 1]; 0 when every prediction agrees.

    Raises
    ------
    ValueError
        If either result has no predictions, or they are of different lengths.

    Examples
    --------
    >>> import numpy as np
    >>> disagreement(EvalResult(0.5, 1.0, 4, np.array([0, 1, 2, 3])),
    ...              EvalResult(0.5, 1.0, 4, np.array([0, 1, 2, 0])))
    0.25
    """
    if a.predictions is None or b.predictions is None:
        raise ValueError("a and b must both hold predictions (as evaluate returns them)")
    if len(a.predictions) != len(b.predictions):
        raise ValueError(f"a and b must evaluate the same examples; got {len(a.predictions)} "
                         f"and {len(b.predictions)} predictions")
    return float(np.mean(a.predictions != b.predictions))


def _average_over_layers(per_layer: list[torch.Tensor]) -> float:
    """Mean over the channels of each layer, then over the layers (NaN without layers)."""
    return float(np.mean([v.mean().item() for v in per_layer])) if per_layer else math.nan


def staleness(model: nn.Module, population: nn.Module) -> dict[str, float]:
    """How far ``model``'s running statistics are from population statistics, in population units.

    For every BN layer and channel, with mu and sigma^2 the running statistics
    of the same layer in ``population`` (e.g. a copy of ``model`` after
    :func:`~bnlib.recalibration.recalibrate`, eq. ``eq-track-population``) and
    r_mu, r_var those of ``model`` (the moving averages, eq. ``eq-track-ema``):

    - ``"mean_distance"``: abs(r_mu - mu) / sqrt(sigma^2 + eps), the error of the
      running mean in population standard deviations, the units in which BN's
      output shifts;
    - ``"log_var_ratio"``: log(r_var / sigma^2), negative where the running
      variance is too small;
    - ``"abs_log_var_ratio"``: its absolute value, whose mean cannot cancel.

    Each is averaged over the channels of a layer, then over the layers (every
    layer counts the same).

    Parameters
    ----------
    model, population : torch.nn.Module
        Models of the same architecture; their BN layers with running
        statistics are paired in order, each with statistics of shape (C,).

    Returns
    -------
    dict of str to float
        The keys of ``STALENESS``. All three are 0 when the running statistics
        equal the population ones, and NaN when there is no BN layer with
        running statistics.

    Raises
    ------
    ValueError
        If the two models' BN layers with running statistics differ in number
        or in channels.
    """
    layers, population_layers = _with_running_statistics(model), _with_running_statistics(population)
    if len(layers) != len(population_layers) or any(
            a.running_mean.shape != b.running_mean.shape for a, b in zip(layers, population_layers)):
        raise ValueError("model and population must have the same BN layers (number and channels)")
    return _staleness(layers, [(bn.running_mean, bn.running_var) for bn in population_layers])


def _staleness(layers: list, population: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """:func:`staleness` of ``layers`` against population (mean, var) pairs, one per layer."""
    distance, log_ratio = [], []
    for bn, (mu, var) in zip(layers, population):
        mu, var = mu.double(), var.double()
        distance.append((bn.running_mean.double() - mu).abs() / (var + bn.eps).sqrt())
        log_ratio.append(torch.log(bn.running_var.double() / var))
    return {"mean_distance": _average_over_layers(distance),
            "log_var_ratio": _average_over_layers(log_ratio),
            "abs_log_var_ratio": _average_over_layers([v.abs() for v in log_ratio])}


@dataclass
class History:
    """What :func:`train_and_track` records, one list entry per checkpoint.

    Accuracies are fractions in [0, 1] on the validation data, losses mean
    cross-entropies; ``batch_accuracy`` and ``batch_loss`` are keyed by the
    validation batch size used for ``stats="batch"``. Wall times in seconds:
    ``ema_seconds`` of evaluating with the running statistics,
    ``population_seconds`` of recalibrating (then restoring) the BN statistics and
    evaluating, ``train_seconds`` of the SGD steps since the previous checkpoint.
    ``train_loss`` is the mean training loss over those steps. ``states`` holds a
    copy of the model's ``state_dict`` per checkpoint when ``keep_states=True``.

    Always recorded, at no extra cost: ``learning_rate``, that of the step just
    taken, and ``movement``, how far the running means moved since the previous
    checkpoint (since the start of training for the first one),
    abs(r_mu(now) - r_mu(before)) / sqrt(r_var(now) + eps) averaged over the
    channels of each BN layer and then over the layers; and
    ``window_movement``, the same over the last effective window of each
    layer, round(1/alpha) steps (since the start of training if the
    checkpoint comes earlier), averaged over the layers; NaN if a layer has
    ``momentum=None`` (whose window is the whole run) or 0.

    Recorded only for ``methods``, in dicts keyed by each method's name:
    ``accuracy``, ``loss``; ``disagreement``, the fraction of validation
    examples whose predicted class differs from the ``reference`` method's;
    ``forward_examples``, the number of training examples forwarded to compute
    the statistics (0 for ``"ema"``, ``"debiased_ema"`` and ``"batch"``, k m
    for k recalibration batches of m); ``method_seconds``, the wall time of
    computing the statistics and evaluating. ``staleness``, keyed by
    ``STALENESS``, holds :func:`staleness` of the running statistics against
    the reference's population statistics.
    """

    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    ema_accuracy: list[float] = field(default_factory=list)
    ema_loss: list[float] = field(default_factory=list)
    population_accuracy: list[float] = field(default_factory=list)
    population_loss: list[float] = field(default_factory=list)
    batch_accuracy: dict[int, list[float]] = field(default_factory=dict)
    batch_loss: dict[int, list[float]] = field(default_factory=dict)
    ema_seconds: list[float] = field(default_factory=list)
    population_seconds: list[float] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    states: list[dict[str, torch.Tensor]] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    movement: list[float] = field(default_factory=list)
    window_movement: list[float] = field(default_factory=list)
    accuracy: dict[str, list[float]] = field(default_factory=dict)
    loss: dict[str, list[float]] = field(default_factory=dict)
    disagreement: dict[str, list[float]] = field(default_factory=dict)
    forward_examples: dict[str, list[int]] = field(default_factory=dict)
    method_seconds: dict[str, list[float]] = field(default_factory=dict)
    staleness: dict[str, list[float]] = field(default_factory=dict)


def _validation_batches(X: torch.Tensor, y: torch.Tensor, batch_size: int):
    """Consecutive batches of ``batch_size`` or ``batch_size + 1`` covering every example once."""
    chunks = np.array_split(np.arange(len(y)), max(len(y) // batch_size, 1))
    return [(X[idx], y[idx]) for idx in chunks]


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")


def _checkpoint_steps(eval_every: Any, steps: int, name: str = "eval_every") -> set[int]:
    """The steps at which to evaluate: every ``eval_every`` steps and the last, or the given ones."""
    if isinstance(eval_every, (int, np.integer)) and not isinstance(eval_every, bool):
        _positive_int(name, eval_every)
        return set(range(eval_every, steps + 1, eval_every)) | {steps}
    checkpoints = set(int(s) for s in eval_every)
    if not checkpoints or min(checkpoints) < 1 or max(checkpoints) > steps:
        raise ValueError(f"{name} must be a positive int or steps in 1..{steps}; got {eval_every!r}")
    return checkpoints


def _lr_multiplier(lr_schedule: Any, steps: int, name: str = "lr_schedule") -> Callable[[int], float] | None:
    """The multiplier of the learning rate at step s = 0..steps-1, or None for a constant one."""
    if lr_schedule is None or lr_schedule == "constant":
        return None
    if lr_schedule == "cosine":
        return lambda s: 0.5 * (1.0 + math.cos(math.pi * s / steps))
    if callable(lr_schedule):
        return lr_schedule
    raise ValueError(f"{name} must be None, 'constant', 'cosine' or a callable step -> multiplier; "
                     f"got {lr_schedule!r}")


def _parse_method(method: Any, name: str) -> tuple[str, int | None]:
    """("population", 4) for "population:4", ("ema", None) for "ema"; else a ValueError naming ``name``."""
    kind, colon, size = method.partition(":") if isinstance(method, str) else ("", "", "")
    if kind not in STATS or colon and (kind in ("ema", "debiased_ema") or not size.isdigit()
                                       or int(size) < (2 if kind == "batch" else 1)):
        raise ValueError(f"{name} must be 'ema', 'debiased_ema', 'population', 'population:k' (k >= 1 "
                         f"recalibration batches), 'batch' or 'batch:b' (validation batches of b >= 2); "
                         f"got {method!r}")
    return kind, int(size) if colon else None


def _check_methods(methods: Any, batch_size: int, num_train: int,
                   name: str = "methods") -> dict[str, tuple[str, int | None]]:
    """Each method's name -> (kind, size); "batch" gets size ``batch_size``, "population" None (one epoch)."""
    if isinstance(methods, str) or not isinstance(methods, Sequence) or not methods:
        raise ValueError(f"{name} must be a non-empty sequence of method names such as "
                         f"('ema', 'population'); got {methods!r}")
    if len(set(methods)) < len(methods):
        raise ValueError(f"{name} must not repeat a method; got {methods!r}")
    parsed = {}
    for method in methods:
        kind, size = _parse_method(method, name)
        if kind == "population" and size is not None and size > num_train // batch_size:
            raise ValueError(f"{name}: {method!r} asks for {size} recalibration batches of {batch_size}, "
                             f"but one epoch of train holds {num_train // batch_size}")
        parsed[method] = (kind, batch_size if kind == "batch" and size is None else size)
    return parsed


def _check_reference(reference: Any, batch_size: int, num_train: int) -> tuple[str, int | None]:
    """The reference method as (kind, size); it must be a population method."""
    key = _check_methods([reference], batch_size, num_train, "reference")[reference]
    if key[0] != "population":
        raise ValueError(f"reference must be 'population' or 'population:k'; got {reference!r}")
    return key


@dataclass
class _Measured:
    """One evaluation at a checkpoint, its wall time and cost, and (population) the statistics per BN layer."""

    result: EvalResult
    seconds: float
    forward_examples: int
    statistics: list[tuple[torch.Tensor, torch.Tensor]] | None


def _measure(model: nn.Module, kind: str, size: int | None, val: tuple, val_batches: dict,
             recalibration_batches: Callable[[], Iterable], batch_size: int) -> _Measured:
    """Evaluate ``model`` on ``val`` with one kind of statistics, leaving it unchanged."""
    start = time.perf_counter()
    statistics, forwarded = None, 0
    if kind == "population":                     # evaluate(..., "population"), keeping the statistics
        snapshot = _snapshot(model)
        try:
            forwarded = batch_size * recalibrate(model, recalibration_batches(), num_batches=size)
            statistics = [(bn.running_mean.clone(), bn.running_var.clone())
                          for bn in _with_running_statistics(model)]
            result = evaluate(model, val, "ema")
        finally:
            _restore(snapshot)
    elif kind == "batch":
        result = evaluate(model, val_batches[size], "batch")
    else:
        result = evaluate(model, val, kind)
    return _Measured(result, time.perf_counter() - start, forwarded, statistics)


def _movement(layers: list, previous_means: list[torch.Tensor]) -> float:
    """Mean abs(running mean - previous one) / sqrt(running var + eps) over channels, then layers."""
    return _average_over_layers([(bn.running_mean.double() - before.double()).abs()
                                 / (bn.running_var.double() + bn.eps).sqrt()
                                 for bn, before in zip(layers, previous_means)])


def _record(history: History, measured: dict[tuple, _Measured], population_key: tuple[str, int | None],
            methods: dict[str, tuple[str, int | None]], reference: tuple[str, int | None],
            model: nn.Module) -> None:
    """Append one checkpoint's evaluations to ``history``: the three ways, then each method."""
    ema, population = measured[("ema", None)], measured[population_key]
    history.ema_seconds.append(ema.seconds)
    history.population_seconds.append(population.seconds)
    history.ema_accuracy.append(ema.result.accuracy)
    history.ema_loss.append(ema.result.loss)
    history.population_accuracy.append(population.result.accuracy)
    history.population_loss.append(population.result.loss)
    for b in history.batch_accuracy:
        history.batch_accuracy[b].append(measured[("batch", b)].result.accuracy)
        history.batch_loss[b].append(measured[("batch", b)].result.loss)
    if not methods:
        return
    ref = measured[reference]
    for name, key in methods.items():
        m = measured[key]
        history.accuracy.setdefault(name, []).append(m.result.accuracy)
        history.loss.setdefault(name, []).append(m.result.loss)
        history.disagreement.setdefault(name, []).append(disagreement(m.result, ref.result))
        history.forward_examples.setdefault(name, []).append(m.forward_examples)
        history.method_seconds.setdefault(name, []).append(m.seconds)
    for name, value in _staleness(_with_running_statistics(model), ref.statistics).items():
        history.staleness.setdefault(name, []).append(value)


def train_and_track(
    model: nn.Module,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    steps: int,
    eval_every: int | Sequence[int] = 50,
    batch_size: int = 32,
    lr: float = 0.05,
    sgd_momentum: float = 0.9,
    val_batch_sizes: Sequence[int] = (32,),
    num_recalibration_batches: int | None = None,
    seed: int = 0,
    keep_states: bool = False,
    progress: bool = False,
    methods: Sequence[str] | None = None,
    reference: str = "population",
    lr_schedule: str | Callable[[int], float] | None = None,
) -> History:
    """Train ``model`` with SGD and record its validation accuracy three ways at checkpoints.

    Training: ``steps`` SGD steps (with momentum ``sgd_momentum``) on the
    cross-entropy of mini-batches of ``batch_size`` drawn from ``train`` without
    replacement, reshuffled every epoch with seeds derived from ``seed``. At each
    checkpoint the weights are frozen and the model is evaluated on all of
    ``val`` with :func:`evaluate` and

    - ``stats="ema"``: the running statistics the BN layers hold after the step
      (updated by every training step, eq. ``eq-track-ema``);
    - ``stats="batch"``: once per entry of ``val_batch_sizes``;
    - ``stats="population"``: recalibrated over ``num_recalibration_batches``
      fresh training mini-batches of ``batch_size`` (one epoch if None).

    The statistics always come from **training** mini-batches (during training
    for the EMA, in an extra pass for the population statistics) except with
    ``stats="batch"``, where they come from the validation batch itself; the
    accuracy is always measured on **validation** data.

    With ``methods`` it also records, for each method, the accuracy, the loss,
    the disagreement of its predictions with the ``reference`` method's, its
    wall time and its cost in forward passes, and the :func:`staleness` of the
    running statistics against the reference's population statistics (see
    :class:`History`). All population methods of a checkpoint recalibrate on
    the same fresh shuffle of the training data, "population:k" on its first k
    batches. Asking for methods changes neither the training nor the other
    records.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier with BN layers, e.g. :func:`bnlib.models.mlp`; trained in place
        and returned in training mode.
    train, val : (X, y) pairs
        Arrays (or tensors) with X of shape (n, ...) float32 and y of shape (n,)
        int64, e.g. the ``train`` and ``val`` fields of
        :func:`bnlib.data.load_digits_splits`.
    steps : int
        Number of SGD steps (mini-batches), at least 1.
    eval_every : int or sequence of int, default 50
        Evaluate every this many steps (and after the last), or at these steps
        (each in 1..steps).
    batch_size : int, default 32
        Training (and recalibration) mini-batch size m, at least 2.
    lr : float, default 0.05
        Learning rate, positive.
    sgd_momentum : float, default 0.9
        Heavy-ball momentum of SGD (unrelated to the BN momentum alpha), in [0, 1).
    val_batch_sizes : sequence of int, default (32,)
        Validation batch sizes for ``stats="batch"``, each at least 2 (empty:
        do not evaluate with batch statistics).
    num_recalibration_batches : int or None, default None
    seed : int, default 0
        Seeds the shuffles and torch's global generator; the same seed, model
        and arguments give the same history (apart from wall times).
    keep_states : bool, default False
        Store a copy of the ``state_dict`` at every checkpoint (for early stopping).
    progress : bool, default False
        Show a progress bar (tqdm).
    methods : sequence of str or None, default None
        What to track besides the three ways: ``"ema"``, ``"debiased_ema"``,
        ``"population"`` (recalibrated over one epoch of ``batch_size``
        batches), ``"population:k"`` (over k batches, at most one epoch),
        ``"batch"`` (validation batches of ``batch_size``) or ``"batch:b"``
        (of b >= 2). None: none.
    reference : str, default "population"
        The population method whose predictions the others are compared with
        and whose statistics the staleness is measured against: ``"population"``
        or ``"population:k"``; it need not be among ``methods``.
    lr_schedule : None, "constant", "cosine" or callable, default None
        The learning rate of step s = 0..steps-1 is ``lr`` times a multiplier:
        1 (None or "constant"); 0.5 (1 + cos(pi s / steps)) ("cosine": from 1
        down to nearly 0 at the last step); or ``lr_schedule(s)``, which must be
        finite and non-negative.

    Returns
    -------
    History

    Raises
    ------
    ValueError
        If an argument is out of the range stated above.
    """
    _positive_int("steps", steps)
    _positive_int("batch_size", batch_size)
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (BN needs 2 examples); got {batch_size}")
    checkpoints = _checkpoint_steps(eval_every, steps)
    if not lr > 0:
        raise ValueError(f"lr must be positive; got {lr!r}")
    if not 0 <= sgd_momentum < 1:
        raise ValueError(f"sgd_momentum must be in [0, 1); got {sgd_momentum!r}")
    if any(b < 2 for b in val_batch_sizes):
        raise ValueError(f"val_batch_sizes must be ints >= 2 (empty: skip stats='batch'); got {val_batch_sizes!r}")
    Xtr, ytr = np.asarray(train[0]), np.asarray(train[1])
    if len(Xtr) < batch_size:
        raise ValueError(f"train must hold at least batch_size = {batch_size} examples; got {len(Xtr)}")
    tracked = {} if methods is None else _check_methods(methods, batch_size, len(Xtr))
    reference_key = _check_reference(reference, batch_size, len(Xtr))
    multiplier = _lr_multiplier(lr_schedule, steps)
    Xval, yval = _as_tensor(val[0]), _as_tensor(val[1])

    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=sgd_momentum)
    population_key = ("population", num_recalibration_batches)
    needed = dict.fromkeys([("ema", None), population_key, *(("batch", b) for b in val_batch_sizes),
                            *tracked.values(), *([reference_key] if tracked else [])])
    val_batches = {size: _validation_batches(Xval, yval, size) for kind, size in needed if kind == "batch"}
    history = History(batch_accuracy={b: [] for b in val_batch_sizes},
                      batch_loss={b: [] for b in val_batch_sizes})
    layers = _with_running_statistics(model)
    previous_means = [bn.running_mean.clone() for bn in layers]
    windows = [max(1, round(1 / bn.momentum)) if bn.momentum else None for bn in layers]
    window_uses = Counter((k, max(c - w, 0)) for k, w in enumerate(windows) if w for c in checkpoints)
    window_means = {(k, 0): bn.running_mean.clone() for k, bn in enumerate(layers) if (k, 0) in window_uses}

    shuffle_rng = np.random.default_rng([seed, 0])        # one shuffle per training epoch
    recalibration_rng = np.random.default_rng([seed, 1])  # one shuffle per checkpoint

    def training_batches(shuffle: int):
        batches = iterate_minibatches(Xtr, ytr, batch_size, seed=shuffle)
        return ((torch.from_numpy(xb), torch.from_numpy(yb)) for xb, yb in batches)

    def set_learning_rate(step: int) -> None:
        factor = multiplier(step)
        if not (isinstance(factor, (int, float, np.integer, np.floating)) and 0 <= factor < math.inf):
            raise ValueError(f"lr_schedule must return a finite multiplier >= 0; got {factor!r} at step {step}")
        for group in optimizer.param_groups:
            group["lr"] = lr * factor

    def record(step: int, losses: list[float], train_seconds: float) -> None:
        history.step.append(step)
        history.train_seconds.append(train_seconds)
        history.train_loss.append(float(np.mean(losses)))
        history.learning_rate.append(optimizer.param_groups[0]["lr"])
        history.movement.append(_movement(layers, previous_means))
        per_layer = [_movement([bn], [window_means[k, max(step - w, 0)]]) if w else math.nan
                     for k, (bn, w) in enumerate(zip(layers, windows))]
        history.window_movement.append(float(np.mean(per_layer)) if per_layer else math.nan)
        for k, w in enumerate(windows):
            if w:
                start = (k, max(step - w, 0))
                window_uses[start] -= 1
                if window_uses[start] == 0:
                    del window_means[start]               # no later checkpoint needs it
        previous_means[:] = [bn.running_mean.clone() for bn in layers]
        shuffle = int(recalibration_rng.integers(2**32))
        measured = {key: _measure(model, *key, (Xval, yval), val_batches, lambda: training_batches(shuffle),
                                  batch_size) for key in needed}
        _record(history, measured, population_key, tracked, reference_key, model)
        if keep_states:
            history.states.append(copy.deepcopy(model.state_dict()))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="training", unit="step")
    model.train()
    step, losses = 0, []
    train_start = time.perf_counter()
    try:
        while step < steps:
            for xb, yb in training_batches(int(shuffle_rng.integers(2**32))):
                if multiplier is not None:
                    set_learning_rate(step)
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(xb), yb)
                loss.backward()
                optimizer.step()
                step += 1
                losses.append(loss.item())
                for k, bn in enumerate(layers):
                    if (k, step) in window_uses:
                        window_means[k, step] = bn.running_mean.clone()
                if bar is not None:
                    bar.update(1)
                if step in checkpoints:
                    record(step, losses, time.perf_counter() - train_start)
                    losses = []
                    train_start = time.perf_counter()
                    if bar is not None:
                        bar.set_postfix(ema_acc=f"{history.ema_accuracy[-1]:.3f}")
                if step == steps:
                    break
    finally:
        if bar is not None:
            bar.close()
    return history
