"""bnlib.grid: the tracking experiment across settings, as one table."""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest
import torch

import bnlib
import bnlib.grid
from bnlib.data import load_digits_splits
from bnlib.grid import MODELS, Setting, column, run_grid
from bnlib.models import mlp
from bnlib.tracking import STALENESS, train_and_track

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)
DATA = load_digits_splits(seed=0)
SETTINGS = [
    {"steps": 12, "checkpoints": 6},
    Setting(model="small_cnn", lr=0.1, lr_schedule="cosine", momentum=None, batch_size=16, steps=8,
            checkpoints=(1, 8)),
]
METHODS = ("ema", "debiased_ema", "population:2", "population", "batch")


@pytest.fixture(scope="module")
def table():
    return run_grid(SETTINGS, [0, 1], DATA, methods=METHODS)


def without_times(rows):
    """The rows without wall times, NaN (the window movement of momentum=None) as a comparable string."""
    nan_free = lambda v: "nan" if isinstance(v, float) and np.isnan(v) else v
    return [{k: nan_free(v) for k, v in row.items() if k != "seconds"} for row in rows]


def test_every_combination_has_one_row(table):
    keys = [(r["setting"], r["seed"], r["step"], r["method"]) for r in table]
    expected = [(0, seed, step, m) for seed, step, m in itertools.product([0, 1], [6, 12], METHODS)]
    expected += [(1, seed, step, m) for seed, step, m in itertools.product([0, 1], [1, 8], METHODS)]
    assert keys == expected


def test_rows_carry_the_setting_and_the_metrics(table):
    row = next(r for r in table if r["setting"] == 1)
    assert {k: row[k] for k in ("model", "lr", "lr_schedule", "momentum", "batch_size", "steps")} == dict(
        model="small_cnn", lr=0.1, lr_schedule="cosine", momentum=None, batch_size=16, steps=8)
    assert set(row) == {"setting", "model", "lr", "lr_schedule", "momentum", "batch_size", "steps", "seed",
                        "step", "learning_rate", "train_loss", "movement", "window_movement", *STALENESS, "method", "accuracy",
                        "loss", "disagreement", "forward_examples", "seconds"}
    assert column(table, "lr_schedule", setting=0)[0] == "constant"


def test_the_table_is_reproducible(table):
    assert without_times(run_grid(SETTINGS, [0, 1], DATA, methods=METHODS)) == without_times(table)
    assert without_times(run_grid(SETTINGS, [2, 1], DATA, methods=METHODS)) != without_times(table)


def test_rows_are_those_of_train_and_track(table):
    history = train_and_track(mlp(seed=1), DATA.train, DATA.val, steps=12, eval_every=6, val_batch_sizes=(),
                              seed=1, methods=METHODS)
    for method in METHODS:
        assert list(column(table, "accuracy", setting=0, seed=1, method=method)) == history.accuracy[method]
    assert list(column(table, "mean_distance", setting=0, seed=1, method="ema")) == history.staleness[
        "mean_distance"]


def test_reference_and_costs_in_the_table(table):
    assert set(column(table, "disagreement", method="population")) == {0.0}
    m = column(table, "batch_size", method="population:2")
    assert np.array_equal(column(table, "forward_examples", method="population:2"), 2 * m)
    assert set(column(table, "forward_examples", method="ema")) == {0}
    assert set(column(table, "forward_examples", setting=1, method="population")) == {
        len(DATA.train.y) // 16 * 16}


def test_cosine_setting_ends_near_zero_learning_rate(table):
    assert column(table, "learning_rate", setting=1, step=8, method="ema") == pytest.approx(
        0.1 * 0.5 * (1 + np.cos(np.pi * 7 / 8)))
    assert set(column(table, "learning_rate", setting=0)) == {0.05}


def test_column_filters_and_names_unknown_columns(table):
    assert len(column(table, "accuracy")) == len(table)
    assert len(column(table, "accuracy", method="ema", seed=0)) == 4
    with pytest.raises(ValueError, match="'acc' is not a column"):
        column(table, "acc")
    with pytest.raises(ValueError, match="'alpha' is not a column"):
        column(table, "accuracy", alpha=0.1)


@pytest.mark.parametrize("kwargs, name", [
    (dict(settings=[]), "settings"),
    (dict(settings={"steps": 2}), "settings"),
    (dict(settings=[{"steps": 2}, {"alpha": 0.1}]), r"settings\[1\] has unknown keys \['alpha'\]"),
    (dict(settings=["mlp"]), r"settings\[0\]"),
    (dict(settings=[{"model": "resnet"}]), r"settings\[0\]\.model"),
    (dict(settings=[{"lr": 0}]), r"settings\[0\]\.lr"),
    (dict(settings=[{"momentum": 0.0}]), r"settings\[0\]\.momentum"),
    (dict(settings=[{"momentum": 1.5}]), r"settings\[0\]\.momentum"),
    (dict(settings=[{"batch_size": 1}]), r"settings\[0\]\.batch_size"),
    (dict(settings=[{"steps": 0}]), r"settings\[0\]\.steps"),
    (dict(settings=[{"steps": 5, "checkpoints": (6,)}]), r"settings\[0\]\.checkpoints"),
    (dict(settings=[{"lr_schedule": "step"}]), r"settings\[0\]\.lr_schedule"),
    (dict(seeds=[]), "seeds"), (dict(seeds=[0, 0]), "seeds"), (dict(seeds=[0.5]), "seeds"),
    (dict(data=(DATA.train, DATA.val)), "data"),
    (dict(methods=("ema", "running")), "methods"),
    (dict(methods=("population:40",)), "methods"),
    (dict(reference="ema"), "reference"),
])
def test_bad_arguments_are_named_before_any_training(kwargs, name):
    args = dict(settings=[{"steps": 2}], seeds=[0], data=DATA) | kwargs
    with pytest.raises(ValueError, match=name):
        run_grid(**args)


def test_models_and_lazy_export():
    assert set(MODELS) == {"mlp", "small_cnn"}
    assert bnlib.run_grid is run_grid


def test_docstring_examples_run():
    results = doctest.testmod(bnlib.grid)
    assert results.attempted >= 2 and results.failed == 0


def schedule_half(step):
    """A module-level schedule, so that worker processes can unpickle it."""
    return 0.5


def test_two_workers_give_the_same_table(table):
    settings = SETTINGS + [{"steps": 6, "checkpoints": 3, "lr_schedule": schedule_half}]
    alone = run_grid(settings, [0, 1], DATA, methods=METHODS)
    assert without_times(run_grid(settings, [0, 1], DATA, methods=METHODS, workers=2)) == without_times(alone)
    assert without_times(alone[:len(table)]) == without_times(table)


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_workers_must_be_a_positive_int(workers):
    with pytest.raises(ValueError, match="workers"):
        run_grid(SETTINGS[:1], [0], DATA, workers=workers)


def test_a_lambda_schedule_cannot_go_to_workers():
    with pytest.raises(ValueError, match="picklable"):
        run_grid([{"steps": 2, "checkpoints": 2, "lr_schedule": lambda step: 1.0}], [0], DATA, workers=2)
