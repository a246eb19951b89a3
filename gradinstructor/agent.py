"""The agent: a stable-baselines3 actor-critic whose critic is the ENN.

* The critic is an :class:`~gradinstructor.enn.ENN`: the value of a state (weight
  images + progress) is the predicted final validation accuracy. With gamma = 1
  and GAE lambda = 1 its regression target is exactly that accuracy.
* The actor reads cheap per-layer weight statistics and the progress and sets
  the ENN strength for the next segment: a learned schedule.
* Before every rollout the current critic is copied into each environment, which
  applies its gradient while training the target networks.
* With ``save_path`` the whole state (policy, optimiser, environments' episodes in
  progress, random generators) is written every few rollouts, atomically and as
  tensors and plain data only; ``resume_from`` continues it to the same total, with
  the same result as an uninterrupted run (:class:`AgentSaver`).
* A non-finite gradient, weight or output of the agent stops the run with a
  :class:`~gradinstructor.trainer.DivergenceError` naming the timestep.

Example:
    >>> from gradinstructor.tasks import load_task
    >>> from gradinstructor.config import load_agent_config
    >>> result = train_enn(load_task("digits"), load_agent_config("ppo"),
    ...                    total_timesteps=80, seed=0)   # doctest: +SKIP
    >>> result.enn.save("enn.pt")                        # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
from torch import nn

from gradinstructor import __version__
from gradinstructor.config import AgentConfig, SettingsError
from gradinstructor.enn import ENN, ENNConfig, atomic_torch_save, load_payload
from gradinstructor.env import TargetTrainingEnv, strength_from_action
from gradinstructor.render import CHANNELS, layer_shapes, render_weights
from gradinstructor.tasks import Task
from gradinstructor.tracking import NullTracker, Tracker
from gradinstructor.trainer import DivergenceError
from gradinstructor.vec_env import PopulationVecEnv

logger = logging.getLogger(__name__)

ACTOR_STATS = 3  # per layer: mean of the mean channel, mean and std of the RMS channel


def layer_statistics(obs: dict[str, torch.Tensor], n_layers: int) -> torch.Tensor:
    """Per-layer statistics and progress from observations: (B, n_layers * 3 + 1)."""
    stats = []
    for i in range(n_layers):
        flat = obs[f"layer{i}"]
        channels = flat.reshape(flat.shape[0], CHANNELS, -1)  # (B, C, H*W)
        stats += [channels[:, 0].mean(1), channels[:, 1].mean(1),
                  channels[:, 1].std(1, unbiased=False)]
    stats.append(obs["progress"].reshape(-1))
    return torch.stack(stats, dim=1)


class ActorEncoder(BaseFeaturesExtractor):
    """The actor's features: per-layer statistics and progress through a small MLP."""

    def __init__(self, observation_space: spaces.Dict, hidden: int = 64) -> None:
        super().__init__(observation_space, features_dim=hidden)
        self.n_layers = len(observation_space.spaces) - 1
        self.net = nn.Sequential(
            nn.Linear(self.n_layers * ACTOR_STATS + 1, hidden), nn.Tanh(),
            nn.Linear(hidden, hidden), nn.Tanh(),
        )

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(layer_statistics(obs, self.n_layers))


class ENNActorCriticPolicy(ActorCriticPolicy):
    """Actor-critic policy whose value function is an :class:`ENN`.

    Args (beyond SB3's): ``enn_config``, the ENN's architecture (dict of
    :class:`ENNConfig` fields).
    """

    def __init__(self, observation_space, action_space, lr_schedule, enn_config: dict,
                 actor_hidden: int = 64, **kwargs: Any) -> None:
        self.enn_config = dict(enn_config)
        kwargs.setdefault("net_arch", dict(pi=[], vf=[]))
        kwargs.setdefault("features_extractor_class", ActorEncoder)
        kwargs.setdefault("features_extractor_kwargs", dict(hidden=actor_hidden))
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _build(self, lr_schedule) -> None:
        self.enn = ENN(ENNConfig(**self.enn_config))
        super()._build(lr_schedule)
        # SB3's own value head is not used: the ENN is the critic.
        self.value_net = nn.Identity()
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)
        # A non-finite gradient is refused before it reaches the weights; non-finite
        # weights after a step stop the run (see AgentDivergence).
        self.last_finite_value: float | None = None  # mean critic output, for messages
        self.optimizer.register_step_pre_hook(self._check_gradients)
        self.optimizer.register_step_post_hook(self._check_weights)

    def _check_gradients(self, optimizer, args, kwargs) -> None:
        for name, param in self.named_parameters():
            if param.grad is not None and not torch.isfinite(param.grad).all():
                raise AgentDivergence(f"the gradient of {name}")

    def _check_weights(self, optimizer, args, kwargs) -> None:
        for name, param in self.named_parameters():
            if not torch.isfinite(param).all():
                raise AgentDivergence(f"the weight {name}")

    def _actor_distribution(self, obs):
        features = self.extract_features(obs, self.pi_features_extractor)
        mean_actions = self.action_net(self.mlp_extractor.forward_actor(features))
        if not torch.isfinite(mean_actions).all():
            raise AgentDivergence("the actor's output")
        return self.action_dist.proba_distribution(mean_actions, self.log_std)

    def _values(self, obs) -> torch.Tensor:
        values = self.enn.forward_obs(obs)
        if not torch.isfinite(values).all():
            raise AgentDivergence("the critic's (ENN's) output")
        self.last_finite_value = float(values.detach().mean())
        return values

    def forward(self, obs, deterministic: bool = False):
        distribution = self._actor_distribution(obs)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))
        return actions, self._values(obs), log_prob

    def evaluate_actions(self, obs, actions):
        distribution = self._actor_distribution(obs)
        return self._values(obs), distribution.log_prob(actions), distribution.entropy()

    def get_distribution(self, obs):
        return self._actor_distribution(obs)

    def predict_values(self, obs):
        return self._values(obs)


class AgentDivergence(DivergenceError):
    """Raised inside the agent's update when a value becomes non-finite; names what."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} became non-finite")
        self.what = what


class ScheduleActor(nn.Module):
    """The trained actor on its own: weights + progress -> ENN strength (deterministic).

    Used by :class:`~gradinstructor.trainer.GradInstructor` to pick the strength
    once per segment, as the agent did during RL.
    """

    def __init__(self, n_layers: int, hidden: int, max_strength: float, ratio: float) -> None:
        super().__init__()
        self.n_layers, self.hidden = n_layers, hidden
        self.max_strength, self.ratio = max_strength, ratio
        self.net = nn.Sequential(
            nn.Linear(n_layers * ACTOR_STATS + 1, hidden), nn.Tanh(),
            nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1),
        )

    @torch.no_grad()
    def choose(self, model: nn.Module, progress: float) -> float:
        """The strength the actor picks for ``model`` at ``progress``."""
        device = next(self.parameters()).device  # the target network may be elsewhere
        obs = {f"layer{i}": img.reshape(1, -1).to(device)
               for i, img in enumerate(render_weights(model, self.ratio))}
        obs["progress"] = torch.tensor([[progress]], dtype=torch.float32, device=device)
        action = self.net(layer_statistics(obs, self.n_layers))
        return strength_from_action(action.cpu().numpy(), self.max_strength)

    def payload(self) -> dict:
        return {"n_layers": self.n_layers, "hidden": self.hidden,
                "max_strength": self.max_strength, "ratio": self.ratio,
                "state_dict": self.state_dict()}

    @classmethod
    def from_payload(cls, payload: dict) -> ScheduleActor:
        actor = cls(payload["n_layers"], payload["hidden"], payload["max_strength"],
                    payload["ratio"])
        actor.load_state_dict(payload["state_dict"])
        return actor.eval()

    @classmethod
    def from_policy(cls, policy: ENNActorCriticPolicy, max_strength: float) -> ScheduleActor:
        encoder: ActorEncoder = policy.pi_features_extractor
        actor = cls(encoder.n_layers, encoder.features_dim, max_strength,
                    policy.enn.config.ratio)
        actor.net[0].load_state_dict(encoder.net[0].state_dict())
        actor.net[2].load_state_dict(encoder.net[2].state_dict())
        actor.net[4].load_state_dict(policy.action_net.state_dict())
        return actor.eval()


# --------------------------------------------------------------------------- callbacks


class _TrackerWriter(KVWriter):
    """Forwards SB3's logged values to our tracker under ``rl/``."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def write(self, key_values: dict, key_excluded: dict, step: int = 0) -> None:
        scalars = {f"rl/{k.split('/')[-1]}": float(v) for k, v in key_values.items()
                   if isinstance(v, (int, float, np.floating, np.integer))}
        self.tracker.log(scalars, step=step)

    def close(self) -> None:
        pass


class _LossWatch(KVWriter):
    """Remembers the last finite value loss SB3 logged, and at which timestep."""

    def __init__(self) -> None:
        self.value_loss: float | None = None
        self.timestep: int | None = None

    def write(self, key_values: dict, key_excluded: dict, step: int = 0) -> None:
        value = key_values.get("train/value_loss")
        if isinstance(value, (int, float, np.floating)) and np.isfinite(value):
            self.value_loss, self.timestep = float(value), step

    def close(self) -> None:
        pass


class ENNSyncCallback(BaseCallback):
    """Copies the critic into the environments before each rollout; records episodes.

    With a :class:`AgentSaver`, also keeps the agent's state at the start of each
    rollout and writes it every ``saver.every`` rollouts.
    """

    def __init__(self, progress_bar: bool = True, episodes: list[dict] | None = None,
                 saver: AgentSaver | None = None) -> None:
        super().__init__()
        self.episodes: list[dict] = list(episodes or [])
        self.progress_bar = progress_bar
        self.saver = saver
        self._bar = None

    def _on_training_start(self) -> None:
        if self.progress_bar:
            from tqdm.auto import tqdm

            total = self.locals["total_timesteps"] - self.model.num_timesteps
            self._bar = tqdm(total=total, desc="train-enn", unit="seg", leave=False)

    def _on_rollout_start(self) -> None:
        state = {k: v.detach().clone() for k, v in self.model.policy.enn.state_dict().items()}
        self.training_env.env_method("set_enn_state", state)
        if self.saver is not None:
            self.saver.rollout_start(self.model, self.episodes)

    def _on_step(self) -> bool:
        for info, done in zip(self.locals["infos"], self.locals["dones"]):
            if done and "val_acc" in info:
                self.episodes.append({"timestep": self.num_timesteps,
                                      "val_acc": info["val_acc"],
                                      "mean_strength": info["mean_strength"],
                                      "diverged": info["diverged"]})
        if self._bar is not None:
            self._bar.update(self.training_env.num_envs)
            recent = self.episodes[-20:]
            if recent:
                acc = np.mean([e["val_acc"] for e in recent])
                strength = np.mean([e["mean_strength"] for e in recent])
                self._bar.set_postfix(val_acc=f"{acc:.3f}", strength=f"{strength:.1f}")
        return True

    def _on_training_end(self) -> None:
        if self._bar is not None:
            self._bar.close()


# --------------------------------------------------------------------------- training


@dataclasses.dataclass
class TrainENNResult:
    """What :func:`train_enn` produces."""

    enn: ENN
    actor: ScheduleActor
    episodes: list[dict]
    seconds: float
    model: Any  # the SB3 algorithm, for saving or further training


def make_vec_env(task: Task, agent: AgentConfig, seed: int, enn_config: ENNConfig,
                 enn_every: int, vectorised: bool = True) -> VecEnv:
    """``agent.n_envs`` target-training environments, seeded seed, seed+1, ...

    By default one :class:`~gradinstructor.vec_env.PopulationVecEnv` that trains the
    ``n_envs`` target networks in lockstep with batched products; with
    ``vectorised=False`` (or a task it cannot train: Adam, a CNN, a GPU) a ``DummyVecEnv`` of
    single-network :class:`TargetTrainingEnv`. Both play the same episodes for the
    same seed (up to float rounding; ``tests/test_vec_env.py``).
    """
    # the population trains MLPs on the CPU; a CNN task, or one on a GPU, plays in single envs
    if (vectorised and task.config.optimizer == "sgd" and task.config.arch == "mlp"
            and task.device.type == "cpu"):
        vec = PopulationVecEnv(task, agent.n_envs, seed=seed, max_strength=agent.max_strength,
                               enn_config=enn_config, enn_every=enn_every)
        vec.seed(seed)
        return vec

    def factory(rank: int):
        def make():
            env = TargetTrainingEnv(task, max_strength=agent.max_strength,
                                    enn_config=enn_config, enn_every=enn_every)
            env.reset(seed=seed + rank)
            return env
        return make

    vec = DummyVecEnv([factory(i) for i in range(agent.n_envs)])
    vec.seed(seed)
    return vec


def build_algorithm(task: Task, agent: AgentConfig, seed: int, enn_config: ENNConfig,
                    enn_every: int = 1, tracker: Tracker | None = None,
                    vectorised: bool = True):
    """The SB3 algorithm (PPO or A2C) with the ENN as its critic.

    ``vectorised`` chooses the environments (see :func:`make_vec_env`).
    """
    env = make_vec_env(task, agent, seed, enn_config, enn_every, vectorised=vectorised)
    policy_kwargs = dict(enn_config=dataclasses.asdict(enn_config))
    common = dict(policy_kwargs=policy_kwargs, learning_rate=agent.learning_rate,
                  n_steps=agent.n_steps, gamma=agent.gamma, gae_lambda=agent.gae_lambda,
                  ent_coef=agent.ent_coef, vf_coef=agent.vf_coef, seed=seed, verbose=0,
                  device=task.device)  # the task's device (cli --device): the agent goes there
    if agent.algorithm == "ppo":
        algo = PPO(ENNActorCriticPolicy, env, batch_size=agent.batch_size,
                   n_epochs=agent.n_epochs, **common)
    else:
        algo = A2C(ENNActorCriticPolicy, env, **common)
    algo.loss_watch = _LossWatch()
    algo.set_logger(Logger(folder=None, output_formats=[_TrackerWriter(tracker or NullTracker()),
                                                        algo.loss_watch]))
    return algo


# --------------------------------------------------------------------------- saving and resuming

AGENT_FORMAT = "gradinstructor-agent"
AGENT_FORMAT_VERSION = 1
# Settings a resumed run must share with the saved one.
RESUME_KEYS = ("task", "task_config", "agent", "total_timesteps", "seed", "enn_every",
               "enn_config")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train_enn`; the message says where the state was saved."""


def _rng_state() -> dict:
    """Python's, NumPy's and torch's global generator states, as weights_only-safe data."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)}}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached"]))


def agent_state(algo, settings: dict, episodes: list[dict], seconds: float) -> dict:
    """Everything needed to continue ``algo``'s training exactly: tensors and plain data.

    The policy (actor and ENN critic) and its optimiser, the step counters, every
    environment's episode in progress (:meth:`TargetTrainingEnv.get_state`), the
    last observations, the global random generators, the episodes so far and the
    settings of the run. It loads with ``torch.load(weights_only=True)``; no
    pickled Python object is stored, unlike SB3's own ``.zip``.
    """
    return {
        "format": AGENT_FORMAT, "format_version": AGENT_FORMAT_VERSION, "version": __version__,
        "settings": settings,
        "num_timesteps": int(algo.num_timesteps), "n_updates": int(algo._n_updates),
        "policy": {k: v.detach().clone() for k, v in algo.policy.state_dict().items()},
        "optimizer": copy.deepcopy(algo.policy.optimizer.state_dict()),
        "envs": algo.env.env_method("get_state"),
        "last_obs": {k: torch.from_numpy(np.array(v)) for k, v in algo._last_obs.items()},
        "last_episode_starts": torch.from_numpy(np.array(algo._last_episode_starts)),
        "rng": _rng_state(),
        "episodes": copy.deepcopy(episodes),
        "seconds": float(seconds),
    }


def restore_agent_state(algo, state: dict) -> None:
    """Put ``algo`` (built with the same settings) back where :func:`agent_state` left it.

    The global random generators are set last: call this right before ``learn``.
    """
    algo.policy.load_state_dict(state["policy"])
    algo.policy.optimizer.load_state_dict(state["optimizer"])
    algo.num_timesteps = state["num_timesteps"]
    algo._n_updates = state["n_updates"]
    if len(state["envs"]) != algo.env.num_envs:
        raise ValueError(f"the saved state holds {len(state['envs'])} environments, but the "
                         f"agent has {algo.env.num_envs}")
    for index, env_state in enumerate(state["envs"]):
        algo.env.env_method("set_state", env_state, indices=[index])
    algo._last_obs = {k: v.numpy() for k, v in state["last_obs"].items()}
    algo._last_episode_starts = state["last_episode_starts"].numpy()
    _set_rng_state(state["rng"])


def load_agent_state(path: str | os.PathLike) -> dict:
    """Read an agent state written by :class:`AgentSaver` (``weights_only=True``).

    Raises:
        CheckpointError: missing, damaged, not an agent state, code in the file, or a
            newer or unknown format version.
    """
    return load_payload(path, AGENT_FORMAT, format_version=AGENT_FORMAT_VERSION)


def check_resume_settings(path: str | os.PathLike, saved: dict, given: dict) -> None:
    """SettingsError naming the first setting that differs between a save and this run."""
    for key in RESUME_KEYS:
        old, new = saved.get(key), given.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            for sub in sorted(set(old) | set(new), key=str):
                if _plain(old.get(sub)) != _plain(new.get(sub)):
                    _refuse_resume(path, f"{key}.{sub}", old.get(sub), new.get(sub))
        elif _plain(old) != _plain(new):
            _refuse_resume(path, key, old, new)


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _refuse_resume(path, key: str, old: Any, new: Any) -> None:
    raise SettingsError(
        f"cannot resume {path}: it was saved with {key}={old!r}, but this run has "
        f"{key}={new!r}; resume with the saved settings, or start a new run without --resume"
    )


class AgentSaver:
    """Keeps the agent's state at the start of each rollout; writes it every ``every``.

    A rollout start is the one point where the agent is consistent (its last update
    finished, no rollout half-collected). The in-memory copy lets Ctrl-C save the
    latest one whatever ``every`` is; a SIGKILL loses at most ``every`` rollouts.

    Args:
        path: the file (``RUN/agent.pt``), written atomically.
        every: write every this many rollouts.
        settings: the run's settings, stored for :func:`check_resume_settings`.
        seconds_before: training seconds of the earlier processes of a resumed run.
    """

    def __init__(self, path: str | os.PathLike, every: int, settings: dict,
                 seconds_before: float = 0.0, resumed_at: list[int] | None = None) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"save_every must be a positive integer, but got {every!r}")
        self.path = Path(path)
        self.every = every
        self.settings = settings
        self.seconds_before = seconds_before
        self.resumed_at = list(resumed_at or [])
        self.start = time.perf_counter()
        self.snapshot: dict | None = None
        self.written_at: int | None = None
        self.start_timesteps: int | None = None

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.start

    def rollout_start(self, algo, episodes: list[dict]) -> None:
        if self.start_timesteps is None:
            self.start_timesteps = algo.num_timesteps
        if algo.num_timesteps == self.start_timesteps:
            return  # nothing new since the start (or since the state this run resumed from)
        self.snapshot = self.state(algo, episodes)
        rollout = algo.n_steps * algo.env.num_envs
        if (algo.num_timesteps // rollout) % self.every == 0:
            self.write()

    def state(self, algo, episodes: list[dict]) -> dict:
        """:func:`agent_state` of ``algo`` now, with this run's history of resumes."""
        state = agent_state(algo, self.settings, episodes, self.seconds())
        state["resumed_at"] = list(self.resumed_at)
        return state

    def write(self, snapshot: dict | None = None) -> Path | None:
        """Write ``snapshot`` (default: the last one kept) atomically; None if none."""
        snapshot = snapshot if snapshot is not None else self.snapshot
        if snapshot is None:
            return None
        atomic_torch_save(snapshot, self.path)
        self.written_at = snapshot["num_timesteps"]
        logger.info("agent state at timestep %d saved to %s", self.written_at, self.path)
        return self.path

    def write_pending(self) -> int | None:
        """Write the kept state if it is newer than the file; the timestep on disk."""
        if self.snapshot is not None and self.snapshot["num_timesteps"] != self.written_at:
            self.write()
        return self.written_at


def train_enn(task: Task, agent: AgentConfig, total_timesteps: int, seed: int = 0,
              enn_config: ENNConfig | None = None, enn_every: int = 1,
              tracker: Tracker | None = None, progress_bar: bool = True,
              save_path: str | os.PathLike | None = None, save_every: int = 1,
              resume_from: dict | None = None, settings_extra: dict | None = None
              ) -> TrainENNResult:
    """Train an ENN (the critic) and a strength schedule (the actor) by RL on ``task``.

    Args:
        task: the task whose target networks the environments train.
        agent: the agent's settings.
        total_timesteps: segments to play, summed over all environments.
        seed: seeds the agent and the environments.
        enn_config: the ENN's architecture (default: a fresh one for the task).
        enn_every: the environments recompute the ENN gradient every this many steps.
        tracker: receives ``rl/`` metrics.
        progress_bar: show a tqdm bar.
        save_path: write the agent's state here (atomically) every ``save_every``
            rollouts, on Ctrl-C and at the end, for ``resume_from``.
        save_every: rollouts between two writes of ``save_path``.
        resume_from: a state read by :func:`load_agent_state`: continue that run to
            the same ``total_timesteps``. Its settings must match these; the result
            is the same as an uninterrupted run's (see docs/method.md).
        settings_extra: more settings to store in the agent state (e.g. the task spec).

    Raises:
        ValueError: ``total_timesteps`` is not a positive integer.
        SettingsError: ``resume_from`` was saved with other settings.
        DivergenceError: the agent's loss, gradient or weights became non-finite;
            names the timestep, the algorithm and the last finite value loss.
        TrainingInterrupted: Ctrl-C; the state was saved to ``save_path`` first.
    """
    if not isinstance(total_timesteps, int) or total_timesteps < 1:
        raise ValueError(
            f"total_timesteps must be a positive integer, but got {total_timesteps!r}")
    torch.manual_seed(seed)
    probe = task.build_model(seed=0)
    enn_config = enn_config or ENNConfig(layer_shapes=layer_shapes(probe))
    settings = {"task": task.name, "task_config": dataclasses.asdict(task.config),
                "agent": dataclasses.asdict(agent), "total_timesteps": total_timesteps,
                "seed": seed, "enn_every": enn_every,
                "enn_config": dataclasses.asdict(enn_config), **(settings_extra or {})}
    if resume_from is not None:
        check_resume_settings(save_path or "the saved state", resume_from["settings"], settings)
    algo = build_algorithm(task, agent, seed, enn_config, enn_every, tracker)
    saver = None
    if save_path is not None:
        resumed_at = None
        if resume_from is not None:
            resumed_at = [*resume_from.get("resumed_at", []), resume_from["num_timesteps"]]
        saver = AgentSaver(save_path, save_every, settings, resumed_at=resumed_at,
                           seconds_before=resume_from["seconds"] if resume_from else 0.0)
    callback = ENNSyncCallback(progress_bar=progress_bar, saver=saver,
                               episodes=resume_from["episodes"] if resume_from else None)
    start = time.perf_counter()
    if resume_from is not None:
        restore_agent_state(algo, resume_from)  # last: it sets the global generators
    remaining = total_timesteps - algo.num_timesteps
    try:
        if remaining > 0:
            algo.learn(total_timesteps=remaining, callback=callback,
                       reset_num_timesteps=resume_from is None)
    except KeyboardInterrupt:
        saved = saver.write_pending() if saver is not None else None
        where = (f"the agent's state at timestep {saved} of {total_timesteps} is in "
                 f"{saver.path}; continue with --resume" if saved is not None else
                 "no agent state was saved yet")
        raise TrainingInterrupted(f"at timestep {algo.num_timesteps}; {where}") from None
    except AgentDivergence as err:
        raise DivergenceError(_divergence_message(err, algo, agent, saver)) from None
    seconds = time.perf_counter() - start
    if saver is not None:
        saver.write(saver.state(algo, callback.episodes))
        seconds = saver.seconds()

    enn = copy.deepcopy(algo.policy.enn).eval()
    actor = ScheduleActor.from_policy(algo.policy, agent.max_strength)
    recent = callback.episodes[-max(1, len(callback.episodes) // 4):]
    enn.metadata.update(
        task=task.name, agent=agent.name, algorithm=agent.algorithm,
        total_timesteps=total_timesteps, num_timesteps=int(algo.num_timesteps), seed=seed,
        seconds=round(seconds, 2), episodes=len(callback.episodes),
        final_mean_val_acc=float(np.mean([e["val_acc"] for e in recent])) if recent else None,
    )
    if resume_from is not None:
        enn.metadata["resumed_at"] = [*resume_from.get("resumed_at", []),
                                      resume_from["num_timesteps"]]
    enn.actor_payload = actor.payload()
    return TrainENNResult(enn=enn, actor=actor, episodes=callback.episodes, seconds=seconds,
                          model=algo)


def _divergence_message(err: AgentDivergence, algo, agent: AgentConfig,
                        saver: AgentSaver | None) -> str:
    watch = getattr(algo, "loss_watch", None)
    if watch is not None and watch.value_loss is not None:
        last = f"last finite value loss {watch.value_loss:.4g} (timestep {watch.timestep})"
    else:
        last = "no value loss was logged before it (first update)"
    value = getattr(algo.policy, "last_finite_value", None)
    if value is not None:
        last += f", last finite critic output {value:.4g}"
    saved = ""
    if saver is not None and saver.written_at is not None:
        saved = f"; the last saved state (timestep {saver.written_at}) is in {saver.path}"
    return (f"{agent.algorithm}: {err.what} became non-finite during the agent's training "
            f"at timestep {algo.num_timesteps}; {last}. Lower learning_rate "
            f"(now {agent.learning_rate:g}) or max_strength (now {agent.max_strength:g}) "
            f"in the agent settings{saved}")


def load_actor(enn: ENN) -> ScheduleActor | None:
    """The strength schedule stored with an ENN checkpoint, if it was trained by RL."""
    return ScheduleActor.from_payload(enn.actor_payload) if enn.actor_payload else None
