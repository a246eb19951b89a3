"""The RL environment: both checkers, episode length, reward, step budget, seeding."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from gradinstructor.env import TargetTrainingEnv, strength_from_action
from gradinstructor.pipeline import shrink_task


def test_gymnasium_checker_passes_without_warnings(digits_task):
    env = TargetTrainingEnv(digits_task)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gymnasium_check_env(env, skip_render_check=True)


def test_sb3_checker_passes_without_warnings(digits_task):
    env = TargetTrainingEnv(digits_task)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_check_env(env, warn=True)


def _play(env: TargetTrainingEnv, seed: int, actions) -> list[tuple]:
    """Reset with ``seed`` and step through ``actions`` until the episode ends."""
    env.reset(seed=seed)
    steps = []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(np.array([action], np.float32))
        steps.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            break
    return steps


def test_episode_has_one_step_per_segment_and_pays_the_final_val_accuracy(small_digits):
    env = TargetTrainingEnv(small_digits, max_strength=10.0)
    segments = small_digits.config.segments

    steps = _play(env, seed=0, actions=[0.0] * (segments + 5))

    assert len(steps) == segments
    assert [s[2] for s in steps] == [False] * (segments - 1) + [True]
    assert not any(s[3] for s in steps)  # never truncated
    assert [s[1] for s in steps[:-1]] == [0.0] * (segments - 1)
    data = small_digits.data
    with torch.no_grad():
        expected = (env.model(data.val_x).argmax(dim=1) == data.val_y).double().mean().item()
    final_reward, info = steps[-1][1], steps[-1][4]
    assert final_reward == pytest.approx(expected, abs=1e-6)
    assert 0.0 < final_reward <= 1.0
    assert info["val_acc"] == final_reward and not info["diverged"]
    assert info["strength"] == pytest.approx(5.0)  # action 0 -> half of max_strength
    assert steps[-1][0]["progress"][0] == pytest.approx(1.0)
    for obs, *_ in steps:
        assert env.observation_space.contains(obs)


def _count_optimizer_steps(env: TargetTrainingEnv) -> list[int]:
    """Per segment, how many optimiser steps the environment took (reset first)."""
    counter = {"n": 0}
    env.optimizer.register_step_post_hook(lambda *_: counter.__setitem__("n", counter["n"] + 1))
    per_segment = []
    terminated = False
    while not terminated:
        before = counter["n"]
        _, _, terminated, _, _ = env.step(env.action_space.sample())
        per_segment.append(counter["n"] - before)
    return per_segment


@pytest.mark.parametrize(("train", "epochs", "expected"),
                         [(300, 2, [2, 2, 3, 3]),  # 10 steps in 4 segments
                          (256, 2, [2, 2, 2, 2]),  # 8 steps, divides evenly
                          (100, 1, [0, 0, 1, 1])])  # fewer steps than segments
def test_an_episode_takes_exactly_the_task_budget_of_minibatch_steps(digits_task, train, epochs,
                                                                     expected):
    task = shrink_task(digits_task, train=train, epochs=epochs)
    env = TargetTrainingEnv(task)
    env.reset(seed=0)
    env.action_space.seed(0)

    per_segment = _count_optimizer_steps(env)

    assert sum(per_segment) == task.total_steps
    assert per_segment == expected
    assert env.instructor.step == task.total_steps


def test_a_full_digits_episode_takes_the_full_budget(digits_task):
    env = TargetTrainingEnv(digits_task)
    env.reset(seed=1)

    per_segment = _count_optimizer_steps(env)

    assert len(per_segment) == digits_task.config.segments == 10
    assert sum(per_segment) == digits_task.total_steps == 16 * 10  # ceil(1000 / 64) per epoch


@pytest.mark.parametrize(
    ("action", "expected"),
    [(-1.0, 0.0), (1.0, 30.0), (0.0, 15.0), (0.5, 22.5), (-0.5, 7.5),
     (3.0, 30.0), (-7.0, 0.0), (np.array([1.0], np.float32), 30.0),
     (np.array([[-1.0]]), 0.0), ([0.0], 15.0)],
)
def test_strength_from_action(action, expected):
    assert strength_from_action(action, 30.0) == pytest.approx(expected)


def test_strength_from_action_scales_with_max_strength():
    assert strength_from_action(1.0, 5.0) == 5.0
    assert strength_from_action(1.0, 0.0) == 0.0


def test_negative_max_strength_is_refused(small_digits):
    with pytest.raises(ValueError, match="max_strength must be non-negative, but got -1"):
        TargetTrainingEnv(small_digits, max_strength=-1)


def test_step_before_reset_is_refused(small_digits):
    with pytest.raises(RuntimeError, match="reset"):
        TargetTrainingEnv(small_digits).step(np.zeros(1, np.float32))


def _final_weights(task, seed: int, enn_state: dict) -> dict[str, torch.Tensor]:
    env = TargetTrainingEnv(task, max_strength=10.0)
    env.set_enn_state(enn_state)  # as the agent does before every rollout
    _play(env, seed=seed, actions=[0.8, -0.2, 0.4, 1.0])
    return {k: v.clone() for k, v in env.model.state_dict().items()}


def _enn_state(task, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return TargetTrainingEnv(task).enn.state_dict()


def test_same_seed_gives_the_same_final_weights(small_digits):
    enn_state = _enn_state(small_digits, 0)

    first = _final_weights(small_digits, 7, enn_state)
    second = _final_weights(small_digits, 7, enn_state)
    other_seed = _final_weights(small_digits, 8, enn_state)

    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other_seed[k]) for k in first)


def test_the_synchronised_critic_drives_the_training(small_digits):
    first = _final_weights(small_digits, 7, _enn_state(small_digits, 0))
    other_critic = _final_weights(small_digits, 7, _enn_state(small_digits, 1))

    assert not all(torch.equal(first[k], other_critic[k]) for k in first)


def test_reset_draws_varied_networks(small_digits):
    env = TargetTrainingEnv(small_digits)
    infos = [env.reset(seed=s)[1] for s in range(12)]

    assert {info["init"] for info in infos} == {"default", "he"}
    lrs = [info["lr"] / small_digits.config.lr for info in infos]
    assert all(0.5 <= f <= 2.0 for f in lrs) and len(set(lrs)) == len(lrs)
    assert all(0.5 <= info["scale"] <= 1.5 for info in infos)
