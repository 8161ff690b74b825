"""bnlib.tracking: evaluating with three kinds of BN statistics, and the training harness."""

from __future__ import annotations

import copy
import doctest

import numpy as np
import pytest
import torch
from torch.optim.swa_utils import update_bn

import bnlib
from bnlib.data import iterate_minibatches, load_digits_splits
from bnlib.models import batch_norm_layers, mlp, small_cnn
from bnlib.moving_average import debiased_ema, ema
from bnlib.recalibration import recalibrate
from bnlib.tracking import (
    STALENESS,
    STATS,
    debiased_running_statistics,
    disagreement,
    evaluate,
    staleness,
    train_and_track,
)

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)
DATA = load_digits_splits(seed=0)


def batches(split, batch_size, seed=0):
    return [(torch.from_numpy(x), torch.from_numpy(y))
            for x, y in iterate_minibatches(split.X, split.y, batch_size, seed=seed)]


def trained(make=mlp, momentum=0.1, steps=20, seed=0):
    """A model after a few SGD steps, so that its running statistics are not the initial ones."""
    model = make(momentum=momentum, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in batches(DATA.train, 32, seed=seed)[:steps]:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def fingerprint(model):
    """Every module's mode, every buffer, and every BN layer's momentum."""
    return ([m.training for m in model.modules()],
            {k: b.clone() for k, b in model.named_buffers()},
            [bn.momentum for bn in batch_norm_layers(model)])


def assert_same(before, after):
    assert before[0] == after[0], "a module's train/eval mode changed"
    assert before[1].keys() == after[1].keys()
    for k in before[1]:
        assert torch.equal(before[1][k], after[1][k]), f"buffer {k} changed"
    assert before[2] == after[2], "a BN momentum changed"


@pytest.mark.parametrize("stats", STATS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_evaluate_leaves_mode_and_buffers_untouched(stats, training, momentum):
    model = trained(momentum=momentum)
    model.train(training)
    before = fingerprint(model)
    evaluate(model, batches(DATA.val, 32), stats, recalibration_batches=batches(DATA.train, 32, seed=1))
    assert_same(before, fingerprint(model))


def test_evaluate_leaves_model_untouched_when_it_raises():
    model = trained()
    before = fingerprint(model)
    one_example = [(torch.from_numpy(DATA.val.X[:1]), torch.from_numpy(DATA.val.y[:1]))]
    with pytest.raises(ValueError, match="at least 2 examples"):
        evaluate(model, batches(DATA.val, 16) + one_example, "batch")
    assert_same(before, fingerprint(model))


@pytest.mark.parametrize("make", [mlp, small_cnn])
def test_population_equals_update_bn(make):
    model = trained(make, steps=10)
    recal = batches(DATA.train, 32, seed=3)
    ours = evaluate(model, DATA.val, "population", recalibration_batches=recal)
    reference = copy.deepcopy(model)
    update_bn(recal, reference)
    reference.eval()
    with torch.no_grad():
        logits = reference(torch.from_numpy(DATA.val.X))
    y = torch.from_numpy(DATA.val.y)
    assert ours.accuracy == int((logits.argmax(1) == y).sum()) / len(y)
    assert ours.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)


def test_num_recalibration_batches_uses_only_the_first_batches():
    model = trained()
    recal = batches(DATA.train, 32, seed=3)
    assert (evaluate(model, DATA.val, "population", recal, num_recalibration_batches=4)
            == evaluate(model, DATA.val, "population", recal[:4]))


@pytest.mark.parametrize("stats, train_mode", [("batch", True), ("ema", False)])
def test_batch_and_ema_equal_train_and_eval_mode_forward(stats, train_mode):
    model = trained()
    val = batches(DATA.val, 16, seed=5)
    reference = copy.deepcopy(model).train(train_mode)
    with torch.no_grad():
        logits = torch.cat([reference(x) for x, _ in val])
    y = torch.cat([y for _, y in val])
    ours = evaluate(model, val, stats)
    assert ours.num_examples == len(y)
    assert ours.accuracy == int((logits.argmax(1) == y).sum()) / len(y)
    assert ours.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)


@pytest.mark.parametrize("stats", ["ema", "population"])
def test_inference_statistics_do_not_depend_on_the_batching(stats):
    model = trained()
    recal = batches(DATA.train, 32, seed=2)
    singles = [(torch.from_numpy(DATA.val.X[i:i + 1]), torch.from_numpy(DATA.val.y[i:i + 1]))
               for i in range(len(DATA.val.y))]
    whole = evaluate(model, DATA.val, stats, recal)
    one_by_one = evaluate(model, singles, stats, recal)
    assert whole.accuracy == one_by_one.accuracy
    assert whole.loss == pytest.approx(one_by_one.loss, rel=1e-5)


def test_batch_statistics_depend_on_the_batch_size():
    model = trained()
    assert evaluate(model, batches(DATA.val, 4), "batch") != evaluate(model, batches(DATA.val, 64), "batch")


def test_bad_stats_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="stats.*'running'"):
        evaluate(trained(steps=1), DATA.val, "running")


def test_population_needs_recalibration_batches():
    with pytest.raises(ValueError, match="recalibration_batches"):
        evaluate(trained(steps=1), DATA.val, "population")


def test_evaluate_is_exposed_lazily():
    assert bnlib.evaluate is evaluate and bnlib.train_and_track is train_and_track


def run(seed=0, **kwargs):
    args = dict(steps=40, eval_every=[1, 5, 20, 40], val_batch_sizes=(8,), seed=seed, keep_states=True)
    return train_and_track(mlp(seed=seed), DATA.train, DATA.val, **(args | kwargs))


def comparable(history):
    return {k: v for k, v in vars(history).items() if not k.endswith("seconds") and k != "states"}


def test_harness_is_reproducible():
    first, second = run(), run()
    assert comparable(first) == comparable(second)
    for a, b in zip(first.states, second.states):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert comparable(run(seed=1)) != comparable(first)


def test_harness_records_every_checkpoint():
    history = run(eval_every=15)
    assert history.step == [15, 30, 40]
    for name, values in comparable(history).items():
        lists = values.values() if isinstance(values, dict) else [values]
        assert all(len(v) == 3 for v in lists), name
    assert len(history.ema_seconds) == len(history.population_seconds) == len(history.train_seconds) == 3
    assert all(0 <= a <= 1 for a in history.ema_accuracy + history.population_accuracy)


def test_harness_statistics_come_from_training_batches():
    """The model's running statistics after tracking are those of training alone."""
    tracked = mlp(seed=0)
    run_model = train_and_track(tracked, DATA.train, DATA.val, steps=30, eval_every=10, seed=0)
    untracked = mlp(seed=0)
    train_and_track(untracked, DATA.train, DATA.val, steps=30, eval_every=[30], val_batch_sizes=(), seed=0)
    assert run_model.step == [10, 20, 30]
    for a, b in zip(batch_norm_layers(tracked), batch_norm_layers(untracked)):
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)


@pytest.mark.parametrize("kwargs, name", [
    (dict(steps=0), "steps"), (dict(batch_size=1), "batch_size"), (dict(lr=0.0), "lr"),
    (dict(eval_every=[0]), "eval_every"), (dict(sgd_momentum=1.0), "sgd_momentum"),
    (dict(val_batch_sizes=(1,)), "val_batch_sizes"),
])
def test_harness_rejects_bad_arguments(kwargs, name):
    args = dict(steps=10) | kwargs
    with pytest.raises(ValueError, match=name):
        train_and_track(mlp(), DATA.train, DATA.val, **args)


# --------------------------------------------------------------------------- debiased running statistics
def batch_statistics_while_training(momentum, steps, seed=0):
    """A model trained ``steps`` steps, and each BN layer's batch means and unbiased variances, shape (steps, C)."""
    model = mlp(momentum=momentum, seed=seed)
    recorded = {bn: ([], []) for bn in batch_norm_layers(model)}

    def hook(bn, args):
        x = args[0].detach().double()
        recorded[bn][0].append(x.mean(0).numpy())
        recorded[bn][1].append(x.var(0, unbiased=True).numpy())

    handles = [bn.register_forward_pre_hook(hook) for bn in recorded]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in batches(DATA.train, 32, seed=seed)[:steps]:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for handle in handles:
        handle.remove()
    return model, {bn: (np.array(means), np.array(variances)) for bn, (means, variances) in recorded.items()}


@pytest.mark.parametrize("steps", [1, 3, 20])
def test_debiased_running_statistics_equal_debiased_ema_of_the_batch_statistics(steps):
    model, recorded = batch_statistics_while_training(0.1, steps)
    for bn, (means, variances) in recorded.items():
        mean, var = debiased_running_statistics(bn)
        assert mean.dtype == bn.running_mean.dtype and mean.shape == bn.running_mean.shape
        np.testing.assert_allclose(mean.numpy(), debiased_ema(means, 0.1)[-1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var.numpy(), debiased_ema(variances, 0.1)[-1], rtol=1e-5)
        # ... while the running statistics themselves are the EMA from PyTorch's initial values 0 and 1
        np.testing.assert_allclose(bn.running_var.numpy(), ema(variances, 0.1, init=1.0)[-1], rtol=1e-5)


def test_evaluate_with_debiased_ema_uses_the_debiased_statistics():
    model, recorded = batch_statistics_while_training(0.1, 5)
    direct = copy.deepcopy(model)
    for bn, (means, variances) in zip(batch_norm_layers(direct), recorded.values()):
        bn.running_mean.copy_(torch.from_numpy(debiased_ema(means, 0.1)[-1]))
        bn.running_var.copy_(torch.from_numpy(debiased_ema(variances, 0.1)[-1]))
    ours, reference = evaluate(model, DATA.val, "debiased_ema"), evaluate(direct, DATA.val, "ema")
    assert ours.accuracy == reference.accuracy
    assert ours.loss == pytest.approx(reference.loss, rel=1e-5)
    assert ours != evaluate(model, DATA.val, "ema")        # after 5 steps the bias still matters


def test_debiased_ema_is_ema_for_the_cumulative_average():
    model = trained(momentum=None, steps=5)
    debiased, ema_ = evaluate(model, DATA.val, "debiased_ema"), evaluate(model, DATA.val, "ema")
    assert debiased == ema_ and np.array_equal(debiased.predictions, ema_.predictions)


def test_debiased_ema_approaches_ema_after_many_steps():
    model = trained(momentum=0.5, steps=30)                  # initial weight 0.5**30, below float32's resolution
    for bn in batch_norm_layers(model):
        mean, var = debiased_running_statistics(bn)
        torch.testing.assert_close(mean, bn.running_mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(var, bn.running_var, rtol=1e-6, atol=1e-7)
    assert evaluate(model, DATA.val, "debiased_ema").loss == pytest.approx(
        evaluate(model, DATA.val, "ema").loss, rel=1e-5)


def test_debiased_ema_before_any_step_is_a_value_error():
    with pytest.raises(ValueError, match="num_batches_tracked is 0"):
        evaluate(mlp(), DATA.val, "debiased_ema")


@pytest.mark.parametrize("layer, match", [
    (torch.nn.Linear(2, 2), "layer must be a BN layer"),
    (torch.nn.BatchNorm1d(2, track_running_stats=False), "layer must be a BN layer"),
])
def test_debiased_running_statistics_rejects_layers_without_running_statistics(layer, match):
    with pytest.raises(ValueError, match=match):
        debiased_running_statistics(layer)


def test_debiased_running_statistics_rejects_momentum_zero():
    bn = torch.nn.BatchNorm1d(2, momentum=0.0)
    bn(torch.randn(4, 2))
    with pytest.raises(ValueError, match="layer.momentum"):
        debiased_running_statistics(bn)


# --------------------------------------------------------------------------- predictions
@pytest.mark.parametrize("stats", STATS)
def test_predictions_are_the_argmax_in_the_order_of_the_batches(stats):
    model = trained()
    val = batches(DATA.val, 16, seed=5)
    result = evaluate(model, val, stats, recalibration_batches=batches(DATA.train, 32, seed=1))
    y = torch.cat([y for _, y in val]).numpy()
    assert result.predictions.shape == (result.num_examples,) and result.predictions.dtype == np.int64
    assert result.accuracy == np.mean(result.predictions == y)
    if stats == "ema":
        with torch.no_grad():
            logits = copy.deepcopy(model).eval()(torch.cat([x for x, _ in val]))
        assert np.array_equal(result.predictions, logits.argmax(1).numpy())


def test_disagreement_counts_the_examples_predicted_differently():
    model = trained()
    ema_, batch = evaluate(model, batches(DATA.val, 4, seed=0), "ema"), evaluate(model, batches(DATA.val, 4, seed=0), "batch")
    assert disagreement(ema_, ema_) == 0
    assert disagreement(ema_, batch) == np.mean(ema_.predictions != batch.predictions) > 0
    with pytest.raises(ValueError, match="same examples"):
        disagreement(ema_, evaluate(model, batches(DATA.val, 4)[:3], "ema"))
    with pytest.raises(ValueError, match="predictions"):
        disagreement(ema_, bnlib.tracking.EvalResult(1.0, 0.0, 1))


# --------------------------------------------------------------------------- staleness
def test_staleness_is_zero_against_the_model_s_own_statistics():
    model = trained()
    population = copy.deepcopy(model)
    recalibrate(population, batches(DATA.train, 32, seed=1))
    assert all(v > 0 for k, v in staleness(model, population).items() if k != "log_var_ratio")
    for bn, pop in zip(batch_norm_layers(model), batch_norm_layers(population)):
        bn.running_mean.copy_(pop.running_mean)
        bn.running_var.copy_(pop.running_var)
    assert staleness(model, population) == {k: 0.0 for k in STALENESS}


def test_staleness_measures_in_population_standard_deviations():
    model = trained()
    population = copy.deepcopy(model)
    for bn in batch_norm_layers(model):
        bn.running_mean.add_(0.5 * (bn.running_var + bn.eps).sqrt())    # half a standard deviation off
        bn.running_var.mul_(np.e)                                       # e times too large
    result = staleness(model, population)
    assert result["mean_distance"] == pytest.approx(0.5, rel=1e-5)
    assert result["log_var_ratio"] == pytest.approx(1.0, rel=1e-5) == result["abs_log_var_ratio"]


def test_staleness_needs_the_same_layers():
    with pytest.raises(ValueError, match="same BN layers"):
        staleness(mlp(hidden=(64, 64)), mlp(hidden=(64,)))


# --------------------------------------------------------------------------- tracking methods
METHODS = ("ema", "debiased_ema", "population:4", "population", "batch")


def test_methods_change_neither_the_training_nor_the_other_records():
    plain, tracked = run(), run(methods=METHODS)
    recorded = {k: v for k, v in comparable(plain).items() if v}        # what is recorded without methods
    assert {k: comparable(tracked)[k] for k in recorded} == recorded
    assert all(torch.equal(a[k], b[k]) for a, b in zip(plain.states, tracked.states) for k in a)
    assert plain.accuracy == {} and set(tracked.accuracy) == set(METHODS)


def test_methods_are_recorded_at_every_checkpoint():
    history = run(methods=METHODS)
    for name in ("accuracy", "loss", "disagreement", "forward_examples", "method_seconds"):
        assert list(getattr(history, name)) == list(METHODS)
        assert all(len(v) == len(history.step) for v in getattr(history, name).values())
    assert list(history.staleness) == list(STALENESS)
    assert history.accuracy["ema"] == history.ema_accuracy
    assert history.accuracy["population"] == history.population_accuracy


def test_the_reference_does_not_disagree_with_itself():
    history = run(methods=("ema", "population:4"), reference="population:4")
    assert history.disagreement["population:4"] == [0.0] * len(history.step)
    assert any(d > 0 for d in history.disagreement["ema"])


def test_forward_pass_cost_is_the_recalibration_examples():
    history = run(methods=METHODS)
    epoch = len(DATA.train.y) // 32 * 32
    expected = {"ema": 0, "debiased_ema": 0, "population:4": 4 * 32, "population": epoch, "batch": 0}
    assert {k: set(v) for k, v in history.forward_examples.items()} == {k: {v} for k, v in expected.items()}


def test_batch_method_uses_validation_batches_of_the_training_batch_size():
    history = run(methods=("batch", "batch:8"), batch_size=16)
    assert history.accuracy["batch:8"] == history.batch_accuracy[8]
    assert history.accuracy["batch"] != history.batch_accuracy[8]


def test_staleness_vanishes_when_the_running_statistics_are_the_population_ones():
    """Weights frozen (multiplier 0), one batch = the whole training set, cumulative average:
    every training batch has the population statistics, so the running ones are those."""
    train = (DATA.train.X[:64], DATA.train.y[:64])
    history = train_and_track(mlp(momentum=None), train, DATA.val, steps=6, eval_every=[1, 3, 6],
                              batch_size=64, val_batch_sizes=(), methods=("ema",),
                              lr_schedule=lambda step: 0.0)
    for values in history.staleness.values():
        assert values == pytest.approx([0.0] * 3, abs=1e-5)
    assert history.movement[1:] == pytest.approx([0.0, 0.0], abs=1e-5)
    assert history.movement[0] > 0.1                               # from the initial statistics 0 and 1
    assert history.disagreement["ema"] == [0.0] * 3


def test_movement_is_recorded_without_methods():
    history = run()
    assert len(history.movement) == len(history.step) and all(m > 0 for m in history.movement)
    assert len(history.window_movement) == len(history.step)


def test_window_movement_spans_one_effective_window():
    """alpha = 0.5: a window of 2 steps; checkpoints 2 steps apart make it the movement since the
    previous checkpoint. alpha = 0.01: a window of 100 steps, longer than the run, so the window
    starts at step 0 and the movement is measured from the starting values."""
    short = train_and_track(mlp(momentum=0.5), DATA.train, DATA.val, steps=6, eval_every=[2, 4, 6],
                            val_batch_sizes=())
    assert short.window_movement == pytest.approx(short.movement, rel=1e-12)
    long = train_and_track(mlp(momentum=0.01), DATA.train, DATA.val, steps=6, eval_every=[3, 6],
                           val_batch_sizes=())
    assert long.window_movement[0] == pytest.approx(long.movement[0], rel=1e-12)
    assert long.window_movement[1] > long.movement[1] > 0          # since step 0, not since step 3


@pytest.mark.parametrize("momentum", [None, 0.0])
def test_window_movement_is_nan_without_a_window(momentum):
    history = train_and_track(mlp(momentum=momentum), DATA.train, DATA.val, steps=4, eval_every=2,
                              val_batch_sizes=())
    assert np.isnan(history.window_movement).all() and not np.isnan(history.movement).any()


def test_window_movement_is_measured_at_the_right_step():
    """A window of 10 steps ending at step 25 starts at step 15: the same run with a checkpoint at
    step 15 gives the running means there, and so the movement between the two checkpoints."""
    ends = train_and_track(mlp(momentum=0.1), DATA.train, DATA.val, steps=25, eval_every=[25],
                           val_batch_sizes=())
    both = train_and_track(mlp(momentum=0.1), DATA.train, DATA.val, steps=25, eval_every=[15, 25],
                           val_batch_sizes=())
    assert ends.window_movement[0] == pytest.approx(both.movement[1], rel=1e-9)


# --------------------------------------------------------------------------- learning-rate schedule
def weight_changes(history):
    """Norm of the change of all weights between consecutive stored states."""
    def flat(state):
        return torch.cat([v.flatten() for k, v in state.items() if k.endswith("weight")])
    return [float((flat(b) - flat(a)).norm()) for a, b in zip(history.states, history.states[1:])]


def test_cosine_schedule_decays_to_nearly_zero():
    steps = 40
    history = run(steps=steps, eval_every=[1, 2, steps - 1, steps], lr_schedule="cosine")
    expected = [0.05 * 0.5 * (1 + np.cos(np.pi * (s - 1) / steps)) for s in history.step]
    assert history.learning_rate == pytest.approx(expected, rel=1e-12)
    first, _, last = weight_changes(history)
    assert last < 0.01 * first                                      # the weights stop moving
    assert run(steps=steps, eval_every=[steps]).learning_rate == [0.05]


def test_callable_schedule_multiplies_the_learning_rate():
    frozen = run(lr_schedule=lambda step: 0.0)
    assert all(all(torch.equal(s[k], frozen.states[0][k]) for k in s if k.endswith("weight"))
               for s in frozen.states)
    halved = run(lr_schedule=lambda step: 0.5, eval_every=[40])
    assert halved.learning_rate == [0.025]


# --------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("kwargs, name", [
    (dict(methods="ema"), "methods"), (dict(methods=()), "methods"), (dict(methods=("ema", "ema")), "methods"),
    (dict(methods=("running",)), "methods"), (dict(methods=("population:0",)), "methods"),
    (dict(methods=("batch:1",)), "methods"), (dict(methods=("ema:3",)), "methods"),
    (dict(methods=("population:100",)), "methods.*one epoch"),
    (dict(reference="ema"), "reference"), (dict(reference="population:x"), "reference"),
    (dict(lr_schedule="linear"), "lr_schedule"), (dict(lr_schedule=lambda step: -1.0), "lr_schedule"),
    (dict(lr_schedule=lambda step: float("nan")), "lr_schedule"),
])
def test_harness_rejects_bad_tracking_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        train_and_track(mlp(), DATA.train, DATA.val, steps=2, **kwargs)


def test_docstring_examples_run():
    results = doctest.testmod(bnlib.tracking)
    assert results.attempted >= 3 and results.failed == 0


def test_debiasing_recalibrated_statistics_raises_instead_of_returning_nan():
    # recalibrate leaves momentum 0.1 and num_batches_tracked = number of batches: not one EMA from 0 and 1
    data = load_digits_splits()
    model = mlp(seed=0)
    batches = [torch.from_numpy(x) for x, _ in iterate_minibatches(*data.train, 32, seed=0)][:2]
    recalibrate(model, batches)
    with pytest.raises(ValueError, match="not one uninterrupted moving average"):
        evaluate(model, data.val, "debiased_ema")
