"""Weight images: every 2-D weight matrix of a network rendered at a lower resolution.

A weight matrix W (out x in) becomes an image of about (ratio*out) x (ratio*in)
pixels (the paper's 0.15^2 of the resolution at the default ratio 0.15) by area
pooling. Two channels per pixel:

* the block mean of W, and
* the block RMS of W,

both multiplied by sqrt(in) so that the standard initialisations land near 1
whatever the width. The block mean alone is near zero for random weights, so
an ENN reading only it could neither see nor push the scale of the weights
(see the design's Calibration); the RMS channel carries it. The rendering is
made of differentiable torch operations, so a score computed from the images
has a gradient with respect to every weight.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(784, 100), torch.nn.ReLU(),
    ...                           torch.nn.Linear(100, 10))
    >>> [tuple(img.shape) for img in render_weights(net)]
    [(2, 15, 118), (2, 4, 15)]
"""

from __future__ import annotations

import functools
import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_RATIO = 0.15
MIN_SIDE = 4  # floor on each side of an image, so a 3x3 convolution has room
CHANNELS = 2  # block mean and block RMS
_EPS = 1e-12


def weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The weight parameters of the model's Linear and convolution layers, in order.

    Biases, norms and other 1-D parameters are skipped.

    Raises:
        ValueError: if the model has no such weight.
    """
    params = []
    for module in model.modules():
        if not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
            params.append(weight)
    if not params:
        raise ValueError(
            f"model {type(model).__name__} has no 2-D weight matrix (Linear or Conv layer) "
            "for the ENN to read; wrap a model that has at least one"
        )
    return params


def weight_matrices(model: nn.Module) -> list[torch.Tensor]:
    """The 2-D views of the model's weight matrices, in registration order.

    A ``Linear`` weight is taken as is; a convolution kernel (out, in, *k) is
    reshaped to out x (in * prod(k)).

    Raises:
        ValueError: if the model has no weight matrix.
    """
    return [w.flatten(1) for w in weight_parameters(model)]


# Pooling along an axis is a dense (n_out, n_in) matrix product while the matrix is
# small; above this many elements (16 MB in float32) it is adaptive_avg_pool2d instead,
# so a very wide or very tall layer costs memory in proportion to its size.
MAX_POOL_MATRIX = 2**22
_CACHED_POOL_MATRIX = 2**20  # matrices up to 4 MB are kept for reuse


def _pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) matrix of adaptive average pooling along one axis.

    Bin i covers [floor(i*n_in/n_out), ceil((i+1)*n_in/n_out)), exactly as
    ``torch.nn.functional.adaptive_avg_pool1d``; as a matrix product it is an
    order of magnitude faster on a CPU than the pooling kernel.
    """
    if n_in * n_out <= _CACHED_POOL_MATRIX:
        return _cached_pool_matrix(n_in, n_out)
    return _build_pool_matrix(n_in, n_out)


@functools.lru_cache(maxsize=128)
def _cached_pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    return _build_pool_matrix(n_in, n_out)


def _build_pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    index = torch.arange(n_out)
    start = (index * n_in) // n_out
    end = -((-(index + 1) * n_in) // n_out)  # ceil((i + 1) * n_in / n_out)
    columns = torch.arange(n_in)
    inside = (columns[None] >= start[:, None]) & (columns[None] < end[:, None])
    return inside.float() / (end - start).float()[:, None]


def image_shape(rows: int, cols: int, ratio: float = DEFAULT_RATIO) -> tuple[int, int]:
    """Height and width of the image of a rows x cols matrix.

    Each side is round(ratio * side), at least MIN_SIDE, and never more than the
    side itself (a matrix is not upsampled): 784 x 100 at 0.15 gives 118 x 15.
    """
    check_ratio(ratio)
    for side_name, n in (("rows", rows), ("cols", cols)):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise TypeError(f"{side_name} must be an integer, but got {n!r}")
    if rows < 1 or cols < 1:
        raise ValueError(f"cannot render an empty weight matrix of shape {rows} x {cols}")

    def side(n: int) -> int:
        return min(n, max(MIN_SIDE, round(ratio * n)))

    return side(rows), side(cols)


def check_ratio(ratio: float) -> None:
    """Raise ValueError unless ``ratio`` is a number in (0, 1]."""
    if (isinstance(ratio, bool) or not isinstance(ratio, numbers.Real)
            or math.isnan(ratio) or not 0 < ratio <= 1):
        raise ValueError(f"ratio must be in (0, 1], but got {ratio!r}")


def _check_weights(weights: object, what: str) -> None:
    """TypeError unless ``weights`` is a real floating-point tensor."""
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, but got {type(weights).__name__}")
    if not weights.is_floating_point():
        raise TypeError(
            f"{what} must have a floating-point dtype (float16, bfloat16, float32, float64), "
            f"but got {weights.dtype}"
        )


def render_matrix(weight: torch.Tensor, ratio: float = DEFAULT_RATIO) -> torch.Tensor:
    """Render one matrix (out x in) to an image of shape (CHANNELS, H, W).

    Computed in float32 whatever the weight's dtype; differentiable in ``weight``.

    Raises:
        TypeError: ``weight`` is not a floating-point tensor.
        ValueError: ``weight`` is not 2-D or is empty, or ``ratio`` is not in (0, 1].
    """
    _check_weights(weight, "the weight matrix")
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(weight.shape)}")
    return render_stack(weight[None], ratio)[0]


def render_stack(weights: torch.Tensor, ratio: float = DEFAULT_RATIO) -> torch.Tensor:
    """Render a stack of same-shaped matrices in one go: (N, out, in) -> (N, CHANNELS, H, W).

    The image of ``weights[i]`` equals ``render_matrix(weights[i], ratio)`` (to float
    rounding); one call for N networks is what lets a population of target networks
    (:mod:`gradinstructor.vec_env`) be rendered at the cost of a few matrix products.

    Args:
        weights: (N, out, in) weight matrices of the same shape; any float dtype.
        ratio: rendering ratio per side.

    Returns:
        (N, CHANNELS, H, W) float32 images, differentiable in ``weights``.

    Raises:
        TypeError: ``weights`` is not a floating-point tensor.
        ValueError: ``weights`` is not 3-D, a matrix is empty, or ``ratio`` is not in (0, 1].
    """
    _check_weights(weights, "the weight stack")
    if weights.dim() != 3:
        raise ValueError(
            f"expected a stack of weight matrices (N, out, in), got shape {tuple(weights.shape)}"
        )
    rows, cols = weights.shape[1:]
    height, width = image_shape(rows, cols, ratio=ratio)
    w = weights.float() * math.sqrt(cols)  # (N, out, in)
    both = torch.stack([w, w * w], dim=1)  # (N, 2, out, in): values and squares
    if max(height * rows, width * cols) > MAX_POOL_MATRIX:  # a very wide or tall matrix
        n = weights.shape[0]
        pooled = F.adaptive_avg_pool2d(both.reshape(n * CHANNELS, rows, cols), (height, width))
        pooled = pooled.reshape(n, CHANNELS, height, width)
    else:
        pool_rows = _pool_matrix(rows, height).to(weights.device)  # (H, out)
        pool_cols = _pool_matrix(cols, width).to(weights.device).T  # (in, W)
        # P_r @ X @ P_c in the cheaper order: for a 100 x 784 layer pooled to 15 x 118,
        # pooling the long side first is ~7x fewer multiply-adds than going left to right.
        if (rows * cols * width + height * rows * width
                <= height * rows * cols + height * cols * width):
            pooled = pool_rows @ (both @ pool_cols)  # (N, 2, H, W)
        else:
            pooled = (pool_rows @ both) @ pool_cols
    mean, square = pooled.unbind(1)  # (N, H, W) each
    return torch.stack([mean, (square + _EPS).sqrt()], dim=1)  # (N, 2, H, W)


def render_weights(model: nn.Module, ratio: float = DEFAULT_RATIO) -> list[torch.Tensor]:
    """Render every weight matrix of ``model``: a list of (CHANNELS, H_l, W_l) images."""
    return [render_matrix(w, ratio) for w in weight_matrices(model)]


def layer_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """The (out, in) shapes of the model's weight matrices."""
    return [tuple(w.shape) for w in weight_matrices(model)]
