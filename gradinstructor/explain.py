"""Explanation: Grad-CAM on the ENN, mapped back onto the target network's weights.

For each layer image, captum's :class:`~captum.attr.LayerGradCam` is run on one
ENN layer (by default the trunk's last convolution) with a forward function in
which only that layer image passes through the trunk (the other layers' features
are held fixed, so the shared trunk is hooked once per call). The map, at the
image's resolution, is interpolated back to the weight matrix's shape, so each
weight gets the relevance of the image block it was pooled into.

Example:
    >>> maps = gradcam(enn, model)                       # doctest: +SKIP
    >>> maps[0].relevance.shape == maps[0].weight.shape  # doctest: +SKIP
    True
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from gradinstructor.enn import ENN
from gradinstructor.render import render_weights, weight_matrices

DEFAULT_LAYER = "trunk.conv2"


@dataclasses.dataclass
class LayerMap:
    """Grad-CAM of one weight matrix."""

    index: int
    weight: np.ndarray  # (out, in): the weight matrix
    relevance: np.ndarray  # (out, in): Grad-CAM interpolated to the weight's shape
    image_relevance: np.ndarray  # (H, W): Grad-CAM at the image's resolution


def conv_layer_names(enn: ENN) -> list[str]:
    """Names of the ENN's convolutions, the layers Grad-CAM can use."""
    return [name for name, m in enn.named_modules() if isinstance(m, nn.Conv2d)]


def resolve_layer(enn: ENN, name: str | None) -> nn.Module:
    """The ENN module called ``name`` (default: the last convolution).

    Raises:
        ValueError: no convolution of that name; lists the valid ones.
    """
    valid = conv_layer_names(enn)
    name = name or valid[-1]
    if name not in valid:
        raise ValueError(f"unknown ENN layer {name!r} for Grad-CAM; valid layers: "
                         f"{', '.join(valid)}")
    return dict(enn.named_modules())[name]


def gradcam(enn: ENN, model: nn.Module, progress: float = 1.0,
            layer: str | None = None) -> list[LayerMap]:
    """Grad-CAM of the ENN's score for every weight matrix of ``model``.

    Args:
        enn: the ENN to explain.
        model: the target network (its shapes must match the ENN's).
        progress: the training progress fed to the ENN.
        layer: ENN layer name (see :func:`conv_layer_names`); default the last conv.

    Returns:
        One :class:`LayerMap` per weight matrix, relevance >= 0 (ReLU'd Grad-CAM).
    """
    enn.check_model(model)
    enn = enn.eval()
    target_layer = resolve_layer(enn, layer)
    with torch.no_grad():
        images = [img[None] for img in render_weights(model, enn.config.ratio)]
        fixed = [enn.layer_features(img, i) for i, img in enumerate(images)]
    progress_t = torch.tensor([progress], dtype=torch.float32)
    maps = []
    for i, (image, weight) in enumerate(zip(images, weight_matrices(model), strict=True)):
        def forward(img, i=i):
            features = list(fixed)
            features[i] = enn.layer_features(img, i)
            return enn.head_score([f.expand(img.shape[0], -1) for f in features],
                                  progress_t.expand(img.shape[0]))

        cam = LayerGradCam(forward, target_layer).attribute(image, relu_attributions=True)
        full = LayerAttribution.interpolate(cam, tuple(weight.shape), interpolate_mode="nearest")
        maps.append(LayerMap(index=i, weight=weight.detach().cpu().numpy(),
                             relevance=full[0, 0].detach().cpu().numpy(),
                             image_relevance=cam[0, 0].detach().cpu().numpy()))
    return maps


def save_maps(maps: list[LayerMap], out_dir: str | os.PathLike, prefix: str = "gradcam",
              title: str = "") -> list[Path]:
    """Save each layer's weights and Grad-CAM side by side as a PNG; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for m in maps:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), constrained_layout=True)
        limit = float(np.abs(m.weight).max()) or 1.0
        shown = axes[0].imshow(m.weight, cmap="coolwarm", vmin=-limit, vmax=limit,
                               aspect="auto", interpolation="nearest")
        axes[0].set_title(f"layer {m.index}: weights {m.weight.shape[0]}x{m.weight.shape[1]}")
        fig.colorbar(shown, ax=axes[0])
        shown = axes[1].imshow(m.relevance, cmap="inferno", aspect="auto",
                               interpolation="nearest")
        axes[1].set_title(f"layer {m.index}: Grad-CAM of the ENN score")
        fig.colorbar(shown, ax=axes[1])
        for ax in axes:
            ax.set_xlabel("input unit")
            ax.set_ylabel("output unit")
        if title:
            fig.suptitle(title)
        path = out_dir / f"{prefix}_layer{m.index}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths
