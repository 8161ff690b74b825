"""bnlib.recalibrate: Algorithm 2 for a torch model.

Chapter 3 claims recalibrate computes exactly what torch.optim.swa_utils.update_bn
computes on the same batches (the paper's estimator, bnlib.population_statistics with
"unbiased_mean"), without changing the weights or the mode of any module, reading
at most num_batches batches, and leaving the model as it was if anything fails.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

import bnlib
from bnlib import recalibrate
from bnlib.data import iterate_minibatches, load_digits_splits
from bnlib.models import batch_norm_layers, mlp, small_cnn

MODELS = {"mlp": mlp, "cnn": small_cnn}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def train_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    d = load_digits_splits()
    return [(torch.from_numpy(x), torch.from_numpy(y))
            for x, y in iterate_minibatches(d.train.X, d.train.y, 32, seed=0)][:12]


def trained_like(make) -> nn.Module:
    """A model whose running statistics are not the defaults (a few training-mode passes)."""
    model = make(seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 64, generator=g) * 2 + 1)
    return model


def buffers(model: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for bn in batch_norm_layers(model)
            for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)]


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", list(MODELS))
def test_equals_update_bn_on_the_same_batches(name, train_batches):
    ours, ref = trained_like(MODELS[name]), trained_like(MODELS[name])
    used = recalibrate(ours, train_batches)
    update_bn(train_batches, ref)
    assert used == len(train_batches)
    assert_same(buffers(ours), buffers(ref))
    assert all(int(bn.num_batches_tracked) == used for bn in batch_norm_layers(ours))


def test_first_layer_statistics_are_population_statistics(train_batches):
    """The first BN layer's input does not depend on BN: its recalibrated buffers are
    Algorithm 2 (bnlib.population_statistics, "unbiased_mean") of those inputs."""
    model = trained_like(mlp)
    recalibrate(model, train_batches)
    with torch.no_grad():
        inputs = [model[0](x).double().numpy() for x, _ in train_batches]
    mean, var = bnlib.population_statistics(inputs, "unbiased_mean")
    bn = model[1]
    assert np.allclose(bn.running_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
    assert np.allclose(bn.running_var.numpy(), var, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_weights_are_unchanged(name, train_batches):
    model = trained_like(MODELS[name])
    params = [p.clone() for p in model.parameters()]
    recalibrate(model, train_batches)
    assert_same(params, list(model.parameters()))


@pytest.mark.parametrize("start_in_training", [True, False])
def test_mode_and_momentum_are_left_as_they_were(start_in_training, train_batches):
    model = trained_like(mlp).train(start_in_training)
    model[1].momentum = 0.3
    recalibrate(model, train_batches)
    assert all(m.training == start_in_training for m in model.modules())
    assert [bn.momentum for bn in batch_norm_layers(model)] == [0.3, 0.1]


def test_mixed_modes_are_restored_module_by_module(train_batches):
    """E.g. fine-tuning with one BN layer frozen in eval mode inside a training model."""
    model = trained_like(mlp).train()
    model[4].eval()
    modes = [m.training for m in model.modules()]
    recalibrate(model, train_batches)
    assert [m.training for m in model.modules()] == modes


def test_num_batches_is_respected_and_nothing_more_is_read(train_batches):
    ours, ref = trained_like(mlp), trained_like(mlp)
    read = []

    def stream():
        for i, batch in enumerate(train_batches):
            read.append(i)
            yield batch

    assert recalibrate(ours, stream(), num_batches=5) == 5
    update_bn(train_batches[:5], ref)
    assert_same(buffers(ours), buffers(ref))
    assert read == [0, 1, 2, 3, 4]


def test_num_batches_larger_than_the_stream_uses_all_of_it(train_batches):
    assert recalibrate(trained_like(mlp), train_batches[:3], num_batches=100) == 3


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_bad_num_batches_is_rejected(bad, train_batches):
    model = trained_like(mlp)
    before = buffers(model)
    with pytest.raises(ValueError, match="num_batches must be a positive int or None"):
        recalibrate(model, train_batches, num_batches=bad)
    assert_same(before, buffers(model))


def test_buffers_mode_and_momentum_are_restored_if_a_batch_raises(train_batches):
    model = trained_like(mlp).eval()
    before = buffers(model)

    def failing():
        yield train_batches[0]
        yield train_batches[1]
        raise RuntimeError("data loader failed")

    with pytest.raises(RuntimeError, match="data loader failed"):
        recalibrate(model, failing())
    assert_same(before, buffers(model))
    assert not any(m.training for m in model.modules())
    assert [bn.momentum for bn in batch_norm_layers(model)] == [0.1, 0.1]


def test_a_batch_the_model_rejects_restores_the_buffers(train_batches):
    model = trained_like(mlp)
    before = buffers(model)
    with pytest.raises(RuntimeError):
        recalibrate(model, [train_batches[0], torch.ones(4, 3)])   # wrong input width
    assert_same(before, buffers(model))


def test_no_batch_at_all_is_rejected_and_changes_nothing():
    model = trained_like(mlp)
    before = buffers(model)
    with pytest.raises(ValueError, match="at least one mini-batch"):
        recalibrate(model, [])
    assert_same(before, buffers(model))


def test_a_model_without_batch_norm_uses_no_batch(train_batches):
    assert recalibrate(mlp(batch_norm=False), train_batches) == 0


def test_model_must_be_a_module(train_batches):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        recalibrate(lambda x: x, train_batches)


def test_progress_bar_gives_the_same_statistics(train_batches, capsys):
    ours, ref = trained_like(mlp), trained_like(mlp)
    recalibrate(ours, train_batches, num_batches=4, progress=True)
    recalibrate(ref, train_batches, num_batches=4)
    assert_same(buffers(ours), buffers(ref))
    assert "recalibrating BN" in capsys.readouterr().err


# ------------------------------------------------------------------ the two readings of Algorithm 2
def layerwise_directly(model: nn.Module, batches) -> list[tuple[np.ndarray, np.ndarray]]:
    """Algorithm 2 layer by layer, computed without recalibrate: capture each BN layer's
    inputs with a forward hook while every BN layer is in inference mode, the earlier ones
    already holding their new statistics, and average them with population_statistics."""
    model = model.eval()
    stats = []
    for bn in batch_norm_layers(model):
        inputs = []
        handle = bn.register_forward_pre_hook(lambda _, args: inputs.append(args[0].double().numpy()))
        with torch.no_grad():
            for x, _ in batches:
                model(x)
        handle.remove()
        mean, var = bnlib.population_statistics(inputs, "unbiased_mean")
        bn.running_mean.copy_(torch.from_numpy(mean))
        bn.running_var.copy_(torch.from_numpy(var))
        stats.append((mean, var))
    return stats


@pytest.mark.parametrize("name", list(MODELS))
def test_layerwise_equals_a_direct_layer_by_layer_computation(name, train_batches):
    model = trained_like(MODELS[name])
    assert recalibrate(model, train_batches, order="layerwise") == len(train_batches)
    expected = layerwise_directly(trained_like(MODELS[name]), train_batches)
    for bn, (mean, var) in zip(batch_norm_layers(model), expected):
        assert np.allclose(bn.running_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
        assert np.allclose(bn.running_var.numpy(), var, rtol=1e-4, atol=1e-5)
        assert int(bn.num_batches_tracked) == len(train_batches)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_two_readings_agree_on_the_first_layer_only(name, train_batches):
    together, layerwise = trained_like(MODELS[name]), trained_like(MODELS[name])
    recalibrate(together, train_batches, order="together")
    recalibrate(layerwise, train_batches, order="layerwise")
    first, *later = zip(batch_norm_layers(together), batch_norm_layers(layerwise))
    assert torch.allclose(first[0].running_var, first[1].running_var, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(a.running_var, b.running_var, rtol=1e-3) for a, b in later)


def test_layerwise_reads_a_one_shot_iterator_and_respects_num_batches(train_batches):
    ours, ref = trained_like(mlp), trained_like(mlp)
    assert recalibrate(ours, (b for b in train_batches), num_batches=5, order="layerwise") == 5
    recalibrate(ref, train_batches[:5], order="layerwise")
    assert_same(buffers(ours), buffers(ref))


@pytest.mark.parametrize("start_in_training", [True, False])
def test_layerwise_leaves_modes_momenta_and_weights_as_they_were(start_in_training, train_batches):
    model = trained_like(small_cnn).train(start_in_training)
    momenta = [bn.momentum for bn in batch_norm_layers(model)]
    params = [p.clone() for p in model.parameters()]
    recalibrate(model, train_batches, order="layerwise")
    assert all(m.training == start_in_training for m in model.modules())
    assert [bn.momentum for bn in batch_norm_layers(model)] == momenta
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))


@pytest.mark.parametrize("bad", ["layer", None, 1])
def test_unknown_order_is_rejected(bad, train_batches):
    model = trained_like(mlp)
    before = buffers(model)
    with pytest.raises(ValueError, match=r"^order must be one of \('together', 'layerwise'\)"):
        recalibrate(model, train_batches, order=bad)
    assert_same(buffers(model), before)


class Reordered(nn.Module):
    """The chapter's MLP with its two BN layers registered in the opposite order of their use."""

    def __init__(self, seed: int = 0):
        super().__init__()
        net = mlp(seed=seed)
        self.lin_a, self.lin_b, self.head = net[0], net[3], net[6]
        self.bn_b, self.bn_a = net[4], net[1]          # registered b first, called a first

    def forward(self, x):
        h = torch.relu(self.bn_a(self.lin_a(x)))
        return self.head(torch.relu(self.bn_b(self.lin_b(h))))


def test_layerwise_follows_the_order_the_layers_run_in(train_batches):
    ours, ref = Reordered(), mlp(seed=0)
    recalibrate(ours, train_batches, order="layerwise")
    recalibrate(ref, train_batches, order="layerwise")
    for a, b in [(ours.bn_a, ref[1]), (ours.bn_b, ref[4])]:
        assert torch.allclose(a.running_var, b.running_var, rtol=1e-5, atol=1e-6)


def test_layerwise_gathers_with_dropout_in_inference_mode(train_batches):
    """Inference turns dropout off: so do the layerwise passes (the reference: model.eval())."""
    model = nn.Sequential(*list(mlp(seed=0))[:3], nn.Dropout(0.5), *list(mlp(seed=0))[3:])
    recalibrate(model, train_batches, order="layerwise")
    expected = layerwise_directly(copy.deepcopy(model), train_batches)
    for bn, (mean, var) in zip(batch_norm_layers(model), expected):
        assert np.allclose(bn.running_var.numpy(), var, rtol=1e-4, atol=1e-5)
    assert all(m.training for m in model.modules())


def test_layerwise_rejects_a_layer_called_twice(train_batches):
    bn = nn.BatchNorm1d(64)
    model = nn.Sequential(bn, nn.ReLU(), bn)
    with pytest.raises(ValueError, match="called once per forward pass"):
        recalibrate(model, train_batches, order="layerwise")
