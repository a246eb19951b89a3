"""A population of target networks in one stable-baselines3 ``VecEnv``, trained in lockstep.

:class:`PopulationVecEnv` is ``n_envs`` copies of
:class:`~gradinstructor.env.TargetTrainingEnv` folded into one object: the N target
MLPs are held as stacked weights (N, out, in) and biases (N, out), and every
minibatch step of all N is a handful of batched matrix products (``torch.baddbmm``
forward, a hand-written backward, an SGD update with per-network learning rates).
The ENN gradient of all N networks is one batched render
(:func:`~gradinstructor.render.render_stack`) and one ENN call: the ENN scores each
network on its own, so the gradient of ``sum_i ENN(net_i)`` with respect to the
stacked weights is each network's own gradient. Validation is batched too.

For the same seeds it plays exactly the episodes the single-network environments
play in a ``DummyVecEnv`` (same draws of initialisation, scale, learning rate and
minibatch order, via :func:`~gradinstructor.env.draw_episode`; same segments,
rewards, info keys, divergence penalty and auto-reset with ``terminal_observation``),
up to float rounding of the batched products (``tests/test_vec_env.py``). Its
:meth:`get_state` / :meth:`set_state` give and take the same per-network dicts as
:meth:`TargetTrainingEnv.get_state`, so agent states are interchangeable.

MLPs with plain SGD on the CPU only (the shipped MLP tasks); for anything else
(:meth:`PopulationVecEnv.unsupported`) :func:`gradinstructor.agent.make_vec_env`
falls back to a ``DummyVecEnv``.

Example:
    >>> from gradinstructor.tasks import load_task
    >>> vec = PopulationVecEnv(load_task("digits"), n_envs=4, seed=0)
    >>> obs = vec.reset()
    >>> obs["layer0"].shape, obs["progress"].shape
    ((4, 300), (4, 1))
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium.utils import seeding
from stable_baselines3.common.vec_env import VecEnv
from torch import nn

from gradinstructor.enn import ENNConfig
from gradinstructor.env import (
    OBS_BOUND,
    TargetTrainingEnv,
    draw_episode,
    segment_steps,
    strength_from_action,
)
from gradinstructor.render import DEFAULT_RATIO, render_stack
from gradinstructor.tasks import Task
from gradinstructor.trainer import batch_order

# Attributes kept per network; get_attr / set_attr address them per index.
SLOT_ATTRS = ("net_seed", "init", "lr", "segment", "strengths", "batches_used",
              "last_finite_loss")


class PopulationVecEnv(VecEnv):
    """``n_envs`` target-training environments as one population of stacked networks.

    Args:
        task: the task (its optimiser must be SGD).
        n_envs: networks in the population.
        seed: network ``i`` starts from the generator seeded ``seed + i``, as
            ``TargetTrainingEnv.reset(seed=seed + i)`` would.
        max_strength, ratio, lr_range, scale_range, inits, enn_config, enn_every:
            as for :class:`~gradinstructor.env.TargetTrainingEnv`.

    Raises:
        ValueError: the task's optimiser is not SGD, or ``n_envs`` is not positive.
    """

    def __init__(self, task: Task, n_envs: int, seed: int = 0, max_strength: float = 30.0,
                 ratio: float = DEFAULT_RATIO, lr_range: tuple[float, float] = (0.5, 2.0),
                 scale_range: tuple[float, float] = (0.5, 1.5),
                 inits: tuple[str, ...] = ("default", "he"),
                 enn_config: ENNConfig | None = None, enn_every: int = 1) -> None:
        reason = self.unsupported(task)
        if reason:
            raise ValueError(f"PopulationVecEnv cannot train task {task.name!r}: {reason}; use "
                             "a DummyVecEnv (make_vec_env(..., vectorised=False))")
        if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
            raise ValueError(f"n_envs must be a positive integer, but got {n_envs!r}")
        if not isinstance(enn_every, int) or enn_every < 1:
            raise ValueError(f"enn_every must be a positive integer, but got {enn_every!r}")
        # the single-network environment gives the spaces, the ENN and the checks
        proto = TargetTrainingEnv(task, max_strength=max_strength, ratio=ratio,
                                  lr_range=lr_range, scale_range=scale_range, inits=inits,
                                  enn_config=enn_config, enn_every=enn_every)
        self.task, self.max_strength = task, max_strength
        self.lr_range, self.scale_range, self.inits = lr_range, scale_range, inits
        self.enn = proto.enn  # frozen, eval mode
        self.ratio = self.enn.config.ratio
        self.segments, self.enn_every = proto.segments, enn_every
        self.render_mode = None
        probe = task.build_model(seed=0)
        names = [name for name, m in probe.named_modules() if isinstance(m, nn.Linear)]
        kinds = (nn.Linear, nn.ReLU, nn.Tanh)
        if not all(isinstance(m, kinds) for m in probe.children()):
            raise ValueError("PopulationVecEnv trains MLPs of Linear layers and ReLU/Tanh only")
        self._param_keys = [(f"{n}.weight", f"{n}.bias") for n in names]
        self._probe = probe
        self._tanh = task.config.activation == "tanh"
        sizes = task.layer_sizes
        self.weights = [torch.zeros(n_envs, o, i) for i, o in zip(sizes[:-1], sizes[1:])]
        self.biases = [torch.zeros(n_envs, o) for o in sizes[1:]]
        self.enn_grads = [torch.zeros_like(w) for w in self.weights]
        n_train = len(task.data.train_y)
        self._n_train = n_train
        self._orders = torch.zeros(n_envs, task.config.epochs * n_train, dtype=torch.int64)
        self._rngs: list[np.random.Generator] = [seeding.np_random(seed + i)[0]
                                                  for i in range(n_envs)]
        self.net_seed = [0] * n_envs
        self.init = [""] * n_envs
        self.lr = [0.0] * n_envs
        self.segment = [0] * n_envs
        self.strengths: list[list[float]] = [[] for _ in range(n_envs)]
        self.batches_used = [0] * n_envs
        self.last_finite_loss = [float("nan")] * n_envs
        # the GradInstructor of each network: step, strength, last score and strength
        self._step = np.zeros(n_envs, dtype=np.int64)
        self._strength = np.zeros(n_envs)
        self._last_score = np.full(n_envs, np.nan)
        self._last_strength = np.zeros(n_envs)
        self._has_grads = np.zeros(n_envs, dtype=bool)
        self._diverged_step = np.zeros(n_envs, dtype=np.int64)
        self._actions: np.ndarray | None = None
        # per-segment constants of _sgd_step (see _step_scales), and a cached -1 tensor
        self._segment_key = 0
        self._scales_key: tuple | None = None
        self._scales: tuple = ()
        self._minus_ones = torch.zeros(0)
        super().__init__(n_envs, proto.observation_space, proto.action_space)
        for i in range(n_envs):
            self.reset_infos[i] = self._new_episode(i)

    @staticmethod
    def unsupported(task: Task) -> str | None:
        """Why the population cannot train ``task`` (None if it can).

        It trains MLPs (Linear layers with ReLU or tanh) with plain SGD on the CPU.
        """
        if task.config.optimizer != "sgd":
            return f"it trains with plain SGD, but the task uses {task.config.optimizer}"
        if getattr(task.config, "arch", "mlp") != "mlp":
            return f"it trains MLPs, but the task's network is a {task.config.arch}"
        device = getattr(task, "device", None)
        if device is not None and torch.device(device).type != "cpu":
            return f"it runs on the CPU, but the task is on {device}"
        return None

    # -- episodes
    def _new_episode(self, i: int) -> dict[str, Any]:
        """Draw network ``i``'s next episode from its generator (as TargetTrainingEnv.reset)."""
        model, net_seed, init, scale, lr = draw_episode(
            self._rngs[i], self.task, self.inits, self.scale_range, self.lr_range)
        state = model.state_dict()
        with torch.no_grad():
            for (wk, bk), w, b in zip(self._param_keys, self.weights, self.biases):
                w[i].copy_(state[wk])
                b[i].copy_(state[bk])
        self._set_order(i, net_seed)
        self.net_seed[i], self.init[i], self.lr[i] = net_seed, init, lr
        self.segment[i], self.strengths[i], self.batches_used[i] = 0, [], 0
        self.last_finite_loss[i] = float("nan")
        self._step[i], self._strength[i] = 0, 0.0
        self._last_score[i], self._last_strength[i] = float("nan"), 0.0
        self._has_grads[i] = False
        return {"init": init, "scale": scale, "lr": lr, "net_seed": net_seed}

    def _set_order(self, i: int, net_seed: int) -> None:
        cfg = self.task.config
        self._orders[i] = torch.cat(list(batch_order(self._n_train, cfg.batch_size, cfg.epochs,
                                                     seed=net_seed)))

    def _batch_indices(self, i: int, t: int) -> torch.Tensor:
        """Indices of network ``i``'s minibatch number ``t`` (as batch_order yields them)."""
        start, end = self._batch_bounds(t)
        return self._orders[i, start:end]

    def _batch_bounds(self, t: int) -> tuple[int, int]:
        bs, n = self.task.config.batch_size, self._n_train
        epoch, k = divmod(t, self.task.steps_per_epoch)
        return epoch * n + k * bs, epoch * n + min((k + 1) * bs, n)

    # -- VecEnv API
    def reset(self) -> dict[str, np.ndarray]:
        for i in range(self.num_envs):
            if self._seeds[i] is not None:
                self._rngs[i] = seeding.np_random(self._seeds[i])[0]
            self.reset_infos[i] = self._new_episode(i)
        self._reset_seeds()
        self._reset_options()
        return self._observations()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self):
        if self._actions is None:
            raise RuntimeError("call step_async() before step_wait()")
        actions, self._actions = self._actions, None
        n = self.num_envs
        strengths = [strength_from_action(actions[i], self.max_strength) for i in range(n)]
        for i, strength in enumerate(strengths):
            self._strength[i] = strength
            self.strengths[i].append(strength)
        steps = [segment_steps(self.task.total_steps, self.segments, s) for s in self.segment]
        diverged = self._train_segment(steps)
        self.segment = [s + 1 for s in self.segment]
        terminated = diverged | (np.array(self.segment) >= self.segments)
        obs = self._observations()
        rewards = np.zeros(n, dtype=np.float32)
        finished = np.flatnonzero(terminated & ~diverged)
        accs = self._accuracy(finished) if len(finished) else []
        for i, acc in zip(finished, accs):
            rewards[i] = acc
        infos: list[dict[str, Any]] = []
        for i in range(n):
            info: dict[str, Any] = {"strength": strengths[i], "diverged": bool(diverged[i])}
            if diverged[i]:
                info.update(diverged_step=int(self._diverged_step[i]),
                            last_finite_loss=self.last_finite_loss[i])
            if terminated[i]:
                info.update(val_acc=float(rewards[i]),
                            mean_strength=float(np.mean(self.strengths[i])))
            info["TimeLimit.truncated"] = False
            infos.append(info)
        done = np.flatnonzero(terminated)
        if len(done):
            for i in done:
                infos[i]["terminal_observation"] = {k: v[i].copy() for k, v in obs.items()}
                self.reset_infos[i] = self._new_episode(int(i))
            fresh = self._observations(done)
            for key, value in fresh.items():
                obs[key][done] = value
        return obs, rewards, terminated.copy(), infos

    def close(self) -> None:
        pass

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        """Per-network attributes (``lr``, ``segment``, ...) per index; others shared."""
        idx = list(self._get_indices(indices))
        if attr_name in SLOT_ATTRS:
            values = getattr(self, attr_name)
            return [values[i] for i in idx]
        return [getattr(self, attr_name) for _ in idx]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        """Set a per-network attribute per index, or a shared one for all networks."""
        idx = list(self._get_indices(indices))
        if attr_name in SLOT_ATTRS:
            values = getattr(self, attr_name)
            for i in idx:
                values[i] = value
            return
        if sorted(idx) != list(range(self.num_envs)):
            raise ValueError(f"{attr_name!r} is shared by all networks of the population; "
                             "set it for all of them (indices=None)")
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None,
                   **method_kwargs) -> list[Any]:
        """``set_enn_state`` (shared), ``get_state`` and ``set_state`` (per network)."""
        idx = list(self._get_indices(indices))
        if method_name == "set_enn_state":
            self.set_enn_state(*method_args, **method_kwargs)
            return [None for _ in idx]
        if method_name in ("get_state", "set_state"):
            method = getattr(self, method_name)
            return [method(i, *method_args, **method_kwargs) for i in idx]
        raise AttributeError(f"PopulationVecEnv has no per-environment method {method_name!r}; "
                             "it has set_enn_state, get_state and set_state")

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices=None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]

    # -- synchronisation with the agent's critic
    def set_enn_state(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the current critic's parameters into the population's ENN."""
        self.enn.load_state_dict(state_dict)

    # -- training
    def _train_segment(self, steps: Sequence[int]) -> np.ndarray:
        """Train every network for its segment's steps; True where it diverged."""
        n = self.num_envs
        remaining = np.asarray(steps)
        diverged = np.zeros(n, dtype=bool)
        self._segment_key += 1  # new strengths (and, after resets, learning rates)
        for it in range(int(remaining.max(initial=0))):
            active = (remaining > it) & ~diverged
            if not active.any():
                break
            ids = None if active.all() else torch.from_numpy(np.flatnonzero(active))
            finite = self._sgd_step(ids)
            if not finite.all():
                where = np.flatnonzero(active)[~finite]
                diverged[where] = True
                self._diverged_step[where] = self._step[where]
        # non-finite weights after the segment end the episode too
        with torch.no_grad():
            ok = torch.ones(n, dtype=torch.bool)
            for w, b in zip(self.weights, self.biases):
                ok &= torch.isfinite(w).flatten(1).all(1) & torch.isfinite(b).all(1)
        bad = ~ok.numpy() & ~diverged
        self._diverged_step[bad] = self._step[bad]
        return diverged | bad

    def _enn_gradient(self, sub: np.ndarray) -> None:
        """dENN/dw of networks ``sub`` at their weights and progress, stored for reuse."""
        everyone = len(sub) == self.num_envs
        index = torch.from_numpy(sub)
        total = self.task.total_steps
        progress = torch.from_numpy(np.minimum(1.0, self._step[sub] / total)).float()
        with torch.enable_grad():
            leaves = [(w.detach() if everyone else w[index]).requires_grad_(True)
                      for w in self.weights]
            images = [render_stack(w, self.ratio) for w in leaves]
            scores = self.enn(images, progress)
            grads = torch.autograd.grad(scores.sum(), leaves)
        for store, grad in zip(self.enn_grads, grads):
            if everyone:
                store.copy_(grad)
            else:
                store[index] = grad
        self._has_grads[sub] = True
        self._last_score[sub] = scores.detach().double().numpy()

    def _minibatches(self, sel: np.ndarray, ids: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next minibatch indices of networks ``sel`` (m, B), and a mask if ragged.

        One slice for all when they are at the same position (lockstep, the usual
        case); otherwise each network's own, padded, with a 0/1 mask.
        """
        used = [self.batches_used[i] for i in sel]
        for i in sel:
            self.batches_used[i] += 1
        if all(t == used[0] for t in used):
            start, end = self._batch_bounds(used[0])
            orders = self._orders if ids is None else self._orders[ids]
            return orders[:, start:end], None
        parts = [self._batch_indices(i, t) for i, t in zip(sel, used)]
        width = max(len(p) for p in parts)
        batch = torch.zeros(len(parts), width, dtype=torch.int64)
        mask = torch.zeros(len(parts), width)
        for row, part in enumerate(parts):
            batch[row, :len(part)] = part
            mask[row, :len(part)] = 1.0
        return batch, mask

    @torch.no_grad()
    def _sgd_step(self, ids: torch.Tensor | None) -> np.ndarray:
        """One minibatch step of networks ``ids`` (None: all); True where the loss was finite.

        The same arithmetic as ``TargetTrainingEnv``'s step: cross-entropy on the
        network's own minibatch, its gradient, plus the ENN term ``strength * g``
        with g recomputed every ``enn_every`` steps, then SGD. As there, the loss
        checked and recorded is the task's cross-entropy.
        """
        sel = np.arange(self.num_envs) if ids is None else ids.numpy()
        data = self.task.data
        batch, mask = self._minibatches(sel, ids)
        flat = batch.reshape(-1)  # index_select: several times faster than x[batch]
        x = data.train_x.index_select(0, flat).view(*batch.shape, -1)  # (m, B, in)
        y = data.train_y.index_select(0, flat).view(batch.shape)  # (m, B)

        # the ENN term, as GradInstructor: recompute every `enn_every` steps, skip at 0
        strength = self._strength[sel]
        steps = self._step[sel]
        need = (strength != 0) & (~self._has_grads[sel] | (steps % self.enn_every == 0))
        if need.any():
            self._enn_gradient(sel[need])
        self._last_strength[sel] = strength
        self._step[sel] += 1

        weights = self.weights if ids is None else [w[ids] for w in self.weights]
        biases = self.biases if ids is None else [b[ids] for b in self.biases]

        # feature-major (m, features, B) throughout: faster than (m, B, features) for
        # these small batched products (benchmarks/env_throughput.py times the whole step)
        inputs, logits = self._forward_batch(x.transpose(1, 2), weights, biases)
        log_probs = F.log_softmax(logits, dim=1)  # (m, classes, B)
        nll = -log_probs.gather(1, y.unsqueeze(1)).squeeze(1)  # (m, B)
        if mask is None:
            loss = nll.mean(dim=1)
        else:
            count = mask.sum(dim=1)
            loss = (nll * mask).sum(dim=1) / count
        values = loss.tolist()
        finite_np = np.isfinite(values)
        for row in np.flatnonzero(finite_np):
            self.last_finite_loss[sel[row]] = values[row]

        # backward by hand, with the learning rate and 1/batch folded into dLoss/dlogits:
        # every gradient is linear in it, so each product below is already lr * gradient
        scale, term_scale = self._step_scales(sel, ids, finite_np, mask)
        dz = log_probs.exp_()  # softmax, in place: log_probs is not needed any more
        dz.scatter_add_(1, y.unsqueeze(1), self._minus_one(y.shape))
        # 1/B: the minibatch's size (the last of an epoch is smaller), or each row's count
        dz.mul_(scale / (y.shape[1] if mask is None else count[:, None, None]))
        if mask is not None:
            dz.mul_(mask.unsqueeze(1))
        if not finite_np.all():  # never let a NaN step touch a network that stops here
            dz = torch.where(torch.from_numpy(finite_np)[:, None, None], dz, torch.zeros(()))
        term = None
        if term_scale is not None:
            grads_enn = self.enn_grads if ids is None else [g[ids] for g in self.enn_grads]
            term = (term_scale, grads_enn)
        self._backward_update(ids, dz, inputs, weights, biases, term)
        return finite_np

    def _step_scales(self, sel: np.ndarray, ids: torch.Tensor | None, finite: np.ndarray,
                     mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(lr, lr * strength) per network as (m, 1, 1); None for no ENN term.

        The learning rates and strengths are fixed for a segment, so they are built once
        per segment and set of networks (a network whose loss is not finite takes no step).
        """
        key = (None if ids is None else tuple(sel.tolist()), self._segment_key)
        if self._scales_key != key:
            lr = self._lr_tensor(sel)
            strength = torch.from_numpy(self._strength[sel]).float()
            term = (lr * strength)[:, None, None] if bool((strength != 0).any()) else None
            self._scales = (lr[:, None, None], term)
            self._scales_key = key
        lr, term = self._scales
        if not finite.all():
            keep = torch.from_numpy(finite).float()[:, None, None]
            lr = lr * keep
            term = term * keep if term is not None else None
        return lr, term

    def _minus_one(self, shape: torch.Size) -> torch.Tensor:
        """A cached (m, 1, B) tensor of -1 (the one-hot subtracted from the softmax)."""
        shape = (shape[0], 1, shape[1])
        if self._minus_ones.shape != shape:
            self._minus_ones = torch.full(shape, -1.0)
        return self._minus_ones

    def _lr_tensor(self, sel: np.ndarray) -> torch.Tensor:
        return torch.tensor([self.lr[i] for i in sel], dtype=torch.float32)

    def _forward_batch(self, x: torch.Tensor, weights: list[torch.Tensor],
                       biases: list[torch.Tensor]) -> tuple[list, torch.Tensor]:
        """Forward pass of stacked networks on their minibatches, feature-major.

        ``x`` is (m, in, B) (a transposed view is fine). Returns each layer's input
        (m, features, B) and the logits (m, classes, B).
        """
        inputs = []
        h = x
        last = len(weights) - 1
        for layer, (w, b) in enumerate(zip(weights, biases)):
            inputs.append(h)
            z = torch.baddbmm(b.unsqueeze(2), w, h)  # W h + b
            if layer < last:
                h = torch.tanh_(z) if self._tanh else torch.relu_(z)
            else:
                h = z
        return inputs, h

    def _backward_update(self, ids: torch.Tensor | None, dz: torch.Tensor, inputs: list,
                         weights: list, biases: list, term: tuple | None) -> None:
        """Backpropagate ``dz`` (lr times dLoss/dlogits, (m, classes, B)) and step ``ids``.

        ``term`` is (lr * strength as (m, 1, 1), ENN gradients) when some network has a non-zero
        strength: its weights also move by ``+lr * strength * g``.
        """
        for layer in range(len(weights) - 1, -1, -1):
            w, b = weights[layer], biases[layer]
            a = inputs[layer]  # (m, in, B)
            dh = None
            if layer > 0:  # with the weights before this step
                dh = torch.bmm(w.transpose(1, 2), dz)
            step_b = dz.sum(dim=2)
            if ids is None:  # in place: W <- W - dz a^T (+ lr * strength * g)
                w.baddbmm_(dz, a.transpose(1, 2), alpha=-1.0)
                if term is not None:
                    w.addcmul_(term[1][layer], term[0])
                b.sub_(step_b)
            else:
                new_w = torch.baddbmm(w, dz, a.transpose(1, 2), alpha=-1.0)
                if term is not None:
                    new_w.addcmul_(term[1][layer], term[0])
                self.weights[layer].index_put_((ids,), new_w)
                self.biases[layer].index_put_((ids,), b - step_b)
            if dh is not None:
                if self._tanh:
                    dz = dh * (1 - a * a)
                else:
                    dz = torch.ops.aten.threshold_backward(dh, a, 0)

    @torch.no_grad()
    def _forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Logits of networks ``index`` on the shared inputs x (V, in): (m, V, classes)."""
        h = x
        last = len(self.weights) - 1
        for layer, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = torch.matmul(h, w[index].transpose(1, 2)) + b[index].unsqueeze(1)
            h = (torch.tanh(z) if self._tanh else torch.relu(z)) if layer < last else z
        return h

    def _accuracy(self, sel: np.ndarray) -> list[float]:
        """Validation accuracy of networks ``sel``, one batched pass."""
        data = self.task.data
        logits = self._forward(data.val_x, torch.from_numpy(np.asarray(sel)))
        hits = (logits.argmax(dim=2) == data.val_y).float().mean(dim=1)
        return [float(v) for v in hits]

    def _observations(self, sel: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Observations of networks ``sel`` (None: all), as TargetTrainingEnv's, batched."""
        index = None if sel is None else torch.from_numpy(np.asarray(sel))
        obs: dict[str, np.ndarray] = {}
        with torch.no_grad():
            for layer, w in enumerate(self.weights):
                stack = w if index is None else w[index]
                flat = render_stack(stack, self.ratio).reshape(stack.shape[0], -1).numpy()
                flat = np.clip(np.nan_to_num(flat, nan=0.0), -OBS_BOUND, OBS_BOUND)
                obs[f"layer{layer}"] = flat.astype(np.float32, copy=False)
        rows = np.arange(self.num_envs) if sel is None else np.asarray(sel)
        progress = np.minimum(1.0, self._step[rows] / self.task.total_steps)
        obs["progress"] = progress.astype(np.float32).reshape(-1, 1)
        return obs

    # -- saving and restoring (the same per-network dicts as TargetTrainingEnv's)
    def get_state(self, i: int) -> dict[str, Any]:
        """Network ``i``'s episode in progress, as :meth:`TargetTrainingEnv.get_state`."""
        model = {}
        for (wk, bk), w, b in zip(self._param_keys, self.weights, self.biases):
            model[wk], model[bk] = w[i].clone(), b[i].clone()
        optimizer = self.task.make_optimizer(self._probe, self.lr[i])
        return {
            "net_seed": self.net_seed[i], "init": self.init[i], "lr": self.lr[i],
            "model": model, "optimizer": copy.deepcopy(optimizer.state_dict()),
            "batches_used": self.batches_used[i], "segment": self.segment[i],
            "strengths": list(self.strengths[i]),
            "last_finite_loss": self.last_finite_loss[i],
            "instructor": {
                "step": int(self._step[i]), "strength": float(self._strength[i]),
                "last_score": float(self._last_score[i]),
                "last_strength": float(self._last_strength[i]),
                "enn_grads": ([g[i].clone() for g in self.enn_grads]
                              if self._has_grads[i] else None)},
            "np_random": self._rngs[i].bit_generator.state,
        }

    def set_state(self, i: int, state: dict[str, Any]) -> dict[str, np.ndarray]:
        """Restore network ``i``'s episode from a :meth:`get_state` dict; its observation."""
        with torch.no_grad():
            for (wk, bk), w, b in zip(self._param_keys, self.weights, self.biases):
                w[i].copy_(state["model"][wk])
                b[i].copy_(state["model"][bk])
        self.net_seed[i], self.init[i] = state["net_seed"], state["init"]
        self.lr[i] = state["lr"]
        self._set_order(i, state["net_seed"])
        self.batches_used[i], self.segment[i] = state["batches_used"], state["segment"]
        self.strengths[i] = list(state["strengths"])
        self.last_finite_loss[i] = state["last_finite_loss"]
        saved = state["instructor"]
        self._step[i], self._strength[i] = saved["step"], saved["strength"]
        self._last_score[i], self._last_strength[i] = saved["last_score"], saved["last_strength"]
        grads = saved["enn_grads"]
        self._has_grads[i] = grads is not None
        if grads is not None:
            for store, grad in zip(self.enn_grads, grads):
                store[i] = grad
        self._rngs[i].bit_generator.state = state["np_random"]
        obs = self._observations(np.array([i]))
        return {k: v[0] for k, v in obs.items()}
