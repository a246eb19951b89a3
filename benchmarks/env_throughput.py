"""RL environment throughput: one population VecEnv of N networks against N single envs.

For each task (``digits``, then ``mnist5k``) it builds, with the same seeds and
the same (fixed, untrained) ENN:

* a ``DummyVecEnv`` of N :class:`~gradinstructor.env.TargetTrainingEnv` (the
  former default), and
* one :class:`~gradinstructor.vec_env.PopulationVecEnv` holding the N networks
  (the default of ``make_vec_env`` now),

and steps both with the same random actions (as a fresh agent picks them: a
strength in [0, 30] per network per segment), alternating one transition of one
and one of the other so that machine load hits both alike. A transition trains
each network for one segment (a tenth of its epoch budget) with the ENN term
(gradient every ``--enn-every`` steps), renders its observation and, at the end
of an episode, validates it. Throughput is network-segments per second; the ratio
is population / dummy. It also reports how far apart the two end: the largest
weight difference (float32 rounding of the batched products; over a whole episode
with the ENN term, ReLU units that sit at 0 within rounding can flip and amplify it,
so it is reported, not required to be 0) and the largest reward difference (the
final validation accuracies: the per-network results).

    python benchmarks/env_throughput.py           # N = 16, about 40 seconds

The last line printed is JSON with ``digits_ratio``, ``mnist5k_ratio`` and the
steps per second behind them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from _args import positive_int

from gradinstructor.agent import make_vec_env
from gradinstructor.config import load_agent_config
from gradinstructor.enn import ENNConfig
from gradinstructor.env import TargetTrainingEnv
from gradinstructor.render import layer_shapes
from gradinstructor.tasks import load_task
from gradinstructor.trainer import DEFAULT_ENN_EVERY


def _weight_difference(dummy, population) -> float:
    """Largest absolute difference between the two kinds' weights, over all networks."""
    diff = 0.0
    for i, env in enumerate(dummy.envs):
        mine = population.get_state(i)["model"]
        for key, value in env.model.state_dict().items():
            diff = max(diff, float((mine[key] - value).abs().max()))
    return diff


def measure(task_name: str, n_envs: int, segments: int, enn_every: int, seed: int) -> dict:
    task = load_task(task_name, device="cpu")  # a CPU measurement on any machine
    agent = load_agent_config("ppo", n_envs=n_envs)
    config = ENNConfig(layer_shapes=layer_shapes(task.build_model(seed=0)))
    torch.manual_seed(seed)
    enn_state = TargetTrainingEnv(task, enn_config=config).enn.state_dict()
    envs = {kind: make_vec_env(task, agent, seed, config, enn_every,
                               vectorised=kind == "population")
            for kind in ("dummy", "population")}
    seconds = {kind: 0.0 for kind in envs}
    rewards = {kind: [] for kind in envs}
    for vec in envs.values():
        vec.env_method("set_enn_state", enn_state)
        vec.reset()
    rng = np.random.default_rng(seed)
    max_diff = 0.0  # over all transitions (after an episode's end both hold fresh networks)
    for _ in range(segments):
        actions = rng.uniform(-1, 1, size=(n_envs, 1)).astype(np.float32)
        for kind, vec in envs.items():
            start = time.perf_counter()
            _, reward, _, _ = vec.step(actions)
            seconds[kind] += time.perf_counter() - start
            rewards[kind].append(reward.tolist())
        max_diff = max(max_diff, _weight_difference(envs["dummy"], envs["population"]))
    reward_diff = float(np.abs(np.array(rewards["dummy"]) - np.array(rewards["population"])).max())
    rate = {kind: n_envs * segments / s for kind, s in seconds.items()}
    return {"dummy_steps_per_s": round(rate["dummy"], 2),
            "population_steps_per_s": round(rate["population"], 2),
            "ratio": round(rate["population"] / rate["dummy"], 3),
            "max_weight_diff": max_diff, "max_reward_diff": reward_diff,
            "minibatch_steps_per_segment": task.total_steps // task.config.segments}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="digits,mnist5k",
                        help="comma-separated MLP tasks with SGD (default: digits,mnist5k)")
    parser.add_argument("--n-envs", type=positive_int, default=16,
                        help="networks per VecEnv (default: 16)")
    parser.add_argument("--segments", type=positive_int, default=30,
                        help="transitions timed on digits (default: 30, three whole episodes; "
                             "one takes under a second, too short to time on a shared machine)")
    parser.add_argument("--mnist5k-segments", type=positive_int, default=10,
                        help="transitions timed on mnist5k (default: 10, one whole episode)")
    parser.add_argument("--enn-every", type=positive_int, default=DEFAULT_ENN_EVERY,
                        help=f"compute the ENN gradient every K steps (default: "
                             f"{DEFAULT_ENN_EVERY})")
    parser.add_argument("--seed", type=int, default=0, help="environment seed (default: 0)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch intra-op threads (default: 1)")
    args = parser.parse_args(argv)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not names:
        parser.error(f"--tasks must name at least one task, but got {args.tasks!r}")
    for name in names:  # every task checked before anything is timed
        from gradinstructor.config import SettingsError
        from gradinstructor.vec_env import PopulationVecEnv

        try:
            reason = PopulationVecEnv.unsupported(load_task(name, device="cpu"))
        except SettingsError as err:
            parser.error(f"--tasks: {err}")
        if reason:
            parser.error(f"--tasks: the population cannot train {name!r}: {reason}")
    torch.set_num_threads(args.threads)
    print(f"settings: {vars(args)}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()}", flush=True)
    start = time.perf_counter()
    result: dict = {"n_envs": args.n_envs, "threads": torch.get_num_threads(),
                    "enn_every": args.enn_every}
    for name in names:
        segments = args.mnist5k_segments if name == "mnist5k" else args.segments
        res = measure(name, args.n_envs, segments, args.enn_every, args.seed)
        print(f"{name}: dummy {res['dummy_steps_per_s']:.2f} segments/s, population "
              f"{res['population_steps_per_s']:.2f} segments/s, ratio {res['ratio']:.2f}; "
              f"largest weight difference {res['max_weight_diff']:.2e}, reward difference "
              f"{res['max_reward_diff']:.2e} ({segments} transitions)", flush=True)
        result[f"{name}_ratio"] = res["ratio"]
        result[name] = {**res, "segments": segments}
    result["load_average"] = [round(v, 2) for v in os.getloadavg()]
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
