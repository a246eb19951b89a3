"""The population VecEnv against N single-network environments: same seeds, same results.

The population trains its networks with batched products (``bmm``) and a hand-written
backward pass, the single-network environment with ``nn.Linear`` and autograd: the
same arithmetic summed in another order, so the weights agree to float32 rounding,
not bit for bit. After a segment (2-3 SGD steps, the ENN gradient with it) the
differences measured here are around 1e-7; the tolerance, 1e-5 absolute and
relative, is two orders above that and two below how far a segment moves the
weights (over 1e-3), so a wrong step, a wrong minibatch or a wrong learning rate
fails it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

from gradinstructor.agent import ENNSyncCallback, build_algorithm, make_vec_env
from gradinstructor.config import load_agent_config
from gradinstructor.enn import ENNConfig
from gradinstructor.env import TargetTrainingEnv
from gradinstructor.render import layer_shapes
from gradinstructor.tasks import Task
from gradinstructor.vec_env import PopulationVecEnv

TOL = dict(rtol=1e-5, atol=1e-5)
N = 3
SEED = 11


def _enn_state(task) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return TargetTrainingEnv(task).enn.state_dict()


def _singles(task, enn_state, max_strength=10.0, enn_every=1) -> list[TargetTrainingEnv]:
    envs = []
    for i in range(N):
        env = TargetTrainingEnv(task, max_strength=max_strength, enn_every=enn_every)
        env.set_enn_state(enn_state)
        env.reset(seed=SEED + i)
        envs.append(env)
    return envs


def _population(task, enn_state, max_strength=10.0, enn_every=1) -> PopulationVecEnv:
    vec = PopulationVecEnv(task, N, seed=SEED, max_strength=max_strength, enn_every=enn_every)
    vec.env_method("set_enn_state", enn_state)  # as ENNSyncCallback does
    return vec


def _assert_same_weights(vec: PopulationVecEnv, envs: list[TargetTrainingEnv]) -> None:
    for i, env in enumerate(envs):
        mine = vec.get_state(i)["model"]
        theirs = env.model.state_dict()
        assert mine.keys() == theirs.keys()
        for key in theirs:
            torch.testing.assert_close(mine[key], theirs[key], **TOL, msg=f"network {i} {key}")


def _max_difference(vec, envs) -> float:
    return max(float((vec.get_state(i)["model"][k] - v).abs().max())
               for i, env in enumerate(envs) for k, v in env.model.state_dict().items())


@pytest.mark.parametrize("actions", [[-1.0, -1.0, -1.0],  # strength 0: plain SGD
                                     [0.6, -0.2, 1.0]])   # 8, 4 and 10 with a fixed ENN
def test_one_segment_gives_the_single_environments_weights(small_digits, actions):
    enn_state = _enn_state(small_digits)
    envs = _singles(small_digits, enn_state)
    vec = _population(small_digits, enn_state)
    start = [vec.get_state(i)["model"] for i in range(N)]
    for i, env in enumerate(envs):  # the same drawn networks before any step
        for key, value in env.model.state_dict().items():
            assert torch.equal(start[i][key], value)
        assert vec.lr[i] == env.lr and vec.net_seed[i] == env.net_seed

    vec.step(np.array(actions, np.float32).reshape(N, 1))
    for env, a in zip(envs, actions):
        env.step(np.array([a], np.float32))

    _assert_same_weights(vec, envs)
    assert _max_difference(vec, envs) < 1e-6  # what the module docstring states
    for i, env in enumerate(envs):
        after = vec.get_state(i)["model"]
        moved = max(float((after[k] - start[i][k]).abs().max()) for k in after)
        assert moved > 1e-3  # the segment's steps are far larger than the tolerance
        state = vec.get_state(i)
        assert state["batches_used"] == env.batches_used == 2
        assert state["instructor"]["step"] == env.instructor.step
        assert state["last_finite_loss"] == pytest.approx(env.last_finite_loss, rel=1e-5)
        if actions[i] > -1:
            assert state["instructor"]["last_score"] == pytest.approx(
                env.instructor.last_score, rel=1e-5)


@pytest.mark.parametrize(("enn_every", "activation"), [(1, "relu"), (3, "relu"), (1, "tanh")])
def test_full_episodes_give_the_same_rewards_ends_and_observations(small_digits, enn_every,
                                                                    activation):
    if activation != small_digits.config.activation:
        config = dataclasses.replace(small_digits.config, activation=activation)
        small_digits = Task(config=config, data=small_digits.data)
    enn_state = _enn_state(small_digits)
    vec = _population(small_digits, enn_state, enn_every=enn_every)
    dummy = DummyVecEnv([lambda i=i: _singles(small_digits, enn_state, enn_every=enn_every)[i]
                         for i in range(N)])
    dummy.seed(SEED)
    vec.seed(SEED)
    obs_d, obs_v = dummy.reset(), vec.reset()
    rng = np.random.default_rng(0)
    segments = small_digits.config.segments
    ended = 0
    for _ in range(segments + 2):  # one full episode and two segments of the next
        actions = rng.uniform(-1, 1, size=(N, 1)).astype(np.float32)
        obs_d, rew_d, done_d, info_d = dummy.step(actions)
        obs_v, rew_v, done_v, info_v = vec.step(actions)
        np.testing.assert_array_equal(done_v, done_d)
        np.testing.assert_allclose(rew_v, rew_d, atol=1e-6)
        for key in obs_d:
            np.testing.assert_allclose(obs_v[key], obs_d[key], rtol=1e-4, atol=1e-4)
        for a, b in zip(info_v, info_d):
            assert a.keys() == b.keys()
            assert a["strength"] == pytest.approx(b["strength"])
            if "val_acc" in b:
                assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-6)
                assert a["mean_strength"] == pytest.approx(b["mean_strength"])
                for key in b["terminal_observation"]:
                    np.testing.assert_allclose(a["terminal_observation"][key],
                                               b["terminal_observation"][key],
                                               rtol=1e-4, atol=1e-4)
        ended += int(done_v.sum())
    assert ended == N  # every network finished its episode, and was reset
    _assert_same_weights(vec, [dummy.envs[i] for i in range(N)])
    assert vec.net_seed == [dummy.envs[i].net_seed for i in range(N)]  # second episodes


def test_states_move_between_the_two_kinds_and_ragged_positions_still_match(small_digits):
    enn_state = _enn_state(small_digits)
    envs = _singles(small_digits, enn_state)
    envs[1].step(np.array([0.5], np.float32))  # network 1 is one segment ahead (2 steps)
    vec = _population(small_digits, enn_state)
    for i, env in enumerate(envs):
        vec.env_method("set_state", env.get_state(), indices=[i])

    actions = [0.2, 0.9, -1.0]
    vec.step(np.array(actions, np.float32).reshape(N, 1))
    for env, a in zip(envs, actions):
        env.step(np.array([a], np.float32))

    _assert_same_weights(vec, envs)
    assert vec.get_attr("segment") == [1, 2, 1]
    # and back: a population state continues in a single environment
    back = TargetTrainingEnv(small_digits, max_strength=10.0)
    back.set_enn_state(enn_state)
    back.set_state(vec.get_state(1))
    back.step(np.array([0.3], np.float32))
    envs[1].step(np.array([0.3], np.float32))
    for key, value in envs[1].model.state_dict().items():
        torch.testing.assert_close(back.model.state_dict()[key], value, **TOL)


def test_a_diverging_network_ends_alone_with_the_penalty(small_digits):
    vec = _population(small_digits, _enn_state(small_digits))
    vec.lr[2] = 1e30  # only network 2 blows up
    _, rewards, dones, infos = vec.step(np.zeros((N, 1), np.float32))
    assert dones.tolist() == [False, False, True]
    assert infos[2]["diverged"] and rewards[2] == 0.0 and infos[2]["val_acc"] == 0.0
    assert infos[2]["diverged_step"] >= 1 and "terminal_observation" in infos[2]
    assert not infos[0]["diverged"] and "val_acc" not in infos[0]
    assert vec.get_attr("segment") == [1, 1, 0]  # network 2 was reset
    assert all(torch.isfinite(w).all() for w in vec.weights)


def test_make_vec_env_gives_the_population_by_default_and_dummy_on_request(small_digits):
    agent = load_agent_config("ppo", n_envs=2)
    config = ENNConfig(layer_shapes=layer_shapes(small_digits.build_model(seed=0)))
    assert isinstance(make_vec_env(small_digits, agent, 0, config, 1), PopulationVecEnv)
    assert isinstance(make_vec_env(small_digits, agent, 0, config, 1, vectorised=False),
                      DummyVecEnv)


def test_ppo_plays_the_same_episodes_on_the_population_as_on_dummy(small_digits):
    agent = load_agent_config("ppo", n_envs=2, n_steps=2, batch_size=4, n_epochs=1)
    config = ENNConfig(layer_shapes=layer_shapes(small_digits.build_model(seed=0)))
    played = []
    for vectorised in (True, False):
        torch.manual_seed(0)
        algo = build_algorithm(small_digits, agent, 0, config, vectorised=vectorised)
        callback = ENNSyncCallback(progress_bar=False)  # syncs the critic into the envs
        algo.learn(total_timesteps=16, callback=callback)
        played.append(callback.episodes)
    assert len(played[0]) == len(played[1]) == 4  # 2 networks x 8 segments / 4 per episode
    for mine, theirs in zip(*played):
        assert mine["timestep"] == theirs["timestep"]
        assert mine["val_acc"] == pytest.approx(theirs["val_acc"], abs=1e-6)
        # Adam updates of the agent amplify float rounding of the rollouts a little
        assert mine["mean_strength"] == pytest.approx(theirs["mean_strength"], rel=1e-3)
