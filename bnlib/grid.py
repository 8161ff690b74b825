"""A tracking experiment across settings: every (setting, seed) trained and tracked, one table.

A claim about the running statistics has to hold beyond one setting: for the MLP
and the CNN, at several learning rates, momenta alpha and batch sizes m.
:func:`run_grid` trains one model per (setting, seed) with
:func:`~bnlib.tracking.train_and_track`, tracks the chosen methods at every
checkpoint, and returns one tidy table: a list of rows (dicts), one per
(setting, seed, checkpoint, method). :func:`column` reads one column of it,
filtered. Importing this module imports torch.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .models import mlp, small_cnn
from .tracking import (
    STALENESS,
    _check_methods,
    _check_reference,
    _checkpoint_steps,
    _lr_multiplier,
    _positive_int,
    train_and_track,
)

__all__ = ["Setting", "MODELS", "run_grid", "column"]

#: The models a :class:`Setting` can name, each built with its default widths.
MODELS = {"mlp": mlp, "small_cnn": small_cnn}


@dataclass(frozen=True)
class Setting:
    """One setting of the experiment: which model, and how it is trained.

    Attributes
    ----------
    model : {"mlp", "small_cnn"}, default "mlp"
        A key of ``MODELS``.
    lr : float, default 0.05
        Learning rate of SGD, positive.
    lr_schedule : None, "constant", "cosine" or callable, default None
        As in :func:`~bnlib.tracking.train_and_track` (None: constant).
    momentum : float in (0, 1] or None, default 0.1
        PyTorch momentum alpha of every BN layer (None: cumulative average).
    batch_size : int, default 32
        Mini-batch size m of training and recalibration, at least 2.
    steps : int, default 200
        Number of SGD steps.
    checkpoints : int or tuple of int, default 50
        Evaluate every this many steps (and after the last), or at these steps.
    """

    model: str = "mlp"
    lr: float = 0.05
    lr_schedule: str | Callable[[int], float] | None = None
    momentum: float | None = 0.1
    batch_size: int = 32
    steps: int = 200
    checkpoints: int | tuple[int, ...] = 50


def _as_setting(setting: Any, name: str, methods: Sequence[str], reference: str, num_train: int) -> Setting:
    """``setting`` (a Setting or a dict of its fields) checked, or a ValueError naming ``name``."""
    if isinstance(setting, dict):
        unknown = set(setting) - {f.name for f in dataclasses.fields(Setting)}
        if unknown:
            raise ValueError(f"{name} has unknown keys {sorted(unknown)}; a setting has the keys "
                             f"{[f.name for f in dataclasses.fields(Setting)]}")
        setting = Setting(**setting)
    if not isinstance(setting, Setting):
        raise ValueError(f"{name} must be a Setting or a dict; got {type(setting).__name__}")
    if setting.model not in MODELS:
        raise ValueError(f"{name}.model must be one of {sorted(MODELS)}; got {setting.model!r}")
    if isinstance(setting.lr, bool) or not isinstance(setting.lr, (int, float)) or not setting.lr > 0:
        raise ValueError(f"{name}.lr must be a positive number; got {setting.lr!r}")
    alpha = setting.momentum
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                              or not 0 < alpha <= 1):
        raise ValueError(f"{name}.momentum must be in (0, 1] or None; got {alpha!r}")
    _positive_int(f"{name}.batch_size", setting.batch_size)
    if setting.batch_size < 2 or setting.batch_size > num_train:
        raise ValueError(f"{name}.batch_size must be in 2..{num_train} (the training examples); "
                         f"got {setting.batch_size}")
    _positive_int(f"{name}.steps", setting.steps)
    _checkpoint_steps(setting.checkpoints, setting.steps, f"{name}.checkpoints")
    _lr_multiplier(setting.lr_schedule, setting.steps, f"{name}.lr_schedule")
    _check_methods(methods, setting.batch_size, num_train)
    _check_reference(reference, setting.batch_size, num_train)
    return setting


def _schedule_name(lr_schedule: Any) -> str:
    return "constant" if lr_schedule is None else getattr(lr_schedule, "__name__", str(lr_schedule))


def run_grid(
    settings: Sequence[Setting | dict],
    seeds: Sequence[int],
    data: Any,
    methods: Sequence[str] = ("ema", "debiased_ema", "population:4", "population", "batch"),
    reference: str = "population",
    sgd_momentum: float = 0.9,
    progress: bool = False,
    workers: int = 1,
) -> list[dict[str, Any]]:
    """Train and track every (setting, seed); one row per (setting, seed, checkpoint, method).

    For each setting and seed a fresh model ``MODELS[setting.model](momentum=
    setting.momentum, seed=seed)`` is trained with
    :func:`~bnlib.tracking.train_and_track` (``seed=seed``, no ``val_batch_sizes``)
    on ``data.train``, and at every checkpoint each of ``methods`` is evaluated
    on ``data.val``. The same arguments give the same table apart from the
    column ``seconds`` (wall times), on the same machine and torch build.

    Parameters
    ----------
    settings : sequence of Setting or dict
        The settings, each a :class:`Setting` or a dict of some of its fields
        (the others keep their defaults), e.g.
        ``{"model": "small_cnn", "lr": 0.2, "momentum": None}``.
    seeds : sequence of int
        Distinct seeds; each seeds the model's initial weights and the run.
    data : object with ``train`` and ``val``
        (X, y) pairs as :func:`bnlib.data.load_digits_splits` returns them: X of
        shape (n, 64) float32, y of shape (n,) int64.
    methods : sequence of str, default ("ema", "debiased_ema", "population:4", "population", "batch")
        The methods of :func:`~bnlib.tracking.train_and_track`: ``"ema"``,
        ``"debiased_ema"``, ``"population"`` (one epoch), ``"population:k"``,
        ``"batch"`` (validation batches of the setting's m), ``"batch:b"``.
    reference : str, default "population"
        The population method that disagreement and staleness are measured
        against.
    sgd_momentum : float, default 0.9
        Heavy-ball momentum of SGD in every run.
    progress : bool, default False
        Show a progress bar over the runs (tqdm).
    workers : int, default 1
        Run the (setting, seed) pairs in this many new processes, each with
        one torch thread and the calling process's choice of deterministic
        algorithms; 1 runs them here. The table is the same either way
        (apart from ``seconds``); the runs are independent, so two workers on
        two cores take about half the time, plus a few seconds to start them.
        With more than one worker a callable ``lr_schedule`` must be picklable
        (a function defined at module level, not a lambda).

    Returns
    -------
    list of dict
        ``len(settings) * len(seeds) * (checkpoints per setting) * len(methods)``
        rows, ordered by setting, seed, step, then method, each with the keys

        - ``setting`` (its index in ``settings``), ``model``, ``lr``,
          ``lr_schedule`` ("constant", "cosine" or the callable's name),
          ``momentum``, ``batch_size``, ``steps``, ``seed``;
        - ``step``, ``learning_rate`` (of that step), ``train_loss`` (mean
          since the previous checkpoint), ``movement``, ``window_movement``, and the keys of
          ``STALENESS`` (the same in every method's row of a checkpoint);
        - ``method``, ``accuracy``, ``loss``, ``disagreement`` (with the
          reference's predictions), ``forward_examples``, ``seconds``.

        :class:`~bnlib.tracking.History` defines each quantity.

    Raises
    ------
    ValueError
        If ``settings`` or ``seeds`` is empty, a seed repeats or is not an int,
        a setting has an unknown key or a value out of range (the message names
        it, e.g. ``settings[1].momentum``), ``data`` has no ``train`` and
        ``val``, or a method or the reference is unknown.

    Examples
    --------
    >>> from bnlib.data import load_digits_splits
    >>> table = run_grid([{"steps": 20, "checkpoints": 10}], seeds=[0, 1],
    ...                  data=load_digits_splits(), methods=["ema", "population"])
    >>> len(table), sorted({row["method"] for row in table})
    (8, ['ema', 'population'])
    """
    if not hasattr(data, "train") or not hasattr(data, "val"):
        raise ValueError(f"data must have train and val splits, as load_digits_splits() returns; "
                         f"got {type(data).__name__}")
    num_train = len(data.train[1])
    if isinstance(settings, (dict, Setting)) or not isinstance(settings, Sequence) or not settings:
        raise ValueError(f"settings must be a non-empty sequence of Setting or dict; got {settings!r}")
    settings = [_as_setting(s, f"settings[{i}]", methods, reference, num_train) for i, s in enumerate(settings)]
    if (not isinstance(seeds, Sequence) or not seeds or any(
            isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in seeds)
            or len(set(seeds)) < len(seeds)):
        raise ValueError(f"seeds must be a non-empty sequence of distinct ints; got {seeds!r}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be a positive int; got {workers!r}")
    train, val = (tuple(np.asarray(a) for a in data.train), tuple(np.asarray(a) for a in data.val))
    runs = [(i, s, int(seed), train, val, tuple(methods), reference, sgd_momentum)
            for i, s in enumerate(settings) for seed in seeds]
    if workers == 1:
        results = map(_run, runs)
    else:
        try:
            pickle.dumps(settings)
        except (pickle.PicklingError, AttributeError, TypeError) as error:
            raise ValueError(f"with workers > 1 every setting must be picklable (a module-level "
                             f"lr_schedule, not a lambda); {error}") from None
        pool = ProcessPoolExecutor(max_workers=int(workers), mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(torch.are_deterministic_algorithms_enabled(),))
        results = pool.map(_run, runs)
    if progress:
        from tqdm.auto import tqdm

        results = tqdm(results, total=len(runs), desc="runs", unit="run")
    try:
        return [row for rows in results for row in rows]
    finally:
        if workers > 1:
            pool.shutdown()


def _start_worker(deterministic: bool) -> None:
    """A new worker process: one torch thread, deterministic algorithms as in the calling process."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(deterministic)


def _run(args: tuple) -> list[dict[str, Any]]:
    """The rows of one (setting, seed): train and track, then one row per checkpoint and method."""
    i, s, seed, train, val, methods, reference, sgd_momentum = args
    model = MODELS[s.model](momentum=s.momentum, seed=seed)
    h = train_and_track(model, train, val, steps=s.steps, eval_every=s.checkpoints,
                        batch_size=s.batch_size, lr=s.lr, sgd_momentum=sgd_momentum,
                        val_batch_sizes=(), seed=seed, methods=methods, reference=reference,
                        lr_schedule=s.lr_schedule)
    run = {"setting": i, "model": s.model, "lr": s.lr, "lr_schedule": _schedule_name(s.lr_schedule),
           "momentum": s.momentum, "batch_size": s.batch_size, "steps": s.steps, "seed": seed}
    rows = []
    for c, step in enumerate(h.step):
        checkpoint = {"step": step, "learning_rate": h.learning_rate[c], "train_loss": h.train_loss[c],
                      "movement": h.movement[c],
                      "window_movement": h.window_movement[c], **{k: h.staleness[k][c] for k in STALENESS}}
        rows += [run | checkpoint | {
            "method": method, "accuracy": h.accuracy[method][c], "loss": h.loss[method][c],
            "disagreement": h.disagreement[method][c],
            "forward_examples": h.forward_examples[method][c], "seconds": h.method_seconds[method][c],
        } for method in methods]
    return rows


def column(rows: Sequence[dict[str, Any]], key: str, **where: Any) -> np.ndarray:
    """The values of ``key`` in the rows that match every ``where`` condition, in table order.

    Parameters
    ----------
    rows : sequence of dict
        A table such as :func:`run_grid` returns.
    key : str
        The column to read.
    **where
        Conditions ``column=value``; a row is kept if ``row[column] == value``
        for each of them.

    Returns
    -------
    ndarray, shape (n,)
        One value per matching row (n may be 0).

    Raises
    ------
    ValueError
        If ``key`` or a ``where`` column is not a column of the table.

    Examples
    --------
    >>> table = [{"method": "ema", "accuracy": 0.9}, {"method": "population", "accuracy": 0.95}]
    >>> column(table, "accuracy", method="ema")
    array([0.9])
    """
    columns = set(rows[0]) if rows else set()
    for name in (key, *where):
        if name not in columns:
            raise ValueError(f"{name!r} is not a column of rows; the columns are {sorted(columns)}")
    return np.array([row[key] for row in rows if all(row[k] == v for k, v in where.items())])
