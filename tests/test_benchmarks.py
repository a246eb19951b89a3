"""The benchmark scripts' smoke runs, and the statistics they report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats

from gradinstructor.compare import METHODS, gradient_by_stage

ROOT = Path(__file__).resolve().parent.parent


def _curve(task_norms, enn_norms, strength=10.0):
    return [{"task_grad_norm": t, "enn_grad_norm": e, "strength": strength}
            for t, e in zip(task_norms, enn_norms)]


def test_gradient_by_stage_hand_computed():
    runs = [{"curve": _curve([1, 2, 4], [1, 1, 1])},  # ratios 1, 0.5, 0.25
            {"curve": _curve([1, 2, 4], [2, 2, 2], strength=20.0)}]  # ratios 2, 1, 0.5
    g = gradient_by_stage(runs)
    assert g["epochs"] == [1, 2, 3]
    assert g["ratio_mean"] == pytest.approx([1.5, 0.75, 0.375])
    assert g["strength_mean"] == pytest.approx([15.0, 15.0, 15.0])
    # first minus last: 0.75 and 1.5; mean 1.125, standard error 0.375, so t = 3
    assert g["first_vs_last_t"] == pytest.approx(3.0)
    rho = stats.spearmanr([1, 2, 3, 1, 2, 3], [1, 0.5, 0.25, 2, 1, 0.5]).statistic
    assert g["spearman_rho"] == pytest.approx(rho) and rho < 0


def test_gradient_by_stage_of_a_constant_ratio_has_no_trend():
    g = gradient_by_stage([{"curve": _curve([2, 2], [1, 1])}])
    assert g["ratio_mean"] == [0.5, 0.5]
    assert g["spearman_rho"] != g["spearman_rho"]  # NaN: no variation to rank


def _script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def test_paper_protocols_smoke_run_writes_consistent_tables(tmp_path):
    result = _script("paper_protocols.py", "--seeds", "2", "--quick", "--timesteps", "40",
                     "--out", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    data = json.loads((tmp_path / "paper_protocols_quick.json").read_text())
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from paper_protocols import check_targets
    finally:
        sys.path.pop(0)
    for name, task in (("P1", "mnist5k"), ("P2", "digits")):
        res = data[name]
        assert res["task"] == task and list(res["methods"]) == list(METHODS)
        for method, entry in res["methods"].items():
            accs = [100 * run["test_acc"] for run in entry["runs"]]
            assert len(accs) == 2
            assert entry["summary"]["test_mean"] == pytest.approx(sum(accs) / 2)
            assert summary[name][method] == round(entry["summary"]["test_mean"], 2)
        welch = stats.ttest_ind([r["test_acc"] for r in res["methods"]["enn"]["runs"]],
                                [r["test_acc"] for r in res["methods"]["plain"]["runs"]],
                                equal_var=False)
        assert res["tests"]["enn vs plain"]["p"] == pytest.approx(welch.pvalue, nan_ok=True)
        assert res["targets"] == check_targets(res)
        assert len(res["gradient_by_stage"]["enn"]["ratio_mean"]) == 3  # quick: 3 epochs
    table = (tmp_path / "paper_protocols_quick.md").read_text()
    assert "## P1: mnist5k" in table and "| he+enn |" in table and "Spearman" in table


def test_zoo_ranking_smoke_run_ends_with_both_taus(tmp_path):
    result = _script("zoo_ranking.py", "--task", "digits", "--quick", "--size", "8",
                     "--timesteps", "40", "--out", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    last = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("enn_tau", "stats_tau", "supervised_enn_tau"):
        assert -1.0 <= last[key] <= 1.0
    assert last["zoo_size"] == 8 and last["held_out"] == 4
