"""Fuzzing the weight rendering and the ENN with odd shapes and dtypes (hypothesis).

Every input gives either a correct result, checked against a plain reference
computation (``adaptive_avg_pool2d`` in float64 for the images, a float64 copy of
the ENN for the score), or a ValueError/TypeError naming the problem; never an
error from deep inside torch.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from gradinstructor.enn import ENN, ENNConfig
from gradinstructor.render import (
    CHANNELS,
    image_shape,
    render_matrix,
    render_stack,
    render_weights,
)

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

small = st.integers(1, 40)
# 1 x N, N x 1, very wide, very tall; the largest go through adaptive_avg_pool2d
extreme = st.sampled_from([(1, 1), (1, 2), (2, 1), (1, 20_000), (20_000, 1), (3, 5_000),
                           (5_000, 2), (2, 5_000), (1, 784), (784, 1)])
shapes = st.one_of(st.tuples(small, small), extreme)
ratios = st.one_of(st.sampled_from([1.0, 0.15, 0.5, 1e-6]), st.floats(0.01, 1.0))


def _weights(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


def _reference_image(weight: torch.Tensor, ratio: float) -> torch.Tensor:
    """Block mean and block RMS of weight * sqrt(in), by adaptive average pooling in float64."""
    rows, cols = weight.shape
    size = image_shape(rows, cols, ratio)
    scaled = weight.double()[None, None] * math.sqrt(cols)
    mean = F.adaptive_avg_pool2d(scaled, size)[0, 0]
    rms = F.adaptive_avg_pool2d(scaled * scaled, size)[0, 0].sqrt()
    return torch.stack([mean, rms])


@FUZZ
@given(shape=shapes, dtype=st.sampled_from(FLOAT_DTYPES), ratio=ratios,
       seed=st.integers(0, 2**16))
def test_render_matrix_agrees_with_adaptive_pooling(shape, dtype, ratio, seed):
    weight = _weights(shape, dtype, seed).requires_grad_(True)

    image = render_matrix(weight, ratio)

    assert image.dtype == torch.float32
    assert image.shape == (CHANNELS, *image_shape(*shape, ratio))
    reference = _reference_image(weight.detach(), ratio)
    scale = math.sqrt(shape[1])  # pixels are about sqrt(in) times the weights
    torch.testing.assert_close(image.double(), reference, rtol=1e-4, atol=1e-5 * scale)
    (grad,) = torch.autograd.grad(image.sum(), weight)
    assert grad.dtype == dtype and grad.shape == weight.shape
    assert torch.isfinite(grad.float()).all()


@FUZZ
@given(n=st.integers(0, 3), shape=st.tuples(small, small), dtype=st.sampled_from(FLOAT_DTYPES),
       ratio=ratios, seed=st.integers(0, 2**16))
def test_render_stack_equals_rendering_each_matrix(n, shape, dtype, ratio, seed):
    weights = _weights((n, *shape), dtype, seed)

    images = render_stack(weights, ratio)

    assert images.shape == (n, CHANNELS, *image_shape(*shape, ratio))
    for i in range(n):
        torch.testing.assert_close(images[i], render_matrix(weights[i], ratio),
                                   rtol=1e-5, atol=1e-5 * math.sqrt(shape[1]))


@FUZZ
@given(shape=st.one_of(st.tuples(st.just(0), st.integers(0, 50)),
                       st.tuples(st.integers(0, 50), st.just(0))),
       ratio=ratios)
def test_an_empty_matrix_is_a_clear_value_error(shape, ratio):
    with pytest.raises(ValueError, match=rf"cannot render an empty weight matrix of shape "
                                         rf"{shape[0]} x {shape[1]}"):
        render_matrix(torch.zeros(shape), ratio)
    with pytest.raises(ValueError, match="cannot render an empty weight matrix"):
        render_stack(torch.zeros((2, *shape)), ratio)


@pytest.mark.parametrize("value", [torch.ones(3, 4, dtype=torch.int64),
                                   torch.ones(3, 4, dtype=torch.bool),
                                   torch.ones(3, 4, dtype=torch.complex64)])
def test_a_non_floating_dtype_is_a_clear_type_error(value):
    with pytest.raises(TypeError, match=f"floating-point dtype .*but got {value.dtype}"):
        render_matrix(value)
    with pytest.raises(TypeError, match=f"floating-point dtype .*but got {value.dtype}"):
        render_stack(value[None])


@pytest.mark.parametrize(("value", "exception", "message"), [
    ([[1.0, 2.0]], TypeError, "must be a torch.Tensor, but got list"),
    (torch.ones(5), ValueError, r"expected a 2-D weight matrix, got shape \(5,\)"),
    (torch.ones(()), ValueError, r"expected a 2-D weight matrix, got shape \(\)"),
    (torch.ones(2, 3, 4), ValueError, r"expected a 2-D weight matrix, got shape \(2, 3, 4\)"),
])
def test_a_non_matrix_is_a_clear_error(value, exception, message):
    with pytest.raises(exception, match=message):
        render_matrix(value)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, float("nan"), float("inf"), True, "0.15"])
def test_a_bad_ratio_is_a_clear_value_error(ratio):
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
        render_matrix(torch.ones(3, 4), ratio)


def _model(shapes: list[tuple[int, int]], dtype: torch.dtype) -> nn.Module:
    """Linear layers with the given (out, in) weights; the ENN reads them, never runs them."""
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(cols, rows) for rows, cols in shapes]).to(dtype)


enn_shapes = st.lists(st.one_of(st.tuples(st.integers(1, 30), st.integers(1, 30)),
                                st.sampled_from([(1, 2000), (2000, 1), (1, 1), (3, 900)])),
                      min_size=1, max_size=3)


@FUZZ
@given(layers=enn_shapes, weight_dtype=st.sampled_from(FLOAT_DTYPES),
       enn_dtype=st.sampled_from(FLOAT_DTYPES), ratio=st.sampled_from([0.15, 0.5, 1.0]),
       progress=st.floats(0.0, 1.0))
def test_enn_scores_odd_networks_like_a_float64_reference(layers, weight_dtype, enn_dtype,
                                                          ratio, progress):
    torch.manual_seed(1)
    enn = ENN(ENNConfig(layer_shapes=layers, ratio=ratio, width=4, embed=2, hidden=8))
    reference = copy.deepcopy(enn).double()
    enn = enn.to(enn_dtype)
    model = _model(layers, weight_dtype)

    score = enn.score(model, progress)
    weights = [m.weight for m in model]
    grads = torch.autograd.grad(score, weights)

    assert score.shape == () and score.dtype == enn_dtype
    value = float(score.detach())
    assert 0.0 <= value <= 1.0
    expected = float(reference.score(model, progress).detach())
    tolerance = 1e-4 if enn_dtype in (torch.float32, torch.float64) else 5e-2
    assert value == pytest.approx(expected, abs=tolerance)
    for weight, grad in zip(weights, grads):
        assert grad.dtype == weight.dtype and grad.shape == weight.shape
        assert torch.isfinite(grad.float()).all()


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_enn_refuses_a_model_with_an_empty_layer():
    with pytest.raises(ValueError, match=r"layer_shapes\[0\] must be a pair of positive "
                                         r"integers \(out, in\), but got \(5, 0\)"):
        ENN(ENNConfig(layer_shapes=[(5, 0)]))
    enn = ENN(ENNConfig(layer_shapes=[(5, 3)], width=4, embed=2, hidden=8))
    with pytest.raises(ValueError, match=r"the ENN was trained on layer shapes \[\(5, 3\)\], "
                                         r"but Sequential has \[\(5, 0\)\]"):
        enn.score(_model([(5, 0)], torch.float32))
    with pytest.raises(ValueError, match="cannot render an empty weight matrix"):
        render_weights(_model([(0, 3)], torch.float32))


@pytest.mark.parametrize("layers", [[(1, 1)], [(5, 6), (1, 1)], [(7, 3)]])
def test_a_constant_weight_matrix_gets_a_finite_enn_gradient(layers):
    """The spread of a constant RMS channel is 0: its sqrt must not turn the gradient NaN."""
    enn = ENN(ENNConfig(layer_shapes=layers, width=4, embed=2, hidden=8))
    model = _model(layers, torch.float32)
    with torch.no_grad():
        for module in model:
            module.weight.fill_(0.25)  # constant, like a zero or constant initialisation

    grads = torch.autograd.grad(enn.score(model, 0.5), [m.weight for m in model])

    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.fixture
def enn_2x() -> ENN:
    torch.manual_seed(0)
    return ENN(ENNConfig(layer_shapes=[(5, 6), (3, 5)], width=4, embed=2, hidden=8))


def _images(enn: ENN, batch: int = 2, dtype=torch.float32) -> list[torch.Tensor]:
    return [torch.rand(batch, CHANNELS, h, w).to(dtype) for h, w in enn.config.image_shapes]


@pytest.mark.parametrize(("change", "exception", "message"), [
    (lambda im, p: (im[:1], p), ValueError, "reads 2 layer images, but got 1"),
    (lambda im, p: ([im[0][:, :1], im[1]], p), ValueError,
     r"layer image 0 must have shape \(B, 2, 4, 4\), but got \(2, 1, 4, 4\)"),
    (lambda im, p: ([im[0], im[1][:1]], p), ValueError,
     "layer image 1 holds 1 networks, but layer image 0 holds 2"),
    (lambda im, p: (im, p[:1]), ValueError,
     r"progress must hold one value per network \(2\), but got shape \(1,\)"),
    (lambda im, p: ([im[0].long(), im[1]], p), TypeError,
     "layer image 0 must be a floating-point tensor .*but got torch.int64"),
    (lambda im, p: (im[0], p), TypeError, "images must be a list of 2 tensors"),
])
def test_enn_forward_refuses_malformed_inputs_clearly(enn_2x, change, exception, message):
    images, progress = change(_images(enn_2x), torch.rand(2))
    with pytest.raises(exception, match=message):
        enn_2x(images, progress)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_enn_forward_accepts_images_of_any_float_dtype(enn_2x, dtype):
    images = _images(enn_2x)
    expected = enn_2x(images, torch.full((2,), 0.5))

    scores = enn_2x([img.to(dtype) for img in images], torch.full((2,), 0.5, dtype=dtype))

    assert scores.dtype == torch.float32
    tolerance = 1e-6 if dtype in (torch.float32, torch.float64) else 2e-2
    torch.testing.assert_close(scores, expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("progress", [float("nan"), float("inf"), [0.1, 0.2]])
def test_enn_score_refuses_a_bad_progress(enn_2x, progress):
    with pytest.raises(ValueError, match="progress must be one finite number"):
        enn_2x.score(_model([(5, 6), (3, 5)], torch.float32), progress)
