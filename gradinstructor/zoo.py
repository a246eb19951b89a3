"""Zoo: trained target networks for measuring how well an ENN ranks networks.

A zoo member is a target network of the task's architecture trained with a
drawn seed, initialisation scheme, init scale and learning rate, stopped at a
drawn checkpoint (epoch) of its budget. It records its weights at that
checkpoint, the progress there, and its accuracies at that checkpoint and at
the end of its budget. The zoo is generated from seeds disjoint from the ones
the RL environments draw, so it is held out from the ENN's training.

Two rankers are compared on it (Kendall's tau between score and the final test
accuracy of each member, the quantity the ENN predicts):

* an ENN (trained by RL, or regressed on the zoo's training part);
* a weight-statistics baseline: per-layer mean, variance and quantiles of each
  weight matrix, plus the progress, fed to a gradient-boosted regressor trained
  on the same part of the zoo as the supervised ENN.

Example:
    >>> zoo = make_zoo(load_task("digits"), size=20, seed=0)      # doctest: +SKIP
    >>> stats_tau(zoo.split(0.5))                                 # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats as scipy_stats

from gradinstructor.enn import ENN, ENNConfig, cpu_tensors
from gradinstructor.render import layer_shapes, render_weights, weight_parameters
from gradinstructor.tasks import Task
from gradinstructor.trainer import accuracy, batch_order

logger = logging.getLogger(__name__)

ZOO_SEED_OFFSET = 1_000_003  # zoo networks never share a seed with the RL episodes
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
ZOO_FORMAT = 1


@dataclasses.dataclass
class Member:
    """One trained network of the zoo."""

    weights: list[torch.Tensor]  # the weight matrices at the checkpoint (on the CPU)
    biases: list[torch.Tensor]  # on the CPU: a zoo is the same on every device
    progress: float  # fraction of the budget trained at the checkpoint
    final_test_acc: float  # test accuracy at the end of the budget
    final_val_acc: float
    test_acc: float  # test accuracy at the checkpoint
    settings: dict


@dataclasses.dataclass
class Zoo:
    """A list of members of one task."""

    task_name: str
    members: list[Member]

    def split(self, train_fraction: float = 0.5, seed: int = 0) -> tuple[Zoo, Zoo]:
        """Random train / held-out parts."""
        order = np.random.default_rng(seed).permutation(len(self.members))
        cut = int(round(train_fraction * len(order)))
        pick = lambda idx: Zoo(self.task_name, [self.members[i] for i in idx])  # noqa: E731
        return pick(order[:cut]), pick(order[cut:])

    def targets(self) -> np.ndarray:
        return np.array([m.final_test_acc for m in self.members])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the zoo atomically as CPU tensors and plain values (loads with weights_only,
        on any machine)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": ZOO_FORMAT, "task": self.task_name,
                   "members": [cpu_tensors(dataclasses.asdict(m)) for m in self.members]}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save(payload, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Zoo:
        """Read a zoo written by :meth:`save` (no code is run: ``weights_only=True``).

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the file is not a zoo of this format.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"zoo file {str(path)!r} does not exist; write one with "
                                    "`gradinstructor zoo --out FOLDER`")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # any unreadable file gets the same message
            raise ValueError(f"{path} is not a readable zoo file: {err}") from None
        if not isinstance(payload, dict) or payload.get("format") != ZOO_FORMAT:
            raise ValueError(f"{path} is not a zoo of format {ZOO_FORMAT}; regenerate it with "
                             "`gradinstructor zoo`")
        return cls(payload["task"], [Member(**m) for m in payload["members"]])


def _draw_settings(rng: np.random.Generator, epochs: int) -> dict:
    return {
        "seed": int(rng.integers(2**31 - 1)),
        "init": str(rng.choice(["default", "he", "xavier"])),
        "scale": float(np.exp(rng.uniform(np.log(0.25), np.log(2.0)))),
        "lr_factor": float(np.exp(rng.uniform(np.log(0.1), np.log(3.0)))),
        "checkpoint": int(rng.integers(0, epochs + 1)),  # 0 = at initialisation
    }


def train_member(task: Task, settings: dict) -> Member:
    """Train one network with ``settings``; keep its weights at the checkpoint epoch."""
    cfg, data = task.config, task.data
    model = task.build_model(seed=settings["seed"], init=settings["init"])
    with torch.no_grad():
        for w in weight_parameters(model):
            w.mul_(settings["scale"])
    optimizer = task.make_optimizer(model, cfg.lr * settings["lr_factor"])
    snapshot = None
    if settings["checkpoint"] == 0:
        snapshot = _snapshot(model, task, 0.0)
    steps = task.steps_per_epoch
    for step, idx in enumerate(batch_order(len(data.train_y), cfg.batch_size, cfg.epochs,
                                           settings["seed"])):
        loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        if not torch.isfinite(loss):
            break  # a diverged member keeps its accuracy (chance level) as its target
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % steps == 0 and (step + 1) // steps == settings["checkpoint"]:
            snapshot = _snapshot(model, task, (step + 1) / task.total_steps)
    if snapshot is None:
        snapshot = _snapshot(model, task, 1.0)
    weights, biases, progress, test_acc = snapshot
    return Member(weights=weights, biases=biases, progress=progress,
                  final_test_acc=_safe_acc(model, data.test_x, data.test_y),
                  final_val_acc=_safe_acc(model, data.val_x, data.val_y),
                  test_acc=test_acc, settings=settings)


def _safe_acc(model, x, y) -> float:
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        return 0.0
    return accuracy(model, x, y)


def _snapshot(model, task: Task, progress: float):
    # copies on the CPU, wherever the model trains: a zoo is saved, ranked and reloaded there
    weights = [w.detach().to("cpu", copy=True) for w in weight_parameters(model)]
    biases = [m.bias.detach().to("cpu", copy=True) for m in model
              if getattr(m, "bias", None) is not None]
    return weights, biases, progress, _safe_acc(model, task.data.test_x, task.data.test_y)


def make_zoo(task: Task, size: int, seed: int = 0, progress_bar: bool = False) -> Zoo:
    """Train ``size`` networks of ``task`` with drawn settings (held out from RL seeds)."""
    from tqdm.auto import tqdm

    if size < 2:
        raise ValueError(f"size must be at least 2 to rank networks, but got {size}")
    rng = np.random.default_rng(ZOO_SEED_OFFSET + seed)
    members = [train_member(task, _draw_settings(rng, task.config.epochs))
               for _ in tqdm(range(size), desc="zoo", disable=not progress_bar, leave=False)]
    return Zoo(task.name, members)


def member_model(task: Task, member: Member) -> torch.nn.Module:
    """The member as a module (weights and biases loaded), on the task's device."""
    model = task.build_model(seed=0)
    with torch.no_grad():
        for w, saved in zip(weight_parameters(model), member.weights, strict=True):
            w.copy_(torch.nan_to_num(saved.to(w.device)))
        linears = [m for m in model if getattr(m, "bias", None) is not None]
        for layer, saved in zip(linears, member.biases, strict=True):
            layer.bias.copy_(torch.nan_to_num(saved.to(layer.bias.device)))
    return model


# --------------------------------------------------------------------------- rankers


def weight_statistics(member: Member) -> np.ndarray:
    """Per-layer mean, variance and quantiles of each weight matrix, and the progress."""
    feats = []
    for w in member.weights:
        flat = torch.nan_to_num(w).flatten().double()
        feats += [float(flat.mean()), float(flat.var())]
        levels = torch.tensor(QUANTILES, dtype=flat.dtype, device=flat.device)
        feats += [float(q) for q in torch.quantile(flat, levels)]
    feats.append(member.progress)
    return np.array(feats)


def kendall_tau(scores, targets) -> float:
    tau = scipy_stats.kendalltau(scores, targets).statistic
    return float(tau) if np.isfinite(tau) else 0.0


def stats_tau(train: Zoo, test: Zoo, seed: int = 0) -> float:
    """Kendall's tau on ``test`` of a gradient-boosted regressor on weight statistics."""
    from sklearn.ensemble import GradientBoostingRegressor

    x_train = np.stack([weight_statistics(m) for m in train.members])
    x_test = np.stack([weight_statistics(m) for m in test.members])
    model = GradientBoostingRegressor(random_state=seed).fit(x_train, train.targets())
    return kendall_tau(model.predict(x_test), test.targets())


def enn_scores(enn: ENN, task: Task, zoo: Zoo) -> np.ndarray:
    """The ENN's score of every member at its checkpoint's progress.

    The members are rebuilt on the task's device, and the ENN is moved there (in place,
    as :class:`~gradinstructor.trainer.GradInstructor` does).
    """
    enn = enn.to(task.device)
    with torch.no_grad():
        return np.array([float(enn.score(member_model(task, m), m.progress))
                         for m in zoo.members])


def enn_tau(enn: ENN, task: Task, zoo: Zoo) -> float:
    """Kendall's tau between the ENN's scores and the members' final test accuracy."""
    return kendall_tau(enn_scores(enn, task, zoo), zoo.targets())


def fit_supervised_enn(task: Task, train: Zoo, epochs: int = 200, lr: float = 3e-3,
                       seed: int = 0, config: ENNConfig | None = None) -> ENN:
    """Regress an ENN on the zoo's training part (MSE to final test accuracy).

    The supervised baseline of the design: same architecture as the RL-trained
    ENN, trained on labelled networks instead of by reinforcement learning. It is
    initialised on the CPU (the same numbers on every device) and trained, and
    returned, on the task's device.
    """
    torch.manual_seed(seed)
    shapes = layer_shapes(task.build_model(seed=0))
    enn = ENN(config or ENNConfig(layer_shapes=shapes)).to(task.device)
    with torch.no_grad():
        images = [torch.stack(parts) for parts in zip(*[
            render_weights(member_model(task, m), enn.config.ratio) for m in train.members])]
    progress = torch.tensor([m.progress for m in train.members], dtype=torch.float32,
                            device=task.device)
    target = torch.tensor(train.targets(), dtype=torch.float32, device=task.device)
    optimizer = torch.optim.Adam(enn.parameters(), lr=lr)
    for _ in range(epochs):
        loss = F.mse_loss(enn(images, progress), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    enn.metadata.update(task=task.name, trained="supervised", zoo_size=len(train.members),
                        epochs=epochs)
    return enn.eval()


def rank_zoo(task: Task, zoo: Zoo, enn: ENN | None = None, seed: int = 0) -> dict:
    """Kendall's tau of each ranker on the held-out half of ``zoo``.

    The zoo is split in halves (seeded); the weight-statistics regressor and the
    supervised ENN are fitted on the first, every ranker is scored on the second.

    Args:
        task: the zoo's task.
        zoo: the zoo.
        enn: an ENN trained by RL (it never saw the zoo); left out when None.
        seed: the split and the fits.

    Returns:
        ``{"zoo_size", "held_out", "stats_tau", "supervised_enn_tau"[, "enn_tau"]}``.
    """
    if zoo.task_name != task.name:
        raise ValueError(f"the zoo was made on task {zoo.task_name!r}, not {task.name!r}; "
                         f"rank it with --task {zoo.task_name}")
    train, held_out = zoo.split(0.5, seed=seed)
    result: dict = {"task": task.name, "zoo_size": len(zoo.members),
                    "held_out": len(held_out.members)}
    if enn is not None:
        result["enn_tau"] = enn_tau(enn, task, held_out)
    result["supervised_enn_tau"] = enn_tau(fit_supervised_enn(task, train, seed=seed), task,
                                           held_out)
    result["stats_tau"] = stats_tau(train, held_out, seed=seed)
    return result
