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

import torch
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
    return [w.reshape(w.shape[0], -1) for w in weight_parameters(model)]


@functools.lru_cache(maxsize=256)
def _pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) matrix of adaptive average pooling along one axis.

    Bin i covers [floor(i*n_in/n_out), ceil((i+1)*n_in/n_out)), exactly as
    ``torch.nn.functional.adaptive_avg_pool1d``; as a matrix product it is an
    order of magnitude faster on a CPU than the pooling kernel.
    """
    pool = torch.zeros(n_out, n_in)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -(-((i + 1) * n_in) // n_out)
        pool[i, start:end] = 1.0 / (end - start)
    return pool


def image_shape(rows: int, cols: int, ratio: float = DEFAULT_RATIO) -> tuple[int, int]:
    """Height and width of the image of a rows x cols matrix.

    Each side is round(ratio * side), at least MIN_SIDE, and never more than the
    side itself (a matrix is not upsampled): 784 x 100 at 0.15 gives 118 x 15.
    """
    check_ratio(ratio)
    if rows < 1 or cols < 1:
        raise ValueError(f"cannot render an empty weight matrix of shape {rows} x {cols}")

    def side(n: int) -> int:
        return min(n, max(MIN_SIDE, round(ratio * n)))

    return side(rows), side(cols)


def check_ratio(ratio: float) -> None:
    if not isinstance(ratio, (int, float)) or not 0 < ratio <= 1 or math.isnan(ratio):
        raise ValueError(f"ratio must be in (0, 1], but got {ratio!r}")


def render_matrix(weight: torch.Tensor, ratio: float = DEFAULT_RATIO) -> torch.Tensor:
    """Render one matrix (out x in) to an image of shape (CHANNELS, H, W).

    Computed in float32 whatever the weight's dtype; differentiable in ``weight``.
    """
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D weight matrix, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    height, width = image_shape(rows, cols, ratio=ratio)
    pool_rows = _pool_matrix(rows, height).to(weight.device)  # (H, out)
    pool_cols = _pool_matrix(cols, width).to(weight.device).T  # (in, W)
    w = weight.float() * math.sqrt(cols)  # (out, in)
    mean = pool_rows @ w @ pool_cols  # (H, W)
    rms = (pool_rows @ (w * w) @ pool_cols + _EPS).sqrt()
    return torch.stack([mean, rms])  # (2, H, W)


def render_weights(model: nn.Module, ratio: float = DEFAULT_RATIO) -> list[torch.Tensor]:
    """Render every weight matrix of ``model``: a list of (CHANNELS, H_l, W_l) images."""
    return [render_matrix(w, ratio) for w in weight_matrices(model)]


def layer_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """The (out, in) shapes of the model's weight matrices."""
    return [tuple(w.shape) for w in weight_matrices(model)]
