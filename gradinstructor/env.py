"""The RL environment: each episode trains a freshly initialised target network.

* Episode: a target network of the task's architecture, with an initialisation
  scheme, init scale and learning rate drawn from ranges (so the ENN sees varied
  networks), trained for the task's epoch budget, cut into ``segments``.
* Observation: the weight images of the network, flattened per layer, and the
  progress: ``{"layer0": (C*H0*W0,), ..., "progress": (1,)}``. Flat vectors pass
  both gymnasium's and stable-baselines3's checkers without warnings (SB3 warns
  on float observations shaped like images); the ENN knows the image shapes.
* Action: one number in [-1, 1], mapped linearly to the ENN strength in
  [0, max_strength] for the next segment.
* Reward: the validation accuracy at the end of the episode (0 before). With
  gamma = 1 the value of a state is the expected final accuracy, so the critic
  is the ENN.
* During a segment each minibatch step uses ``loss - strength * ENN(weights)``
  with the environment's copy of the current critic, synchronised by the agent
  before every rollout.

A non-finite loss or non-finite weights end the episode with reward 0, the lowest
accuracy there is (``info["diverged"]``, with the minibatch step and the last finite
loss), so the learner is penalised instead of crashing. The penalty is 0 rather than
negative because the critic, a sigmoid, predicts the final accuracy in [0, 1].

Example:
    >>> from gradinstructor.tasks import load_task
    >>> env = TargetTrainingEnv(load_task("digits"))
    >>> obs, info = env.reset(seed=0)
    >>> sorted(obs)
    ['layer0', 'layer1', 'layer2', 'progress']
"""

from __future__ import annotations

import copy
import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces

from gradinstructor.enn import ENN, ENNConfig
from gradinstructor.render import CHANNELS, DEFAULT_RATIO, render_weights, weight_matrices
from gradinstructor.tasks import Task
from gradinstructor.trainer import GradInstructor, accuracy, batch_order

# Pixels are weights x sqrt(fan_in): about 1 for the usual initialisations.
OBS_BOUND = 1e3


def strength_from_action(action: Any, max_strength: float) -> float:
    """Map an action in [-1, 1] (clipped) to a strength in [0, max_strength]."""
    a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
    return (a + 1.0) / 2.0 * max_strength


def draw_episode(rng: np.random.Generator, task: Task, inits: tuple[str, ...],
                 scale_range: tuple[float, float], lr_range: tuple[float, float]
                 ) -> tuple[torch.nn.Module, int, str, float, float]:
    """Draw an episode's target network from ``rng``: (model, net_seed, init, scale, lr).

    The one place where an episode is drawn, shared by :class:`TargetTrainingEnv`
    and the population :class:`~gradinstructor.vec_env.PopulationVecEnv`, so that the
    same generator state gives the same network, minibatch order and learning rate.
    """
    net_seed = int(rng.integers(2**31 - 1))
    init = inits[int(rng.integers(len(inits)))]
    model = task.build_model(seed=net_seed, init=init)
    scale = float(rng.uniform(*scale_range))
    with torch.no_grad():
        for w in weight_matrices(model):
            w.mul_(scale)
    lo, hi = np.log(lr_range[0]), np.log(lr_range[1])
    lr = task.config.lr * float(np.exp(rng.uniform(lo, hi)))
    return model, net_seed, init, scale, lr


def segment_steps(total_steps: int, segments: int, segment: int) -> int:
    """Minibatch steps in segment ``segment`` of ``segments`` (the remainder goes last)."""
    return total_steps // segments + (1 if segment >= segments - total_steps % segments else 0)


class TargetTrainingEnv(gym.Env):
    """Trains one target network per episode; the agent sets the ENN strength per segment.

    Args:
        task: the task (data, architecture, optimiser, budget).
        max_strength: strength at action +1.
        ratio: rendering ratio of the weight images.
        lr_range: the learning rate of an episode is the task's times a factor drawn
            log-uniformly from this range.
        scale_range: the initial weights are multiplied by a factor drawn from this range.
        inits: initialisation schemes to draw from.
        enn_config: architecture of the environment's ENN copy (must match the agent's).
        enn_every: recompute the ENN gradient every this many minibatch steps.
    """

    metadata = {"render_modes": []}

    def __init__(self, task: Task, max_strength: float = 30.0, ratio: float = DEFAULT_RATIO,
                 lr_range: tuple[float, float] = (0.5, 2.0),
                 scale_range: tuple[float, float] = (0.5, 1.5),
                 inits: tuple[str, ...] = ("default", "he"),
                 enn_config: ENNConfig | None = None, enn_every: int = 1) -> None:
        super().__init__()
        if max_strength < 0:
            raise ValueError(f"max_strength must be non-negative, but got {max_strength}")
        self.task = task
        self.max_strength = max_strength
        self.lr_range = lr_range
        self.scale_range = scale_range
        self.inits = inits
        probe = task.build_model(seed=0)
        shapes = [tuple(w.shape) for w in weight_matrices(probe)]
        self.enn = ENN(enn_config or ENNConfig(layer_shapes=shapes, ratio=ratio))
        self.enn.requires_grad_(False).eval()
        self.image_shapes = self.enn.config.image_shapes
        space = {f"layer{i}": spaces.Box(-OBS_BOUND, OBS_BOUND, (CHANNELS * h * w,), np.float32)
                 for i, (h, w) in enumerate(self.image_shapes)}
        space["progress"] = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.observation_space = spaces.Dict(space)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.segments = task.config.segments
        self.enn_every = enn_every
        self.model: torch.nn.Module | None = None

    # -- synchronisation with the agent's critic
    def set_enn_state(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the current critic's parameters into this environment's ENN."""
        self.enn.load_state_dict(state_dict)

    # -- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.model, net_seed, init, scale, self.lr = draw_episode(
            self.np_random, self.task, self.inits, self.scale_range, self.lr_range)
        self.optimizer = self.task.make_optimizer(self.model, self.lr)
        cfg = self.task.config
        self.batches = batch_order(len(self.task.data.train_y), cfg.batch_size, cfg.epochs,
                                   seed=net_seed)
        self.instructor = GradInstructor(self.model, self.enn, strength=0.0,
                                         total_steps=self.task.total_steps,
                                         every=self.enn_every, spread=True)
        self.segment = 0
        self.strengths: list[float] = []
        self.net_seed, self.init = net_seed, init
        self.batches_used = 0
        self.last_finite_loss = float("nan")
        info = {"init": init, "scale": scale, "lr": self.lr, "net_seed": net_seed}
        return self._observation(), info

    def step(self, action):
        if self.model is None:
            raise RuntimeError("call reset() before step()")
        strength = strength_from_action(action, self.max_strength)
        self.instructor.strength = strength
        self.strengths.append(strength)
        diverged = not self._train_segment()
        self.segment += 1

        terminated = diverged or self.segment >= self.segments
        info: dict[str, Any] = {"strength": strength, "diverged": diverged}
        if diverged:  # the penalty: reward 0, the lowest accuracy there is
            info.update(diverged_step=self.instructor.step,
                        last_finite_loss=self.last_finite_loss)
        reward = 0.0
        if terminated:
            data = self.task.data
            reward = 0.0 if diverged else accuracy(self.model, data.val_x, data.val_y)
            info.update(val_acc=reward, mean_strength=float(np.mean(self.strengths)))
        return self._observation(), float(reward), terminated, False, info

    def _segment_steps(self) -> int:
        """Minibatch steps in the current segment (the remainder goes to the last ones)."""
        return segment_steps(self.task.total_steps, self.segments, self.segment)

    def _train_segment(self) -> bool:
        """Train for one segment; False if the loss or weights became non-finite."""
        data = self.task.data
        for _ in range(self._segment_steps()):
            idx = next(self.batches)
            self.batches_used += 1
            loss = F.cross_entropy(self.model(data.train_x[idx]), data.train_y[idx])
            total = self.instructor(loss)
            # the task's loss is checked and recorded (the ENN term's value, a linear
            # surrogate, means nothing by itself); non-finite weights are caught at the
            # end of the segment
            value = float(loss.detach())
            if not math.isfinite(value):
                return False
            self.last_finite_loss = value
            self.optimizer.zero_grad()
            total.backward()
            self.optimizer.step()
        return all(torch.isfinite(p).all() for p in self.model.parameters())

    # -- saving and restoring an episode in progress (for resuming the agent's training)
    def get_state(self) -> dict[str, Any]:
        """The episode in progress as tensors and plain data (``torch.load(weights_only=True)``).

        Together with :meth:`set_state` it lets a resumed agent continue every
        environment exactly where it was: the target network, its optimiser, the
        position in its minibatch order, the segment, the strengths so far, the
        ENN-gradient reuse state and the environment's random generator.
        """
        if self.model is None:
            raise RuntimeError("call reset() before get_state()")
        instructor = self.instructor
        grads = instructor._enn_grads
        return {
            "net_seed": self.net_seed, "init": self.init, "lr": self.lr,
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "batches_used": self.batches_used, "segment": self.segment,
            "strengths": list(self.strengths), "last_finite_loss": self.last_finite_loss,
            "instructor": {"step": instructor.step, "strength": float(instructor.strength),
                           "last_score": instructor.last_score,
                           "last_strength": instructor.last_strength,
                           "enn_grads": None if grads is None else [g.clone() for g in grads]},
            "np_random": self.np_random.bit_generator.state,
        }

    def set_state(self, state: dict[str, Any]) -> dict[str, np.ndarray]:
        """Restore an episode saved by :meth:`get_state`; returns its observation."""
        self.model = self.task.build_model(seed=state["net_seed"], init=state["init"])
        self.model.load_state_dict(state["model"])
        self.net_seed, self.init, self.lr = state["net_seed"], state["init"], state["lr"]
        self.optimizer = self.task.make_optimizer(self.model, self.lr)
        self.optimizer.load_state_dict(state["optimizer"])
        cfg = self.task.config
        self.batches = batch_order(len(self.task.data.train_y), cfg.batch_size, cfg.epochs,
                                   seed=self.net_seed)
        self.batches_used = state["batches_used"]
        for _ in range(self.batches_used):
            next(self.batches)
        saved = state["instructor"]
        self.instructor = GradInstructor(self.model, self.enn, strength=saved["strength"],
                                         total_steps=self.task.total_steps,
                                         every=self.enn_every, spread=True)
        self.instructor.step = saved["step"]
        self.instructor.last_score = saved["last_score"]
        self.instructor.last_strength = saved["last_strength"]
        self.instructor._enn_grads = saved["enn_grads"]
        self.segment, self.strengths = state["segment"], list(state["strengths"])
        self.last_finite_loss = state["last_finite_loss"]
        self.np_random.bit_generator.state = state["np_random"]
        return self._observation()

    def _observation(self) -> dict[str, np.ndarray]:
        with torch.no_grad():
            images = render_weights(self.model, self.enn.config.ratio)
        obs = {f"layer{i}": img.reshape(-1).cpu().numpy().astype(np.float32)
               for i, img in enumerate(images)}
        # a diverged network would leave the space: clip (and zero NaNs) to keep it valid
        obs = {k: np.clip(np.nan_to_num(v, nan=0.0), -OBS_BOUND, OBS_BOUND)
               for k, v in obs.items()}
        obs["progress"] = np.array([self.instructor.progress], dtype=np.float32)
        return obs
