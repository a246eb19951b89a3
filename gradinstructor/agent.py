"""The agent: a stable-baselines3 actor-critic whose critic is the ENN.

* The critic is an :class:`~gradinstructor.enn.ENN`: the value of a state (weight
  images + progress) is the predicted final validation accuracy. With gamma = 1
  and GAE lambda = 1 its regression target is exactly that accuracy.
* The actor reads cheap per-layer weight statistics and the progress and sets
  the ENN strength for the next segment: a learned schedule.
* Before every rollout the current critic is copied into each environment, which
  applies its gradient while training the target networks.

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
import time
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv
from torch import nn

from gradinstructor.config import AgentConfig
from gradinstructor.enn import ENN, ENNConfig
from gradinstructor.env import TargetTrainingEnv, strength_from_action
from gradinstructor.render import CHANNELS, layer_shapes, render_weights
from gradinstructor.tasks import Task
from gradinstructor.tracking import NullTracker, Tracker

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

    def _actor_distribution(self, obs):
        features = self.extract_features(obs, self.pi_features_extractor)
        return self._get_action_dist_from_latent(self.mlp_extractor.forward_actor(features))

    def forward(self, obs, deterministic: bool = False):
        distribution = self._actor_distribution(obs)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))
        return actions, self.enn.forward_obs(obs), log_prob

    def evaluate_actions(self, obs, actions):
        distribution = self._actor_distribution(obs)
        return self.enn.forward_obs(obs), distribution.log_prob(actions), distribution.entropy()

    def get_distribution(self, obs):
        return self._actor_distribution(obs)

    def predict_values(self, obs):
        return self.enn.forward_obs(obs)


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
        obs = {f"layer{i}": img.reshape(1, -1)
               for i, img in enumerate(render_weights(model, self.ratio))}
        obs["progress"] = torch.tensor([[progress]], dtype=torch.float32)
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


class ENNSyncCallback(BaseCallback):
    """Copies the critic into the environments before each rollout; records episodes."""

    def __init__(self, progress_bar: bool = True) -> None:
        super().__init__()
        self.episodes: list[dict] = []
        self.progress_bar = progress_bar
        self._bar = None

    def _on_training_start(self) -> None:
        if self.progress_bar:
            from tqdm.auto import tqdm

            total = self.locals["total_timesteps"] - self.model.num_timesteps
            self._bar = tqdm(total=total, desc="train-enn", unit="seg", leave=False)

    def _on_rollout_start(self) -> None:
        state = {k: v.detach().clone() for k, v in self.model.policy.enn.state_dict().items()}
        self.training_env.env_method("set_enn_state", state)

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
                 enn_every: int) -> DummyVecEnv:
    """``agent.n_envs`` target-training environments, seeded seed, seed+1, ..."""
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
                    enn_every: int = 1, tracker: Tracker | None = None):
    """The SB3 algorithm (PPO or A2C) with the ENN as its critic."""
    env = make_vec_env(task, agent, seed, enn_config, enn_every)
    policy_kwargs = dict(enn_config=dataclasses.asdict(enn_config))
    common = dict(policy_kwargs=policy_kwargs, learning_rate=agent.learning_rate,
                  n_steps=agent.n_steps, gamma=agent.gamma, gae_lambda=agent.gae_lambda,
                  ent_coef=agent.ent_coef, vf_coef=agent.vf_coef, seed=seed, verbose=0,
                  device="cpu")
    if agent.algorithm == "ppo":
        algo = PPO(ENNActorCriticPolicy, env, batch_size=agent.batch_size,
                   n_epochs=agent.n_epochs, **common)
    else:
        algo = A2C(ENNActorCriticPolicy, env, **common)
    algo.set_logger(Logger(folder=None, output_formats=[_TrackerWriter(tracker or NullTracker())]))
    return algo


def train_enn(task: Task, agent: AgentConfig, total_timesteps: int, seed: int = 0,
              enn_config: ENNConfig | None = None, enn_every: int = 1,
              tracker: Tracker | None = None, progress_bar: bool = True) -> TrainENNResult:
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

    Raises:
        ValueError: ``total_timesteps`` is not a positive integer.
    """
    if not isinstance(total_timesteps, int) or total_timesteps < 1:
        raise ValueError(
            f"total_timesteps must be a positive integer, but got {total_timesteps!r}")
    torch.manual_seed(seed)
    probe = task.build_model(seed=0)
    enn_config = enn_config or ENNConfig(layer_shapes=layer_shapes(probe))
    algo = build_algorithm(task, agent, seed, enn_config, enn_every, tracker)
    callback = ENNSyncCallback(progress_bar=progress_bar)
    start = time.perf_counter()
    algo.learn(total_timesteps=total_timesteps, callback=callback)
    seconds = time.perf_counter() - start

    enn = copy.deepcopy(algo.policy.enn).eval()
    actor = ScheduleActor.from_policy(algo.policy, agent.max_strength)
    recent = callback.episodes[-max(1, len(callback.episodes) // 4):]
    enn.metadata.update(
        task=task.name, agent=agent.name, algorithm=agent.algorithm,
        total_timesteps=total_timesteps, seed=seed, seconds=round(seconds, 2),
        episodes=len(callback.episodes),
        final_mean_val_acc=float(np.mean([e["val_acc"] for e in recent])) if recent else None,
    )
    enn.actor_payload = actor.payload()
    return TrainENNResult(enn=enn, actor=actor, episodes=callback.episodes, seconds=seconds,
                          model=algo)


def load_actor(enn: ENN) -> ScheduleActor | None:
    """The strength schedule stored with an ENN checkpoint, if it was trained by RL."""
    return ScheduleActor.from_payload(enn.actor_payload) if enn.actor_payload else None
