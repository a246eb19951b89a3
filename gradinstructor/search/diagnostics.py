"""Cheap diagnostics of a trained ENN, recorded with each trial so that a model can predict
which ENN will help most (see :mod:`gradinstructor.search.analyze`).

* Critic fit: explained variance and MSE of the final critic on the returns of
  the agent's last rollout (with gamma = 1 the return is the final accuracy).
* Ranking quality: Kendall's tau between the ENN's scores and the true final
  validation accuracy of a small zoo of trained networks held out from RL
  (:mod:`gradinstructor.zoo`), and the MSE of the scores as predictions.
* Gradient size: the norm of dENN/dw relative to the norm of the task
  gradient on the zoo's networks (``grad_ratio``), and that ratio times the
  strength the agent settled on (``push_ratio``): how hard the ENN term pushes.
* The agent's own summary: mean validation accuracy and strength of its last
  quarter of episodes.

Every value is a float, or None where it is undefined (e.g. a constant target).

Example:
    >>> explained_variance([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    1.0
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gradinstructor.enn import ENN
from gradinstructor.render import weight_parameters
from gradinstructor.tasks import Task

logger = logging.getLogger(__name__)

DIAGNOSTICS = ("critic_ev", "critic_mse", "zoo_tau", "zoo_mse", "grad_ratio", "push_ratio",
               "rl_val_acc", "rl_strength")


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def explained_variance(prediction: Sequence[float], target: Sequence[float]) -> float | None:
    """1 - Var(target - prediction) / Var(target); None when the target is constant.

    1 is a perfect fit, 0 no better than predicting the mean, negative worse.
    """
    prediction, target = np.asarray(prediction, float), np.asarray(target, float)
    variance = float(np.var(target))
    if variance <= 1e-12:
        return None
    return _finite(1.0 - float(np.var(target - prediction)) / variance)


def critic_fit(enn: ENN, rollout_buffer) -> dict[str, float | None]:
    """Explained variance and MSE of ``enn`` on the returns stored in an SB3 rollout buffer.

    Args:
        enn: the final critic.
        rollout_buffer: the agent's ``rollout_buffer`` after ``learn`` (its last rollout):
            ``observations`` maps each key to (n_steps, n_envs, dim) or, once SB3 has
            flattened it for training, (n_steps * n_envs, dim); ``returns`` likewise.
    """
    if rollout_buffer is None or not getattr(rollout_buffer, "full", False):
        return {"critic_ev": None, "critic_mse": None}
    # after training SB3 has flattened the buffer to (n_steps * n_envs, ...); flatten either way
    returns = np.asarray(rollout_buffer.returns, float).reshape(-1)  # (N,)
    device = enn.layer_embedding.device  # the buffer is NumPy; the critic may be on a GPU
    obs = {key: torch.as_tensor(value.reshape(len(returns), -1), dtype=torch.float32,
                                device=device)
           for key, value in rollout_buffer.observations.items()}  # (N, dim)
    with torch.no_grad():
        prediction = enn.forward_obs(obs).reshape(-1).cpu().numpy()  # (N,)
    return {"critic_ev": explained_variance(prediction, returns),
            "critic_mse": _finite(float(np.mean((prediction - returns) ** 2)))}


def _grad_norm(grads) -> float:
    return float(torch.sqrt(sum((g.detach().double() ** 2).sum() for g in grads)))


def gradient_ratio(enn: ENN, model: torch.nn.Module, task: Task, progress: float) -> float | None:
    """||dENN/dw|| / ||dL_task/dw|| over the weight matrices of ``model`` (full train set)."""
    weights = weight_parameters(model)
    with torch.enable_grad():
        enn_grads = torch.autograd.grad(enn.score(model, progress), weights)
        loss = F.cross_entropy(model(task.data.train_x), task.data.train_y)
        task_grads = torch.autograd.grad(loss, weights)
    task_norm = _grad_norm(task_grads)
    if not math.isfinite(task_norm) or task_norm <= 0:
        return None
    return _finite(_grad_norm(enn_grads) / task_norm)


def zoo_diagnostics(enn: ENN, task: Task, zoo) -> dict[str, float | None]:
    """Kendall's tau and MSE of the ENN's scores against the zoo's final validation accuracy,
    and the mean gradient ratio over the zoo's networks."""
    from gradinstructor.zoo import enn_scores, kendall_tau, member_model

    targets = np.array([m.final_val_acc for m in zoo.members])
    scores = enn_scores(enn, task, zoo)
    tau = kendall_tau(scores, targets) if np.var(targets) > 0 else None
    ratios = [gradient_ratio(enn, member_model(task, m), task, m.progress) for m in zoo.members]
    ratios = [r for r in ratios if r is not None]
    return {"zoo_tau": _finite(tau) if tau is not None else None,
            "zoo_mse": _finite(float(np.mean((scores - targets) ** 2))),
            "grad_ratio": float(np.mean(ratios)) if ratios else None}


def rl_summary(episodes: list[dict]) -> dict[str, float | None]:
    """Mean validation accuracy and strength over the last quarter of the RL episodes."""
    recent = episodes[-max(1, len(episodes) // 4):]
    if not recent:
        return {"rl_val_acc": None, "rl_strength": None}
    return {"rl_val_acc": float(np.mean([e["val_acc"] for e in recent])),
            "rl_strength": float(np.mean([e["mean_strength"] for e in recent]))}


def measure(enn: ENN, task: Task, zoo, episodes: list[dict], rollout_buffer=None) -> dict:
    """All diagnostics of one trained ENN, keyed by the names in ``DIAGNOSTICS``.

    Args:
        enn: the trained ENN (frozen; only the target weights get gradients).
        task: the task it was trained on.
        zoo: held-out trained networks (:class:`gradinstructor.zoo.Zoo`).
        episodes: the RL episodes (``TrainENNResult.episodes``).
        rollout_buffer: the agent's last rollout, for the critic fit.

    Returns:
        name -> float or None.
    """
    out: dict = {}
    out.update(critic_fit(enn, rollout_buffer))
    out.update(zoo_diagnostics(enn, task, zoo))
    out.update(rl_summary(episodes))
    ratio, strength = out["grad_ratio"], out["rl_strength"]
    out["push_ratio"] = None if ratio is None or strength is None else ratio * strength
    return {name: out[name] for name in DIAGNOSTICS}
