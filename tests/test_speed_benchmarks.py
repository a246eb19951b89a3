"""Smoke runs of the two speed benchmarks with tiny settings: settings first, JSON last."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(name: str, *args: str, cwd: Path) -> tuple[list[str], dict]:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=cwd,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    return lines, json.loads(lines[-1])


def test_enn_overhead_smoke_run_reports_both_step_times_and_accuracies(tmp_path):
    lines, out = _run("enn_overhead.py", "--rounds", "1", "--steps", "10", "--seeds", "2",
                      "--epochs", "1", "--ks", "1", "--every", "5", cwd=tmp_path)
    assert lines[0].startswith("settings: ") and "torch threads 1" in lines[0]
    for key in ("plain_us", "augmented_us", "ratio", "acc_plain", "acc_every_1",
                "acc_default", "ratio_by_k", "spread_ratio", "acc_spread",
                "gradient_form_ratio", "acc_default_minus_every_1", "load_average"):
        assert key in out, key
    assert out["every"] == 5 and set(out["ratio_by_k"]) == {"1", "5"}
    assert abs(out["ratio"] - out["augmented_us"] / out["plain_us"]) < 1e-2
    assert out["ratio_by_k"]["1"] > 1.0  # an ENN gradient every step costs something
    assert 0.0 < out["acc_plain"] <= 1.0 and 0.0 < out["acc_default"] <= 1.0
    assert out["seeds"] == 2


def test_env_throughput_smoke_run_reports_both_ratios_and_equal_results(tmp_path):
    lines, out = _run("env_throughput.py", "--n-envs", "3", "--segments", "2",
                      "--mnist5k-segments", "1", cwd=tmp_path)
    assert lines[0].startswith("settings: ") and "torch threads 1" in lines[0]
    for task in ("digits", "mnist5k"):
        res = out[task]
        assert out[f"{task}_ratio"] == res["ratio"] > 0
        assert res["dummy_steps_per_s"] > 0 and res["population_steps_per_s"] > 0
        # the same per-network results: weights to float rounding, identical rewards
        assert res["max_weight_diff"] < 1e-4 and res["max_reward_diff"] < 1e-6


@pytest.mark.parametrize(("name", "args", "message"), [
    ("enn_overhead.py", ["--strength", "actor"], "--strength actor needs --enn"),
    ("enn_overhead.py", ["--strength", "abc"], "argument --strength: must be a finite non-"),
    ("enn_overhead.py", ["--ks", "0,3"], "argument --ks: must list positive integers"),
    ("enn_overhead.py", ["--rounds", "0"], "argument --rounds: must be a positive integer"),
    ("env_throughput.py", ["--n-envs", "0"], "argument --n-envs: must be a positive integer"),
    ("env_throughput.py", ["--tasks", "nosuch"], "--tasks: unknown task 'nosuch'"),
])
def test_bad_benchmark_arguments_end_in_one_line_errors(tmp_path, name, args, message):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "settings:" not in result.stdout  # refused before any timing
