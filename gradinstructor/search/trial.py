"""One trial of a sweep: train an ENN by RL with the trial's settings, measure what it brings.

The settings a sweep can set are the parameters a trial knows:

* the trial's own settings (:class:`TrialSettings`: task, budget, seeds, ...);
* the RL agent's settings, by their names in :class:`~gradinstructor.config.AgentConfig`
  (``learning_rate``, ``n_steps``, ..., ``max_strength``, the range of the ENN strength);
* the ENN's architecture and rendering ratio (``enn_width``, ``enn_embed``,
  ``enn_hidden``, ``ratio``; see :class:`~gradinstructor.enn.ENNConfig`).

The objective is the downstream gain: the validation accuracy of target
networks trained with the ENN term minus that of plain training, in points,
averaged over ``seeds`` target seeds (RL results are noisy; one seed misleads).
A trial also records the ENN's cheap diagnostics (:mod:`.diagnostics`).

Example:
    >>> plan = plan_trial({"task": "digits", "timesteps": 40, "enn_width": 8})
    >>> plan.agent.max_strength, plan.enn
    (30.0, {'width': 8})
    >>> result = run_trial(plan)                                      # doctest: +SKIP
    >>> result.metrics["gain"]                                        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradinstructor.config import (
    AgentConfig,
    SettingsError,
    from_dict,
    load_agent_config,
    read_yaml,
    require,
    settings_path,
)
from gradinstructor.enn import ENN, ENNConfig
from gradinstructor.search.diagnostics import measure
from gradinstructor.tasks import Task
from gradinstructor.tracking import NullTracker, Tracker

logger = logging.getLogger(__name__)

DOWNSTREAM_SEED = 1000  # target seeds of the downstream comparison start here
ZOO_SEED = 7  # one held-out zoo per task, the same for every trial


@dataclasses.dataclass
class TrialSettings:
    """What a trial does, beyond the agent's and the ENN's settings."""

    # Task name (tasks/NAME.yaml) or path of a task file.
    task: str = "digits"
    # Keep only the first this many training examples (None: the task's split).
    train_size: int | None = None
    # Epochs of target training (None: the task's). Shrinking caps segments at 4.
    epochs: int | None = None
    # Agent settings (agents/NAME.yaml) that the sweep's agent parameters override.
    agent: str = "ppo"
    # RL segments played per trial, over all environments.
    timesteps: int = 480
    # Seeds the RL agent and its environments.
    seed: int = 0
    # Target seeds over which the downstream gain is averaged.
    seeds: int = 3
    # Downstream ENN strength: "actor" (the trained schedule) or a non-negative number.
    strength: Any = "actor"
    # Recompute the ENN gradient every this many minibatch steps.
    enn_every: int = 1
    # Held-out trained networks on which the ENN's ranking quality is measured.
    zoo_size: int = 8

    def validate(self, where: str) -> None:
        for key in ("timesteps", "seeds", "enn_every"):
            require(where, key, getattr(self, key) >= 1, getattr(self, key), "at least 1")
        require(where, "zoo_size", self.zoo_size >= 2, self.zoo_size,
                "at least 2 (a ranking needs two networks)")
        for key in ("train_size", "epochs"):
            value = getattr(self, key)
            require(where, key, value is None or value >= 1, value, "at least 1, or null")
        ok = self.strength == "actor" or (
            isinstance(self.strength, (int, float)) and not isinstance(self.strength, bool)
            and self.strength >= 0)
        require(where, "strength", ok, self.strength, "'actor' or a non-negative number")


TRIAL_PARAMETERS = tuple(f.name for f in dataclasses.fields(TrialSettings))
AGENT_PARAMETERS = tuple(f.name for f in dataclasses.fields(AgentConfig) if f.name != "name")
# sweep parameter -> ENNConfig field
ENN_PARAMETERS = {"enn_width": "width", "enn_embed": "embed", "enn_hidden": "hidden",
                  "ratio": "ratio"}


def valid_parameters() -> list[str]:
    """Every parameter name a sweep may set: trial, agent, then ENN settings."""
    return [*TRIAL_PARAMETERS, *AGENT_PARAMETERS, *ENN_PARAMETERS]


@dataclasses.dataclass
class TrialPlan:
    """A trial's parameters, split and validated."""

    settings: TrialSettings
    agent: AgentConfig
    # ENNConfig fields other than layer_shapes.
    enn: dict
    # The parameters as given.
    params: dict


def plan_trial(params: dict[str, Any], where: str = "trial") -> TrialPlan:
    """Split ``params`` into trial, agent and ENN settings and validate each.

    Raises:
        SettingsError: an unknown parameter or a value out of range.
    """
    valid = valid_parameters()
    unknown = [k for k in params if k not in valid]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SettingsError(f"{where}: unknown parameter {unknown[0]!r}{hint}; a trial knows: "
                            f"{', '.join(valid)}")
    trial_part = {k: v for k, v in params.items() if k in TRIAL_PARAMETERS}
    settings = from_dict(TrialSettings, trial_part, where)
    try:  # the task's settings are checked now; its data is loaded when the trial runs
        from gradinstructor.tasks import TaskConfig

        task_path = settings_path("tasks", settings.task)
        from_dict(TaskConfig, read_yaml(task_path), str(task_path))
        base = load_agent_config(settings.agent)
    except SettingsError as err:
        raise SettingsError(f"{where}: {err}") from None
    # the sweep's agent settings override the agent file's; errors name the sweep's value
    agent_part = {k: v for k, v in params.items() if k in AGENT_PARAMETERS}
    agent = from_dict(AgentConfig, {**dataclasses.asdict(base), **agent_part}, where)
    enn = {ENN_PARAMETERS[k]: v for k, v in params.items() if k in ENN_PARAMETERS}
    try:
        ENNConfig(layer_shapes=[(4, 4)], **enn)
    except (TypeError, ValueError) as err:
        raise SettingsError(f"{where}: {err}") from None
    return TrialPlan(settings=settings, agent=agent, enn=enn, params=dict(params))


def check_value(name: str, value: Any, where: str) -> None:
    """Raise SettingsError unless parameter ``name`` may take ``value`` (checked up front)."""
    plan_trial({name: value}, where)


# --------------------------------------------------------------------------- running

# Per process: tasks, zoos and plain-training accuracies are the same for every trial
# of a study, so each is computed once.
_TASKS: dict[tuple, Task] = {}
_ZOOS: dict[tuple, Any] = {}
_PLAIN: dict[tuple, float] = {}


def trial_task(settings: TrialSettings, device: str | torch.device | None = "auto") -> Task:
    """The task of a trial, shrunk to ``train_size`` / ``epochs`` if they are set.

    ``device`` (auto, cpu or cuda; the sweep's ``--device``) is where its data and
    networks live; a device this machine cannot use raises ValueError.
    """
    from gradinstructor.device import resolve_device

    where = resolve_device(device)
    key = (settings.task, settings.train_size, settings.epochs, str(where))
    if key not in _TASKS:
        from gradinstructor.pipeline import shrink_task
        from gradinstructor.tasks import load_task

        task = load_task(settings.task, device=where)
        if settings.train_size is not None or settings.epochs is not None:
            task = shrink_task(task, train=settings.train_size or len(task.data.train_y),
                               epochs=settings.epochs or task.config.epochs)
        _TASKS[key] = task
    return _TASKS[key]


def _task_key(task: Task) -> tuple:
    cfg = task.config
    return (cfg.name, len(task.data.train_y), cfg.epochs, cfg.segments, cfg.lr,
            cfg.batch_size, cfg.optimizer, tuple(cfg.hidden), str(task.device))


def _zoo(task: Task, size: int):
    from gradinstructor.zoo import make_zoo

    key = (_task_key(task), size)
    if key not in _ZOOS:
        _ZOOS[key] = make_zoo(task, size=size, seed=ZOO_SEED)
    return _ZOOS[key]


def _plain_val_acc(task: Task, seed: int) -> float:
    from gradinstructor.compare import run_method

    key = (_task_key(task), seed)
    if key not in _PLAIN:
        _PLAIN[key] = run_method(task, "plain", seed)["val_acc"]
    return _PLAIN[key]


def downstream_gain(task: Task, enn: ENN, strength: Any, seeds: int,
                    enn_every: int = 1) -> dict[str, float]:
    """Validation accuracy with the ENN term minus plain training, over ``seeds`` seeds.

    A seed whose ENN-augmented training diverges counts with accuracy 0, as an
    RL episode does, so an ENN that breaks training scores badly instead of
    crashing the trial.

    Returns:
        ``gain`` (points: mean of the per-seed differences x 100), ``gain_std``,
        ``enn_val_acc`` and ``plain_val_acc`` (fractions), ``diverged`` (count).
    """
    from gradinstructor.compare import run_method
    from gradinstructor.trainer import DivergenceError

    target_seeds = [DOWNSTREAM_SEED + i for i in range(seeds)]
    plain = np.array([_plain_val_acc(task, s) for s in target_seeds])
    with_enn, diverged = [], 0
    for seed in target_seeds:
        try:
            with_enn.append(run_method(task, "enn", seed, enn, strength,
                                       enn_every=enn_every)["val_acc"])
        except DivergenceError as err:
            logger.info("ENN-augmented training diverged on seed %d: %s", seed, err)
            with_enn.append(0.0)
            diverged += 1
    diffs = 100.0 * (np.array(with_enn) - plain)
    return {"gain": float(diffs.mean()),
            "gain_std": float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0,
            "enn_val_acc": float(np.mean(with_enn)), "plain_val_acc": float(plain.mean()),
            "diverged": diverged}


@dataclasses.dataclass
class TrialResult:
    """What one trial measured."""

    # The objective's candidates: gain (points), enn_val_acc; with gain_std, plain_val_acc.
    metrics: dict[str, float]
    # Cheap diagnostics of the ENN, keyed by diagnostics.DIAGNOSTICS.
    diagnostics: dict[str, float | None]
    # Bookkeeping: seconds, diverged seeds, the device it ran on, checkpoint path.
    info: dict[str, Any]
    enn: ENN


def run_trial(plan: TrialPlan, out_dir: str | Path | None = None,
              tracker: Tracker | None = None,
              device: str | torch.device | None = "auto") -> TrialResult:
    """Train an ENN by RL with ``plan``'s settings; measure its gain and diagnostics.

    Args:
        plan: the trial's validated settings (:func:`plan_trial`).
        out_dir: where to write the ENN checkpoint (``enn.pt``); None writes nothing.
        tracker: receives ``rl/`` metrics during RL and ``eval/`` metrics at the end.
        device: auto (CUDA when available), cpu or cuda: where the task's networks, the
            agent and the ENN run. Not a sweep parameter: the worker's ``--device``.

    Returns:
        The :class:`TrialResult`.

    Raises:
        DatasetUnavailableError: the task's data cannot be loaded.
        ValueError: a ``device`` this machine cannot use.
    """
    from gradinstructor.agent import train_enn
    from gradinstructor.pipeline import seed_everything
    from gradinstructor.render import layer_shapes

    tracker = tracker or NullTracker()
    settings = plan.settings
    start = time.perf_counter()
    task = trial_task(settings, device)
    enn_config = ENNConfig(layer_shapes=layer_shapes(task.build_model(seed=0)), **plan.enn)

    seed_everything(settings.seed)
    rl = train_enn(task, plan.agent, total_timesteps=settings.timesteps, seed=settings.seed,
                   enn_config=enn_config, enn_every=settings.enn_every, tracker=tracker,
                   progress_bar=False)
    rl_seconds = time.perf_counter() - start
    buffer = getattr(rl.model, "rollout_buffer", None)
    diagnostics = measure(rl.enn, task, _zoo(task, settings.zoo_size), rl.episodes, buffer)

    strength = rl.actor if settings.strength == "actor" else float(settings.strength)
    gain = downstream_gain(task, rl.enn, strength, settings.seeds, settings.enn_every)
    metrics = {k: gain[k] for k in ("gain", "gain_std", "enn_val_acc", "plain_val_acc")}
    info: dict[str, Any] = {"diverged": gain["diverged"], "rl_seconds": round(rl_seconds, 2),
                            "seconds": round(time.perf_counter() - start, 2),
                            "device": str(task.device)}
    if out_dir is not None:
        path = Path(out_dir) / "enn.pt"
        rl.enn.save(path, sweep_params=plan.params, **metrics)
        info["enn_path"] = str(path)

    tracker.log({f"eval/{k}": v for k, v in {**metrics, **diagnostics}.items() if v is not None})
    logger.info("trial on %s: gain %+.2f points (%.0f s)", task.name, metrics["gain"],
                info["seconds"])
    return TrialResult(metrics=metrics, diagnostics=diagnostics, info=info, enn=rl.enn)
