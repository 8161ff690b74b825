"""bnlib.models: small torch networks with Batch Normalization for the digits."""

from __future__ import annotations

import pytest
import torch

from bnlib.models import batch_norm_layers, mlp, small_cnn


@pytest.mark.parametrize("make, kind", [(mlp, torch.nn.BatchNorm1d), (small_cnn, torch.nn.BatchNorm2d)])
def test_models_map_digits_to_logits_with_one_bn_per_hidden_layer(make, kind):
    model = make(momentum=0.01)
    layers = batch_norm_layers(model)
    assert len(layers) == 2 and all(isinstance(bn, kind) and bn.momentum == 0.01 for bn in layers)
    assert model(torch.randn(5, 64)).shape == (5, 10)


def test_cumulative_average_momentum_is_passed_through():
    assert all(bn.momentum is None for bn in batch_norm_layers(mlp(momentum=None)))


@pytest.mark.parametrize("make", [mlp, small_cnn])
def test_without_batch_norm_there_is_no_bn_layer(make):
    assert batch_norm_layers(make(batch_norm=False)) == []


@pytest.mark.parametrize("make", [mlp, small_cnn])
def test_same_seed_same_weights(make):
    a, b, c = make(seed=3), make(seed=3), make(seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_small_cnn_accepts_flat_and_image_inputs():
    model = small_cnn().eval()
    x = torch.randn(4, 64)
    assert torch.equal(model(x), model(x.reshape(4, 1, 8, 8)))


@pytest.mark.parametrize("make, name", [(mlp, "hidden"), (small_cnn, "channels")])
@pytest.mark.parametrize("bad", [3, (64, 0), (64, 2.5), "64", (True,)])
def test_widths_that_are_not_positive_ints_raise_naming_the_argument(make, name, bad):
    with pytest.raises(ValueError, match=name):
        make(**{name: bad})
