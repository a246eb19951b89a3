"""Weight rendering: shapes, hand-computed block values, pooling agreement, gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradinstructor.enn import ENN, ENNConfig
from gradinstructor.render import (
    CHANNELS,
    MIN_SIDE,
    image_shape,
    layer_shapes,
    render_matrix,
    render_weights,
    weight_matrices,
)
from gradinstructor.tasks import build_mlp


@pytest.mark.parametrize(
    ("rows", "cols", "ratio", "expected"),
    [
        (100, 784, 0.15, (15, 118)),  # Linear(784, 100): 15.0 and 117.6 rounded
        (10, 100, 0.15, (MIN_SIDE, 15)),  # 1.5 rounds to 2, floored to MIN_SIDE
        (20, 20, 0.15, (MIN_SIDE, MIN_SIDE)),  # 3 is below the floor
        (100, 784, 0.5, (50, 392)),
        (100, 784, 1.0, (100, 784)),  # ratio 1 keeps the matrix's resolution
        (3, 2, 0.15, (3, 2)),  # the floor never makes an image bigger than its matrix
        (3, 50, 0.15, (3, 8)),
    ],
)
def test_image_shape(rows, cols, ratio, expected):
    assert image_shape(rows, cols, ratio) == expected
    image = render_matrix(torch.randn(rows, cols), ratio)
    assert image.shape == (CHANNELS, *expected)


def test_render_weights_of_the_mnist_mlp_at_the_default_ratio():
    net = build_mlp([784, 100, 100, 10])

    images = render_weights(net)

    assert [tuple(img.shape) for img in images] == [(2, 15, 118), (2, 15, 15), (2, 4, 15)]
    assert all(img.dtype == torch.float32 for img in images)


def test_block_mean_and_rms_against_a_hand_computation():
    weight = torch.arange(96, dtype=torch.float32).reshape(8, 12) / 10 - 4  # (8, 12)
    scale = math.sqrt(12)  # pixels are weights x sqrt(fan_in)

    image = render_matrix(weight, ratio=0.5)  # 2x2 blocks: (2, 4, 6)

    # the top-left block holds 0, 1, 12, 13 (before /10 - 4)
    first = np.array([0, 1, 12, 13]) / 10 - 4
    assert image[0, 0, 0].item() == pytest.approx(first.mean() * scale, rel=1e-6)
    assert image[1, 0, 0].item() == pytest.approx(math.sqrt(np.mean(first**2)) * scale, rel=1e-6)
    w = weight.numpy().astype(np.float64)
    for i in range(4):
        for j in range(6):
            block = w[2 * i:2 * i + 2, 2 * j:2 * j + 2]
            assert image[0, i, j].item() == pytest.approx(block.mean() * scale, abs=1e-5)
            rms = math.sqrt((block**2).mean()) * scale
            assert image[1, i, j].item() == pytest.approx(rms, rel=1e-5)


@pytest.mark.parametrize(("rows", "cols", "ratio"),
                         [(100, 784, 0.15), (13, 29, 0.4), (37, 11, 0.3), (64, 75, 0.15)])
def test_rendering_agrees_with_adaptive_average_pooling(rows, cols, ratio):
    torch.manual_seed(rows)
    weight = torch.randn(rows, cols)
    size = image_shape(rows, cols, ratio)
    scaled = (weight * math.sqrt(cols))[None, None]  # (1, 1, rows, cols)

    image = render_matrix(weight, ratio)

    mean = F.adaptive_avg_pool2d(scaled, size)[0, 0]
    rms = F.adaptive_avg_pool2d(scaled**2, size)[0, 0].sqrt()
    torch.testing.assert_close(image[0], mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(image[1], rms, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(100, 784), (13, 29), (5, 6)])
def test_gradient_reaches_every_weight_from_each_channel(shape):
    torch.manual_seed(1)
    weight = torch.randn(*shape, requires_grad=True)
    image = render_matrix(weight)

    (mean_grad,) = torch.autograd.grad(image[0].sum(), weight, retain_graph=True)
    (rms_grad,) = torch.autograd.grad(image[1].sum(), weight)

    assert (mean_grad > 0).all()  # every weight sits in at least one block
    assert (rms_grad != 0).all()


def test_enn_score_has_a_nonzero_gradient_on_every_weight_element():
    net = build_mlp([64, 32, 16, 10], seed=3)
    torch.manual_seed(0)
    enn = ENN(ENNConfig(layer_shapes=layer_shapes(net)))

    weights = [m.weight for m in net if isinstance(m, nn.Linear)]
    grads = torch.autograd.grad(enn.score(net, progress=0.3), weights)

    for weight, grad in zip(weights, grads):
        assert grad.shape == weight.shape
        missed = int((grad == 0).sum())
        assert missed == 0, f"{missed} weights of {tuple(weight.shape)} got no gradient"


def test_conv_kernels_are_read_as_out_by_in_times_kernel():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 5), nn.ReLU(), nn.Conv2d(8, 4, 3, bias=False),
                        nn.Flatten(), nn.Linear(16, 10))

    matrices = weight_matrices(net)

    assert layer_shapes(net) == [(8, 75), (4, 72), (10, 16)]
    torch.testing.assert_close(matrices[0], net[0].weight.reshape(8, 3 * 5 * 5))
    assert matrices[0][1, 3 * 5 * 5 - 1] == net[0].weight[1, 2, 4, 4]  # row-major (in, k, k)
    images = render_weights(net)
    assert [tuple(img.shape[1:]) for img in images] == [image_shape(8, 75), image_shape(4, 72),
                                                        image_shape(10, 16)]
    (grad,) = torch.autograd.grad(images[0][1].sum(), net[0].weight)
    assert grad.shape == (8, 3, 5, 5) and (grad != 0).all()


def test_biases_and_norms_are_not_rendered():
    net = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    assert layer_shapes(net) == [(5, 6), (3, 5)]


@pytest.mark.parametrize("model", [nn.Sequential(nn.ReLU(), nn.BatchNorm1d(4)), nn.Identity()])
def test_a_model_without_weight_matrices_is_refused(model):
    with pytest.raises(ValueError, match="no 2-D weight matrix"):
        render_weights(model)


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5, float("nan"), float("inf"), "0.15", None])
def test_bad_ratio_values_are_refused(ratio):
    with pytest.raises(ValueError, match="ratio must be in \\(0, 1\\]"):
        render_matrix(torch.randn(10, 10), ratio)
    with pytest.raises(ValueError, match="ratio"):
        ENNConfig(layer_shapes=[(10, 10)], ratio=ratio)


def test_a_non_matrix_is_refused():
    with pytest.raises(ValueError, match="2-D"):
        render_matrix(torch.randn(3, 4, 5))
