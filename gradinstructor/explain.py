"""Explanation: Grad-CAM on the ENN, mapped back onto the target network's weights.

For each layer image, captum's :class:`~captum.attr.LayerGradCam` is run on one
ENN layer (by default the trunk's last convolution) with a forward function in
which only that layer image passes through the trunk (the other layers' features
are held fixed, so the shared trunk is hooked once per call). The map, at the
image's resolution, is interpolated back to the weight matrix's shape, so each
weight gets the relevance of the image block it was pooled into (nearest
interpolation picks, for every weight, a block whose pooling window contains it).

To show how the ENN's judgement changes over training, :func:`train_with_snapshots`
trains a target network with the ENN term and copies its weights at chosen
fractions of the budget (by default at initialisation, 25%, 50% and 100%), and
:func:`gradcam_series` runs Grad-CAM on every copy.

Two limits of the reading, by construction of the ENN: the relevance is constant
over each image block (about 1/ratio^2 weights share one value), and the ENN's
per-layer statistics (mean and spread of the channels) reach its head without
passing through the convolutions, so Grad-CAM sees only the trunk's share of
what the score rests on.

Example:
    >>> maps = gradcam(enn, model)                       # doctest: +SKIP
    >>> maps[0].relevance.shape == maps[0].weight.shape  # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from gradinstructor.enn import ENN
from gradinstructor.render import render_weights, weight_matrices
from gradinstructor.trainer import GradInstructor, Strength, TrainResult, fit_target

if TYPE_CHECKING:
    from gradinstructor.tasks import Task

DEFAULT_LAYER = "trunk.conv2"
# Points of the training budget at which the weights are explained.
DEFAULT_FRACTIONS = (0.0, 0.25, 0.5, 1.0)
SUMMARY_FILE = "gradcam.json"


@dataclasses.dataclass
class LayerMap:
    """Grad-CAM of one weight matrix."""

    index: int
    weight: np.ndarray  # (out, in): the weight matrix
    relevance: np.ndarray  # (out, in): Grad-CAM interpolated to the weight's shape
    image_relevance: np.ndarray  # (H, W): Grad-CAM at the image's resolution


@dataclasses.dataclass
class Snapshot:
    """The target network's parameters at one point of its training."""

    step: int  # optimiser steps taken before the copy
    progress: float  # step / total steps
    state: dict[str, torch.Tensor]  # a copy of the model's state_dict

    @property
    def label(self) -> str:
        """"init", "trained" or the share of the budget, e.g. "25%"."""
        if self.progress <= 0.0:
            return "init"
        if self.progress >= 1.0:
            return "trained"
        return f"{100 * self.progress:.0f}%"

    @property
    def tag(self) -> str:
        """The label as a file-name part: "init", "p25", "trained"."""
        return self.label if not self.label.endswith("%") else f"p{self.label[:-1]}"


def conv_layer_names(enn: ENN) -> list[str]:
    """Names of the ENN's convolutions, the layers Grad-CAM can use.

    Args:
        enn: the ENN.

    Returns:
        Module names such as ``["trunk.conv1", "trunk.conv2"]``, in forward order.
    """
    return [name for name, m in enn.named_modules() if isinstance(m, nn.Conv2d)]


def layer_name(enn: ENN, name: str | None) -> str:
    """The ENN layer name Grad-CAM will use: ``name``, or the last convolution.

    Raises:
        ValueError: no convolution of that name; lists the valid ones.
    """
    valid = conv_layer_names(enn)
    if name is None:
        return valid[-1]
    if name not in valid:
        raise ValueError(f"unknown ENN layer {name!r} for Grad-CAM (layer=...); valid layers: "
                         f"{', '.join(valid)}. Pick one of them, or leave it out for the "
                         "last convolution")
    return name


def resolve_layer(enn: ENN, name: str | None) -> nn.Module:
    """The ENN module called ``name`` (default: the last convolution).

    Raises:
        ValueError: no convolution of that name; lists the valid ones.
    """
    return dict(enn.named_modules())[layer_name(enn, name)]


def gradcam(enn: ENN, model: nn.Module, progress: float = 1.0,
            layer: str | None = None) -> list[LayerMap]:
    """Grad-CAM of the ENN's score for every weight matrix of ``model``.

    Args:
        enn: the ENN to explain; it follows ``model`` to its device (moved in place, as
            :class:`~gradinstructor.trainer.GradInstructor` does).
        model: the target network (its shapes must match the ENN's), on any device.
        progress: the training progress fed to the ENN.
        layer: ENN layer name (see :func:`conv_layer_names`); default the last conv.

    Returns:
        One :class:`LayerMap` per weight matrix, relevance >= 0 (ReLU'd Grad-CAM);
        ``relevance`` has the weight matrix's shape (out, in). The arrays are NumPy
        copies on the CPU, whatever the device.

    Raises:
        ValueError: unknown ``layer``.
        CheckpointError: ``model`` does not have the layer shapes the ENN reads.
    """
    # copies: a view would change with the model (gradcam_series reloads one probe)
    return [LayerMap(index=i, weight=weight.cpu().numpy().copy(),
                     relevance=relevance.cpu().numpy(), image_relevance=cam.cpu().numpy())
            for i, (weight, relevance, cam) in enumerate(gradcam_tensors(enn, model, progress,
                                                                         layer))]


def gradcam_tensors(enn: ENN, model: nn.Module, progress: float = 1.0,
                    layer: str | None = None
                    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """What :func:`gradcam` computes, as detached tensors on ``model``'s device.

    Args:
        as :func:`gradcam`; the ENN is moved (in place) to ``model``'s device.

    Returns:
        Per weight matrix: ``(weight, relevance, image_relevance)``, the weight matrix
        (out, in) (a view of the model's), Grad-CAM interpolated to its shape, and
        Grad-CAM at the image's resolution (H, W).

    Raises:
        ValueError: unknown ``layer``.
        CheckpointError: ``model`` does not have the layer shapes the ENN reads.
    """
    enn.check_model(model)
    target_layer = resolve_layer(enn, layer)
    with torch.no_grad():
        images = [img[None] for img in render_weights(model, enn.config.ratio)]
        enn = enn.to(images[0].device).eval()  # a no-op when they agree
        fixed = [enn.layer_features(img, i) for i, img in enumerate(images)]
    # the ENN's head joins the progress to features on the images' device
    progress_t = torch.tensor([progress], dtype=torch.float32, device=images[0].device)
    out = []
    for i, (image, weight) in enumerate(zip(images, weight_matrices(model), strict=True)):
        def forward(img, i=i):
            features = list(fixed)
            features[i] = enn.layer_features(img, i)
            return enn.head_score([f.expand(img.shape[0], -1) for f in features],
                                  progress_t.expand(img.shape[0]))

        cam = LayerGradCam(forward, target_layer).attribute(image, relu_attributions=True)
        # (1, 1, H, W) -> (1, 1, out, in); the trunk keeps the image's size (padding 1)
        full = LayerAttribution.interpolate(cam, tuple(weight.shape), interpolate_mode="nearest")
        out.append((weight.detach(), full[0, 0].detach(), cam[0, 0].detach()))
    return out


# --------------------------------------------------------------------------- over training


class SnapshotInstructor(GradInstructor):
    """A :class:`GradInstructor` that also copies the target's parameters at chosen steps.

    The copy at step ``s`` is taken when the loss of step ``s`` is built, before
    that step's update, so it holds the weights after ``s`` updates. The last
    point (the whole budget) is taken by :meth:`finish` after training. Only the
    explanation uses this class; plain and ENN training elsewhere are unchanged.

    Args:
        *args: as :class:`GradInstructor`.
        fractions: points of the budget in [0, 1] to copy the weights at.
        **kwargs: as :class:`GradInstructor`.

    Raises:
        ValueError: a fraction outside [0, 1], or none at all.
    """

    def __init__(self, *args, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        fractions = sorted(set(float(f) for f in fractions))
        if not fractions or fractions[0] < 0.0 or fractions[-1] > 1.0:
            raise ValueError(f"fractions must be points of the budget in [0, 1], but got "
                             f"{fractions!r}; e.g. (0, 0.25, 0.5, 1)")
        self.snapshot_steps = sorted({round(f * self.total_steps) for f in fractions})
        self.snapshots: list[Snapshot] = []

    def _take(self) -> None:
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.snapshots.append(Snapshot(self.step, self.step / self.total_steps, state))

    def __call__(self, loss: torch.Tensor) -> torch.Tensor:
        if self.step in self.snapshot_steps and (
                not self.snapshots or self.snapshots[-1].step != self.step):
            self._take()
        return super().__call__(loss)

    def finish(self) -> list[Snapshot]:
        """Take the copies still due (the end of the budget); return all of them."""
        if self.step in self.snapshot_steps and (
                not self.snapshots or self.snapshots[-1].step != self.step):
            self._take()
        return self.snapshots


def train_with_snapshots(task: Task, model: nn.Module, enn: ENN, seed: int,
                         strength: Strength = 10.0,
                         fractions: Sequence[float] = DEFAULT_FRACTIONS,
                         every: int = 1) -> tuple[list[Snapshot], TrainResult]:
    """Train ``model`` with the ENN term and copy its weights along the way.

    Args:
        task: the task (data, optimiser, budget).
        model: a freshly initialised target network; trained in place.
        enn: the ENN whose gradient is added.
        seed: the minibatch order.
        strength: the ENN strength (constant, schedule or ScheduleActor).
        fractions: points of the budget to copy the weights at.
        every: recompute the ENN gradient every this many steps.

    Returns:
        The snapshots, in training order, and the training result.
    """
    instructor = SnapshotInstructor(model, enn, strength=strength, total_steps=task.total_steps,
                                    segments=task.config.segments, every=every,
                                    spread=task.config.optimizer != "sgd",
                                    fractions=fractions)
    result = fit_target(task, model, seed, instructor=instructor, method="enn")
    return instructor.finish(), result


def gradcam_series(enn: ENN, model: nn.Module, snapshots: Sequence[Snapshot],
                   layer: str | None = None) -> list[list[LayerMap]]:
    """Grad-CAM of every snapshot, each at its own progress.

    Args:
        enn: the ENN.
        model: a network of the snapshots' architecture (left unchanged).
        snapshots: from :func:`train_with_snapshots`.
        layer: ENN layer name; default the last convolution.

    Returns:
        ``series[s][l]``: the map of layer ``l`` at snapshot ``s``.
    """
    probe = copy.deepcopy(model)
    series = []
    for snap in snapshots:
        probe.load_state_dict(snap.state)
        series.append(gradcam(enn, probe, progress=snap.progress, layer=layer))
    return series


def enn_scores(enn: ENN, model: nn.Module, snapshots: Sequence[Snapshot]) -> list[float]:
    """The ENN's score of each snapshot at its progress (the ENN follows ``model``'s device)."""
    probe = copy.deepcopy(model)
    enn = enn.to(weight_matrices(probe)[0].device)
    scores = []
    with torch.no_grad():
        for snap in snapshots:
            probe.load_state_dict(snap.state)
            scores.append(float(enn.score(probe, snap.progress)))
    return scores


def top_share(relevance: np.ndarray, fraction: float = 0.1) -> float:
    """Share of the total relevance held by the top ``fraction`` of weights (0..1).

    A flat map gives about ``fraction``; a map focused on few weights gives near 1.
    """
    flat = np.sort(relevance.ravel())[::-1]
    total = float(flat.sum())
    if total <= 0.0:
        return float("nan")
    return float(flat[: max(1, round(fraction * flat.size))].sum() / total)


# --------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_maps(maps: list[LayerMap], out_dir: str | os.PathLike, prefix: str = "gradcam",
              title: str = "") -> list[Path]:
    """Save each layer's weights and Grad-CAM side by side as a PNG.

    Args:
        maps: from :func:`gradcam`.
        out_dir: folder to write into (created).
        prefix: file names are ``{prefix}_layer{i}.png``.
        title: figure title.

    Returns:
        The paths written, one per layer.
    """
    plt = _plt()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for m in maps:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
        _fixed_layout(fig, rows=1, title=bool(title))
        _draw_pair(fig, axes, m, float(np.abs(m.weight).max()) or 1.0)
        if title:
            fig.suptitle(title)
        path = out_dir / f"{prefix}_layer{m.index}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def _fixed_layout(fig, rows: int, title: bool) -> None:
    """Margins in inches for rows of (weights, Grad-CAM) panel pairs.

    A fixed layout, not matplotlib's constrained one: that one measures every tick
    label of every panel and took half the time of the figures of a run.
    """
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=0.6 / width, right=1 - 0.15 / width,
                        bottom=0.45 / height, top=1 - (0.55 if title else 0.3) / height,
                        wspace=0.22, hspace=0.75 if rows > 1 else 0.0)


def _draw_pair(fig, axes, m: LayerMap, limit: float, label: str = "") -> None:
    """Weights (left) and Grad-CAM (right) of one layer map on two axes."""
    prefix = f"{label}: " if label else f"layer {m.index}: "
    shown = axes[0].imshow(m.weight, cmap="coolwarm", vmin=-limit, vmax=limit,
                           aspect="auto", interpolation="nearest")
    axes[0].set_title(f"{prefix}weights {m.weight.shape[0]}x{m.weight.shape[1]}", fontsize=9)
    fig.colorbar(shown, ax=axes[0])
    peak = float(m.relevance.max())
    shown = axes[1].imshow(m.relevance, cmap="inferno", vmin=0.0, vmax=peak or 1.0,
                           aspect="auto", interpolation="nearest")
    if peak > 0:
        axes[1].set_title(f"{prefix}Grad-CAM (max {peak:.3g})", fontsize=9)
    else:  # an all-black panel would look like a rendering failure: say what it means
        axes[1].set_title(f"{prefix}Grad-CAM (0 everywhere)", fontsize=9)
        axes[1].text(0.5, 0.5, "Grad-CAM is 0 everywhere: no region of this layer\n"
                     "raises the ENN's score (all its evidence is negative)",
                     transform=axes[1].transAxes, ha="center", va="center", fontsize=8,
                     color="white")
    fig.colorbar(shown, ax=axes[1])
    for ax in axes:
        ax.set_xlabel("input unit", fontsize=8)
        ax.set_ylabel("output unit", fontsize=8)
        ax.tick_params(labelsize=7)


def save_layer_grid(series: Sequence[Sequence[LayerMap]], snapshots: Sequence[Snapshot],
                    index: int, path: str | os.PathLike) -> Path:
    """One layer over training: a row per snapshot, weights and Grad-CAM side by side.

    The weights share one colour scale over the rows, so their growth shows; each
    Grad-CAM panel has its own scale (its maximum is in the title), so its pattern
    shows whatever its size.

    Args:
        series: from :func:`gradcam_series`.
        snapshots: the snapshots the series was computed on.
        index: the layer.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    plt = _plt()
    maps = [row[index] for row in series]
    limit = max(float(np.abs(m.weight).max()) for m in maps) or 1.0
    fig, axes = plt.subplots(len(maps), 2, figsize=(10, 0.4 + 2.1 * len(maps)), squeeze=False)
    _fixed_layout(fig, rows=len(maps), title=True)
    for row, (m, snap) in enumerate(zip(maps, snapshots)):
        _draw_pair(fig, axes[row], m, limit, label=f"{snap.label} (step {snap.step})")
    shape = maps[0].weight.shape
    fig.suptitle(f"layer {index} ({shape[0]}x{shape[1]}) over training", fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def save_series(series: Sequence[Sequence[LayerMap]], snapshots: Sequence[Snapshot],
                out_dir: str | os.PathLike, scores: Sequence[float] | None = None,
                **info) -> dict:
    """Write the Grad-CAM figures of a training run and their summary ``gradcam.json``.

    Files, in ``out_dir``: ``layer{i}.png`` (the layer over training, for the
    dashboard), ``steps/layer{i}_{tag}.png`` (one layer at one snapshot, for the
    tracker) and ``gradcam.json`` (what was drawn, with the ENN score and the
    relevance's concentration at each snapshot; paths relative to ``out_dir``).

    Args:
        series: from :func:`gradcam_series`.
        snapshots: the snapshots it was computed on.
        out_dir: the run folder's ``gradcam/``.
        scores: the ENN's score at each snapshot (see :func:`enn_scores`).
        **info: recorded in the summary (ENN layer, task, seed, strength, ...).

    Returns:
        The summary, as written.

    Raises:
        ValueError: ``series`` and ``snapshots`` differ in length.
    """
    if len(series) != len(snapshots):
        raise ValueError(f"series has {len(series)} entries but snapshots has "
                         f"{len(snapshots)}; pass the snapshots the series was computed on")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {**info, "snapshots": [], "layers": []}
    for s, (maps, snap) in enumerate(zip(series, snapshots)):
        files = save_maps(maps, out_dir / "steps", prefix=snap.tag,
                          title=f"{snap.label} (step {snap.step})")
        summary["snapshots"].append({
            "label": snap.label, "tag": snap.tag, "step": snap.step, "progress": snap.progress,
            "enn_score": None if scores is None else float(scores[s]),
            "files": [str(p.relative_to(out_dir)) for p in files],
        })
    for index in range(len(series[0]) if series else 0):
        grid = save_layer_grid(series, snapshots, index, out_dir / f"layer{index}.png")
        summary["layers"].append({
            "index": index,
            "shape": list(series[0][index].weight.shape),
            "image_shape": list(series[0][index].image_relevance.shape),
            "grid": grid.name,
            "top10_share": [top_share(row[index].relevance) for row in series],
            "relevance_max": [float(row[index].relevance.max()) for row in series],
        })
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    return summary
