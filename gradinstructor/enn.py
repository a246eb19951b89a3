"""The Evaluation Neural Network (ENN): a small CNN that scores a network from its weights.

The ENN reads the weight images of a target network (see :mod:`render`) and the
fraction of the training budget already used, and outputs one score in [0, 1]:
the validation accuracy it predicts the network will have at the end of its
budget. One convolutional trunk is shared by all layer images; each layer's
pooled features are joined with per-layer statistics and a learned
layer-position embedding; a head maps them and the progress to the score.

In the RL loop the ENN *is* the critic of the actor-critic agent (see
:mod:`agent`), so the value of a state is the predicted final accuracy.

Example:
    >>> from gradinstructor.tasks import build_mlp
    >>> net = build_mlp([64, 32, 10])
    >>> enn = ENN(layer_shapes_of(net))
    >>> float(enn.score(net, progress=0.0)) <= 1.0
    True
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradinstructor import __version__
from gradinstructor.render import (
    CHANNELS,
    DEFAULT_RATIO,
    check_ratio,
    image_shape,
    layer_shapes,
    render_weights,
)

# 2: the config may say the ENN reads any width (``any_width``, ``layer_kinds``); an ENN
# without them is still written as version 1, which older versions read.
FORMAT_VERSION = 2
layer_shapes_of = layer_shapes


class CheckpointError(ValueError):
    """An ENN checkpoint cannot be used: wrong format, version or target network."""


@dataclasses.dataclass
class ENNConfig:
    """Architecture of the ENN."""

    # (out, in) shape of each weight matrix of the target network, in order.
    layer_shapes: list
    # Rendering ratio per side (0.15 in the paper).
    ratio: float = DEFAULT_RATIO
    # Channels of the convolutional trunk.
    width: int = 16
    # Size of the layer-position embedding.
    embed: int = 8
    # Hidden units of the head.
    hidden: int = 64
    # Trained on several widths of the same depth: reads any network with as many weight
    # matrices (of the same kinds, if recorded); every per-layer feature is pooled over
    # its image, so the head does not depend on the image sizes.
    any_width: bool = False
    # "linear" or "conv" per weight matrix, when recorded (see :func:`config_for_models`).
    layer_kinds: list | None = None

    def __post_init__(self) -> None:
        if isinstance(self.layer_shapes, (str, bytes)) or not isinstance(
                self.layer_shapes, (list, tuple)):
            raise TypeError("ENN layer_shapes must be a list of (out, in) pairs, "
                            f"but got {self.layer_shapes!r}")
        self.layer_shapes = [_shape_pair(i, s) for i, s in enumerate(self.layer_shapes)]
        check_ratio(self.ratio)
        for key in ("width", "embed", "hidden"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"ENN {key} must be at least 1, but got {value!r}")
        if not self.layer_shapes:
            raise ValueError("ENN layer_shapes must name at least one weight matrix")
        if not isinstance(self.any_width, bool):
            raise ValueError(f"ENN any_width must be true or false, but got {self.any_width!r}")
        if self.layer_kinds is not None:
            self.layer_kinds = list(self.layer_kinds)
            if (len(self.layer_kinds) != len(self.layer_shapes)
                    or not set(self.layer_kinds) <= {"linear", "conv"}):
                raise ValueError("ENN layer_kinds must give 'linear' or 'conv' for each of the "
                                 f"{len(self.layer_shapes)} layers, but got {self.layer_kinds!r}")

    @property
    def image_shapes(self) -> list[tuple[int, int]]:
        return [image_shape(r, c, self.ratio) for r, c in self.layer_shapes]


def layer_kinds(model: nn.Module) -> list[str]:
    """"conv" or "linear" for each weight matrix the ENN reads, in order."""
    return ["conv" if isinstance(m, nn.modules.conv._ConvNd) else "linear"
            for m in model.modules()
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
            and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() >= 2]


def config_for_models(models: list[nn.Module], **kwargs: Any) -> ENNConfig:
    """An ENN config for networks of one depth and layer kinds, of one or several widths.

    With several widths among ``models`` the config has ``any_width=True``: the ENN
    then scores a network of any width of that depth (the layer shapes of the first
    model are kept as the reference).

    Raises:
        ValueError: no models, or models of different depths or layer kinds.
    """
    if not models:
        raise ValueError("config_for_models needs at least one model")
    shapes = [layer_shapes(m) for m in models]
    kinds = [layer_kinds(m) for m in models]
    for model_shapes, model_kinds in zip(shapes[1:], kinds[1:]):
        if model_kinds != kinds[0]:
            raise ValueError(
                f"one ENN reads networks of one depth and layer kinds, but got layers "
                f"{kinds[0]} {shapes[0]} and {model_kinds} {model_shapes}")
    return ENNConfig(layer_shapes=shapes[0], any_width=any(s != shapes[0] for s in shapes),
                     layer_kinds=kinds[0], **kwargs)


def _safe_sqrt(value: torch.Tensor) -> torch.Tensor:
    """sqrt with gradient 0 (not inf * 0 = NaN) where ``value`` is 0.

    The spread of an image's RMS channel is exactly 0 for a one-pixel image or a
    constant (e.g. zero-initialised) weight matrix; a plain sqrt would send NaN into
    the target network's gradient there.
    """
    positive = value > 0
    safe = torch.where(positive, value, torch.ones_like(value))
    return torch.where(positive, safe.sqrt(), torch.zeros_like(value))


def _shape_pair(index: int, shape: Any) -> tuple[int, int]:
    """``shape`` as an (out, in) pair of positive integers, or ValueError naming it."""
    try:
        pair = tuple(shape)
    except TypeError:
        pair = ()
    ok = len(pair) == 2 and all(
        not isinstance(v, bool) and isinstance(v, numbers.Integral) and v >= 1 for v in pair)
    if not ok:
        raise ValueError(
            f"ENN layer_shapes[{index}] must be a pair of positive integers (out, in), "
            f"but got {shape!r}")
    return int(pair[0]), int(pair[1])


class Trunk(nn.Module):
    """Two 3x3 convolutions shared by every layer image: (B, C, H, W) -> (B, width, H, W)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(CHANNELS, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the trunk; ``mask`` (1, 1, H, W), if given, zeroes the first layer's output.

        The mask is what lets several layer images share one canvas (see
        :class:`CanvasLayout`): zeroing the gaps between them after the first
        convolution makes the second one see exactly the zero padding it sees on a
        lone image.
        """
        hidden = self.act(self.conv1(image))
        if mask is not None:
            hidden = hidden * mask
        return self.act(self.conv2(hidden))


class CanvasLayout:
    """Where each layer image sits on one shared canvas, so the trunk runs once for all.

    The images are placed side by side along the longer common axis (a horizontal
    strip when the images are wide, a vertical one when they are tall), one zero
    pixel apart. With the trunk's mask (the union of the images) a 3x3 convolution
    stack gives, inside each image, exactly what it gives on the image alone: the
    gap and the bottom/right margins play the role of the zero padding.
    For the mnist5k MLP (images 15x118, 15x15, 4x15) the canvas is 15x150, 2,250
    pixels for 2,055 image pixels, against 5,310 if each were padded to the largest.

    Args:
        image_shapes: (H_l, W_l) of each layer image, in order.
    """

    def __init__(self, image_shapes: list[tuple[int, int]]) -> None:
        heights = [h for h, _ in image_shapes]
        widths = [w for _, w in image_shapes]
        gaps = len(image_shapes) - 1
        horizontal = max(heights) * (sum(widths) + gaps) <= max(widths) * (sum(heights) + gaps)
        self.horizontal = horizontal
        self.shapes = list(image_shapes)
        self.offsets: list[tuple[int, int]] = []  # (row, col) of each image's top-left
        along = 0
        for h, w in image_shapes:
            self.offsets.append((0, along) if horizontal else (along, 0))
            along += (w if horizontal else h) + 1
        along -= 1
        self.height = max(heights) if horizontal else along
        self.width = along if horizontal else max(widths)
        pixels = self.height * self.width
        mask = torch.zeros(self.height, self.width)
        average = torch.zeros(pixels, len(image_shapes))  # (P, L): mean over each image
        member = torch.zeros(len(image_shapes), pixels)  # (L, P): 1 on the image's pixels
        for i, ((h, w), (r, c)) in enumerate(zip(image_shapes, self.offsets)):
            region = torch.zeros(self.height, self.width)
            region[r:r + h, c:c + w] = 1.0
            mask += region
            average[:, i] = region.flatten() / (h * w)
            member[i] = region.flatten()
        self.mask = mask[None, None]  # (1, 1, Hc, Wc)
        self.average = average
        self.member = member

    def to(self, device: torch.device, dtype: torch.dtype) -> CanvasLayout:
        """Move the layout's tensors (in place) to ``device`` and ``dtype``."""
        self.mask = self.mask.to(device, dtype)
        self.average = self.average.to(device, dtype)
        self.member = self.member.to(device, dtype)
        return self

    def pack(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Lay out (B, C, H_l, W_l) images on one zero canvas: (B, C, Hc, Wc)."""
        parts = []
        last = len(images) - 1
        for i, image in enumerate(images):
            h, w = image.shape[-2:]
            if self.horizontal:  # pad below to the canvas height and one gap column right
                pad = (0, 0 if i == last else 1, 0, self.height - h)
            else:
                pad = (0, self.width - w, 0, 0 if i == last else 1)
            parts.append(F.pad(image, pad))
        return torch.cat(parts, dim=3 if self.horizontal else 2)


N_STATS = 3  # per layer: mean of the mean channel, mean and std of the RMS channel


class ENN(nn.Module):
    """Evaluation network: weight images + progress -> predicted final accuracy in [0, 1]."""

    def __init__(self, config: ENNConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.config = config if config is not None else ENNConfig(**kwargs)
        n_layers = len(self.config.layer_shapes)
        width, embed = self.config.width, self.config.embed
        self.trunk = Trunk(width)
        self.layer_embedding = nn.Parameter(torch.randn(n_layers, embed) * 0.1)
        per_layer = width + N_STATS + embed
        self.head = nn.Sequential(
            nn.Linear(n_layers * per_layer + 1, self.config.hidden),
            nn.ReLU(),
            nn.Linear(self.config.hidden, 1),
        )
        # Plain attribute, not a buffer: derived from the config, so kept out of checkpoints.
        self._canvas = CanvasLayout(self.config.image_shapes)
        self.metadata: dict[str, Any] = {}
        self.actor_payload: dict | None = None  # the agent's schedule, if trained by RL

    @property
    def n_layers(self) -> int:
        return len(self.config.layer_shapes)

    def layer_features(self, image: torch.Tensor, index: int) -> torch.Tensor:
        """Features of layer ``index``'s image (B, C, H, W) -> (B, width + N_STATS + embed)."""
        pooled = self.trunk(image).mean(dim=(2, 3))  # (B, width)
        mean_ch, rms_ch = image[:, 0], image[:, 1]
        stats = torch.stack(
            [mean_ch.mean(dim=(1, 2)), rms_ch.mean(dim=(1, 2)),
             _safe_sqrt(rms_ch.flatten(1).var(dim=1, unbiased=False))], dim=1)  # (B, 3)
        embedding = self.layer_embedding[index].expand(image.shape[0], -1)
        return torch.cat([pooled, stats, embedding], dim=1)

    def head_score(self, features: list[torch.Tensor], progress: torch.Tensor) -> torch.Tensor:
        """Score from per-layer features and progress (B,) -> (B,)."""
        joined = torch.cat([*features, progress.reshape(-1, 1)], dim=1)
        return torch.sigmoid(self.head(joined)).squeeze(1)

    def forward(self, images: list[torch.Tensor], progress: torch.Tensor) -> torch.Tensor:
        """Score a batch of networks.

        Args:
            images: one tensor per layer, shape (B, CHANNELS, H_l, W_l).
            progress: fraction of the training budget used, shape (B,).

        Returns:
            Predicted final validation accuracy, shape (B,), in [0, 1].
        """
        images, progress = self._check_inputs(images, progress)
        joined = self.batched_features(images)  # (B, L, per-layer)
        flat = torch.cat([joined.flatten(1), progress.reshape(-1, 1)], dim=1)
        return torch.sigmoid(self.head(flat)).squeeze(1)

    def _check_inputs(self, images: list[torch.Tensor], progress: torch.Tensor
                      ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Check shapes, dtypes and devices; cast to the ENN's dtype. ValueError/TypeError."""
        if isinstance(images, torch.Tensor) or not isinstance(images, (list, tuple)):
            raise TypeError(f"images must be a list of {self.n_layers} tensors, one per layer, "
                            f"but got {type(images).__name__}")
        if len(images) != self.n_layers:
            raise ValueError(
                f"this ENN reads {self.n_layers} layer images, but got {len(images)}"
            )
        param = self.layer_embedding
        batch = None
        for i, (img, shape) in enumerate(zip(images, self.config.image_shapes)):
            expected = f"(B, {CHANNELS}, {shape[0]}, {shape[1]})"
            if not isinstance(img, torch.Tensor) or not img.is_floating_point():
                what = img.dtype if isinstance(img, torch.Tensor) else type(img).__name__
                raise TypeError(f"layer image {i} must be a floating-point tensor {expected}, "
                                f"but got {what}")
            if self.config.any_width and img.dim() == 4:
                shape = tuple(img.shape[-2:])  # any image size: features are pooled per layer
            if img.dim() != 4 or img.shape[1] != CHANNELS or tuple(img.shape[-2:]) != shape:
                raise ValueError(
                    f"layer image {i} must have shape {expected}, "
                    f"but got {tuple(img.shape)}; render it at ratio {self.config.ratio}"
                )
            if batch is not None and img.shape[0] != batch:
                raise ValueError(f"layer image {i} holds {img.shape[0]} networks, but layer "
                                 f"image 0 holds {batch}; every layer needs one per network")
            batch = img.shape[0]
            if img.device != param.device:
                raise ValueError(f"layer image {i} is on {img.device}, but the ENN is on "
                                 f"{param.device}; move one of them (.to(device))")
        if not isinstance(progress, torch.Tensor):
            progress = torch.as_tensor(progress, dtype=param.dtype, device=param.device)
        if progress.numel() != batch:
            raise ValueError(f"progress must hold one value per network ({batch}), "
                             f"but got shape {tuple(progress.shape)}")
        if not progress.is_floating_point():
            progress = progress.float()
        images = [img.to(param.dtype) for img in images]  # no-op when the dtypes agree
        return images, progress.to(param.device, param.dtype)

    def _layout(self, like: torch.Tensor,
                shapes: list[tuple[int, int]] | None = None) -> CanvasLayout:
        """The canvas layout, its tensors on the device and dtype of ``like``.

        ``shapes`` (the image sizes) other than the config's are for an ``any_width`` ENN;
        their layouts are cached.
        """
        layout = self._canvas
        if shapes is not None and shapes != layout.shapes:
            cache = self.__dict__.setdefault("_other_canvases", {})
            key = tuple(shapes)
            if key not in cache:
                if len(cache) >= 64:
                    cache.clear()
                cache[key] = CanvasLayout(list(shapes))
            layout = cache[key]
        if layout.mask.device != like.device or layout.mask.dtype != like.dtype:
            layout.to(like.device, like.dtype)
        return layout

    def batched_features(self, images: list[torch.Tensor]) -> torch.Tensor:
        """The features of every layer image from one trunk call: (B, L, per-layer).

        ``[:, i]`` equals (to float rounding) ``layer_features(images[i], i)``, which
        runs the trunk once per layer; small convolutions are overhead-bound on a
        CPU, so one call on a shared canvas (:class:`CanvasLayout`) costs about as
        much as the largest image alone.

        Args:
            images: one tensor per layer, shape (B, CHANNELS, H_l, W_l).

        Returns:
            (B, n_layers, width + N_STATS + embed): pooled trunk output, per-layer
            statistics and layer embedding, in the order of :meth:`layer_features`.
        """
        layout = self._layout(images[0], [tuple(img.shape[-2:]) for img in images])
        batch = images[0].shape[0]
        canvas = layout.pack(images)  # (B, C, Hc, Wc)
        trunk = self.trunk(canvas, layout.mask).flatten(2)  # (B, width, P)
        pooled = trunk @ layout.average  # (B, width, L): mean over each image
        flat = canvas.flatten(2)  # (B, C, P)
        means = flat @ layout.average  # (B, C, L)
        centred = flat[:, 1] - means[:, 1] @ layout.member  # (B, P); 0 in the gaps
        rms_std = _safe_sqrt((centred * centred) @ layout.average)  # (B, L), population std
        stats = torch.stack([means[:, 0], means[:, 1], rms_std], dim=2)  # (B, L, 3)
        embedding = self.layer_embedding.expand(batch, -1, -1)  # (B, L, embed)
        return torch.cat([pooled.transpose(1, 2), stats, embedding], dim=2)

    def score(self, model: nn.Module, progress: float | torch.Tensor = 0.0) -> torch.Tensor:
        """Score one target network; differentiable in its weights. Returns a 0-d tensor."""
        self.check_model(model)
        images = [img[None] for img in render_weights(model, self.config.ratio)]
        progress_t = torch.as_tensor(progress, dtype=torch.float32).reshape(-1)
        if progress_t.numel() != 1 or not torch.isfinite(progress_t).all():
            raise ValueError(f"progress must be one finite number, but got {progress!r}")
        device = images[0].device
        return self.forward(images, progress_t.to(device))[0]

    # Observations of the RL environment: {"layer0": (B, C*H*W), ..., "progress": (B, 1)}.
    def images_from_obs(self, obs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, (height, width) in enumerate(self.config.image_shapes):
            flat = obs[f"layer{i}"]
            out.append(flat.reshape(flat.shape[0], CHANNELS, height, width))
        return out

    def forward_obs(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Score a batch of observations -> (B, 1), the form SB3 expects of values."""
        return self.forward(self.images_from_obs(obs), obs["progress"].reshape(-1))[:, None]

    def check_model(self, model: nn.Module, ratio: float | None = None) -> None:
        """Raise CheckpointError unless ``model`` has the weight shapes this ENN reads."""
        if ratio is not None and abs(ratio - self.config.ratio) > 1e-12:
            raise CheckpointError(
                f"the ENN was trained on weight images at ratio {self.config.ratio}, "
                f"but ratio={ratio} was asked for; use ratio={self.config.ratio} or "
                "train an ENN at that ratio"
            )
        shapes = layer_shapes(model)
        if len(shapes) != self.n_layers:
            raise CheckpointError(
                f"the ENN reads {self.n_layers} weight matrices {self.config.layer_shapes}, "
                f"but {type(model).__name__} has {len(shapes)}: {shapes}; "
                "train an ENN on this architecture (gradinstructor train-enn)"
            )
        kinds = self.config.layer_kinds
        if kinds is not None and layer_kinds(model) != kinds:
            raise CheckpointError(
                f"the ENN was trained on layers {kinds} {self.config.layer_shapes}, but "
                f"{type(model).__name__} has layers {layer_kinds(model)} {shapes}; "
                "train an ENN on this architecture"
            )
        if self.config.any_width:
            return  # same depth and kinds: any width
        if [tuple(s) for s in shapes] != self.config.layer_shapes:
            raise CheckpointError(
                f"the ENN was trained on layer shapes {self.config.layer_shapes}, but "
                f"{type(model).__name__} has {shapes}; train an ENN on this architecture"
            )

    def save(self, path: str | os.PathLike, actor: dict | None = None,
             **metadata: Any) -> Path:
        """Write the ENN, its config and metadata to ``path`` atomically.

        Args:
            path: where to write (a ``.pt`` file).
            actor: optional payload of the agent's strength schedule
                (see :class:`gradinstructor.agent.ScheduleActor`), stored beside the ENN.
            **metadata: recorded in the checkpoint (task, steps, diagnostics, ...).
        """
        self.metadata.update(metadata)
        if actor is not None:
            self.actor_payload = actor
        plain = not self.config.any_width and self.config.layer_kinds is None
        payload = {
            "format": "gradinstructor-enn",
            "format_version": 1 if plain else FORMAT_VERSION,
            "version": __version__,
            "config": _config_dict(self.config, plain),
            # CPU tensors, wherever the ENN runs: the file loads on any machine, even with
            # a plain torch.load and no map_location
            "state_dict": cpu_tensors(self.state_dict()),
            "metadata": self.metadata,
            "actor": cpu_tensors(self.actor_payload),
        }
        return atomic_torch_save(payload, path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ENN:
        """Load an ENN written by :meth:`save`; never executes code from the file.

        Args:
            path: the checkpoint.
            map_location: as for ``torch.load`` (default the CPU); when it is a device
                (``"cuda"``, a ``torch.device``) the returned ENN lives there too.

        Raises:
            CheckpointError: the file is missing, is not an ENN checkpoint, holds
                anything but tensors and plain data, was written in a newer or an
                unknown format version, or is damaged.
        """
        payload = load_payload(path, "gradinstructor-enn", map_location)
        device = map_location if isinstance(map_location, (str, torch.device)) else None
        try:
            config = dict(payload["config"])
            config["layer_shapes"] = [tuple(s) for s in config["layer_shapes"]]
            if payload["format_version"] < 2:  # version 1 knew no width-free ENNs
                config.pop("any_width", None)
                config.pop("layer_kinds", None)
            enn = cls(ENNConfig(**config))
            if device is not None:  # built on the CPU, filled where the tensors were mapped
                enn = enn.to(device)
            enn.load_state_dict(payload["state_dict"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{path} is a damaged ENN checkpoint: {_first_line(err)}") from None
        enn.metadata = dict(payload.get("metadata") or {})
        enn.actor_payload = payload.get("actor")
        return enn


def _config_dict(config: ENNConfig, plain: bool) -> dict:
    """The config as plain data; without the version-2 fields in a version-1 checkpoint."""
    out = dataclasses.asdict(config)
    if plain:
        out.pop("any_width")
        out.pop("layer_kinds")
    return out


def cpu_tensors(value: Any) -> Any:
    """``value`` with every tensor in it (through dicts, lists and tuples) on the CPU.

    For what is saved: a file of CPU tensors loads on any machine. Tensors already on
    the CPU are kept as they are (not copied).
    """
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: cpu_tensors(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cpu_tensors(v) for v in value)
    return value


def atomic_torch_save(payload: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place.

    The data is flushed to disk before the rename, so a process killed at any
    moment (or a machine that loses power) leaves either the old file or the new
    one at ``path``, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def load_payload(path: str | os.PathLike, kind: str, map_location: Any = "cpu",
                 format_version: int = FORMAT_VERSION) -> dict:
    """Read a checkpoint with ``weights_only=True`` and check its format and version.

    ``weights_only=True`` accepts tensors and plain data (dicts, lists, numbers,
    strings); a file that asks to import anything else is refused before any of
    its code can run.

    Args:
        path: the file.
        kind: the expected ``format`` field (e.g. ``"gradinstructor-enn"``).
        map_location: where to put the tensors.
        format_version: the newest format version of ``kind`` this code reads.

    Raises:
        CheckpointError: missing file, code in the file, damaged file, another
            kind of file, or a format version that is newer or unknown.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        blocked = re.search(r"GLOBAL ([\w.]+)", str(err))
        if blocked:
            raise CheckpointError(
                f"refused to load {path}: it asks to import {blocked.group(1)}, so loading it "
                "could run code; gradinstructor reads checkpoints with "
                "torch.load(weights_only=True), which accepts only tensors and plain data. "
                "Only files written by gradinstructor are accepted"
            ) from None
        raise CheckpointError(
            f"{path} is not a checkpoint this version can read safely: it is damaged, "
            "truncated or not a torch file; only files written by gradinstructor are accepted"
        ) from None
    except Exception as err:
        raise CheckpointError(
            f"{path} is not a checkpoint this version can read safely: it is damaged, "
            f"truncated or not a torch file ({_first_line(err)}); only files written by "
            "gradinstructor are accepted"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != kind:
        raise CheckpointError(f"{path} is not a {kind} checkpoint")
    version = payload.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(
            f"{path} has an unknown format version {version!r}; this gradinstructor "
            f"({__version__}) reads {kind} format versions 1 to {format_version}. It was "
            "damaged or written by another program: re-create it, or upgrade gradinstructor "
            "if a newer one wrote it"
        )
    if version > format_version:
        raise CheckpointError(
            f"{path} has format version {version}, newer than this gradinstructor "
            f"({__version__}) reads (up to {format_version}); upgrade gradinstructor"
        )
    return payload
