"""Torch intra-op threads for this project's work: 1 against the machine's cores.

Times, in one process and one run, the three operations that dominate the
pipeline: a plain SGD step of the target MLP, a step with the ENN term
(GradInstructor, ENN gradient every step), and rendering the weight images,
each at 1 thread and at ``--threads`` threads (default: all cores). The last
line printed is JSON with the microseconds per operation and the ratio
(many threads / 1 thread; above 1 means one thread is faster).

    python benchmarks/threads.py                 # mnist5k MLP, 1 vs all cores
    python benchmarks/threads.py --task digits
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from gradinstructor.enn import ENN, ENNConfig
from gradinstructor.render import layer_shapes, render_weights
from gradinstructor.tasks import load_task
from gradinstructor.trainer import GradInstructor


def _time(fn, repeats: int) -> float:
    for _ in range(max(3, repeats // 10)):  # warm-up
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e6


def measure(task_name: str, threads: int, repeats: int) -> dict:
    task = load_task(task_name, device="cpu")  # a CPU measurement on any machine
    model = task.build_model(seed=0)
    torch.manual_seed(0)
    enn = ENN(ENNConfig(layer_shapes=layer_shapes(model)))
    optimizer = torch.optim.SGD(model.parameters(), lr=task.config.lr)
    gi = GradInstructor(model, enn, strength=1.0, total_steps=10**9)
    x = task.data.train_x[:task.config.batch_size]
    y = task.data.train_y[:task.config.batch_size]

    def step(with_enn: bool) -> None:
        loss = F.cross_entropy(model(x), y)
        if with_enn:
            loss = gi(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def render() -> None:
        with torch.no_grad():
            render_weights(model)

    out = {}
    for n in (1, threads):
        torch.set_num_threads(n)
        out[n] = {"plain_step_us": _time(lambda: step(False), repeats),
                  "enn_step_us": _time(lambda: step(True), repeats),
                  "render_us": _time(render, repeats)}
    return {
        "task": task_name, "threads": threads,
        "one_thread": out[1], "many_threads": out[threads],
        "ratio": {k: out[threads][k] / out[1][k] for k in out[1]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist5k")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                        help="the many-threads setting (default: all cores)")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    print(f"settings: {vars(args)}; load average {os.getloadavg()}", file=sys.stderr)
    print(json.dumps(measure(args.task, args.threads, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
