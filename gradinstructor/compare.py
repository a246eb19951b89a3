"""Comparison: plain backprop, L1, He init, the ENN term and He + ENN, over seeds.

All methods see the same data, epochs, optimiser, batch size and seeds; a seed
fixes both the initialisation and the minibatch order. The L1 coefficient is
chosen on validation data (on selection seeds disjoint from the reported ones).

Example:
    >>> from gradinstructor.tasks import load_task
    >>> results = compare(load_task("digits"), enn=None, methods=["plain", "he"],
    ...                   seeds=[0, 1])                       # doctest: +SKIP
    >>> print(format_table(results))                          # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

from gradinstructor.enn import ENN
from gradinstructor.tasks import Task
from gradinstructor.trainer import GradInstructor, fit_target

logger = logging.getLogger(__name__)

METHODS = ("plain", "l1", "he", "enn", "he+enn")
ENN_METHODS = ("enn", "he+enn")
L1_GRID = (1e-5, 1e-4, 1e-3)
SELECTION_SEED = 10_000  # seeds used to pick the L1 coefficient start here


def check_methods(methods: Sequence[str], enn: ENN | None) -> list[str]:
    """Validate method names; the ENN methods need an ENN."""
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; valid methods: {', '.join(METHODS)}")
    if enn is None and any(m in ENN_METHODS for m in methods):
        without = ", ".join(m for m in METHODS if m not in ENN_METHODS)
        raise ValueError("methods enn and he+enn need an ENN checkpoint (--enn PATH); "
                         f"valid methods without one: {without}")
    return methods


def choose_l1(task: Task, grid: Sequence[float] = L1_GRID, n_seeds: int = 1) -> float:
    """The L1 coefficient from ``grid`` with the best mean validation accuracy."""
    scores = []
    for coef in grid:
        accs = [fit_target(task, task.build_model(SELECTION_SEED + s), SELECTION_SEED + s,
                           l1=coef, method=f"l1={coef:g}").val_acc for s in range(n_seeds)]
        scores.append(float(np.mean(accs)))
        logger.info("L1 %g: val acc %.4f", coef, scores[-1])
    return float(grid[int(np.argmax(scores))])


def run_method(task: Task, method: str, seed: int, enn: ENN | None = None,
               strength=None, l1: float = 0.0, enn_every: int = 1) -> dict:
    """Train one target network with ``method`` and return its record."""
    init = "he" if method.startswith("he") else "default"
    model = task.build_model(seed=seed, init=init)
    instructor = None
    if method in ENN_METHODS:
        instructor = GradInstructor(model, enn, strength=strength,
                                    total_steps=task.total_steps,
                                    segments=task.config.segments, every=enn_every,
                                    spread=task.config.optimizer != "sgd")
    start = time.perf_counter()
    result = fit_target(task, model, seed, instructor=instructor,
                        l1=l1 if method == "l1" else 0.0, method=method)
    return {
        "seed": seed, "train_acc": result.train_acc, "val_acc": result.val_acc,
        "test_acc": result.test_acc, "gap": result.gap,
        "seconds": time.perf_counter() - start, "curve": result.curve,
    }


def compare(task: Task, enn: ENN | None, methods: Sequence[str] = METHODS,
            seeds: Sequence[int] = range(5), strength=None, l1: float | None = None,
            enn_every: int = 1, on_run: Callable[[str, dict], None] | None = None) -> dict:
    """Train every method on every seed; return records and a summary.

    Args:
        task: the task.
        enn: a trained ENN (needed by the ENN methods).
        methods: subset of :data:`METHODS`.
        seeds: the reported seeds.
        strength: the ENN strength: a number, a callable of progress, or a
            ScheduleActor (default: the ENN's stored actor, else 10).
        l1: the L1 coefficient (default: chosen on validation from :data:`L1_GRID`).
        enn_every: recompute the ENN gradient every this many steps.
        on_run: called with (method, record) after each run (progress, tracking).

    Returns:
        ``{"task", "methods": {m: {"runs": [...], "summary": {...}}}, "l1", "tests"}``.
    """
    methods = check_methods(methods, enn)
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    if "l1" in methods and l1 is None:
        l1 = choose_l1(task)
    if strength is None and enn is not None:
        from gradinstructor.agent import load_actor

        strength = load_actor(enn) or 10.0
    out: dict = {"task": task.name, "seeds": seeds, "l1": l1,
                 "strength": _describe(strength), "methods": {}}
    for method in methods:
        runs = []
        for seed in seeds:
            record = run_method(task, method, seed, enn, strength, l1 or 0.0, enn_every)
            runs.append(record)
            if on_run is not None:
                on_run(method, record)
        out["methods"][method] = {"runs": runs, "summary": summarize(runs)}
    out["tests"] = welch_tests(out["methods"])
    return out


def _describe(strength) -> str | float | None:
    if strength is None or isinstance(strength, (int, float)):
        return strength
    return "actor" if hasattr(strength, "choose") else "schedule"


def summarize(runs: list[dict]) -> dict:
    """Mean, std (ddof 1), 95% CI half-width of test accuracy; mean gap and wall time."""
    test = np.array([r["test_acc"] for r in runs]) * 100
    gap = np.array([r["gap"] for r in runs])
    n = len(test)
    std = float(test.std(ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else float("nan")
    return {
        "n": n, "test_mean": float(test.mean()), "test_std": std, "test_ci95": half,
        "gap_mean": float(gap.mean()), "gap_std": float(gap.std(ddof=1)) if n > 1 else 0.0,
        "val_mean": float(np.mean([r["val_acc"] for r in runs]) * 100),
        "seconds_mean": float(np.mean([r["seconds"] for r in runs])),
    }


def welch_tests(methods: dict) -> dict:
    """Welch's t-test of each ENN method's test accuracy against each baseline."""
    tests = {}
    for enn_method in (m for m in ENN_METHODS if m in methods):
        a = [r["test_acc"] for r in methods[enn_method]["runs"]]
        for base in (m for m in methods if m not in ENN_METHODS):
            b = [r["test_acc"] for r in methods[base]["runs"]]
            if len(a) < 2 or len(b) < 2:
                continue
            t, p = stats.ttest_ind(a, b, equal_var=False)
            diff = 100 * (np.mean(a) - np.mean(b))
            tests[f"{enn_method} vs {base}"] = {"diff_points": float(diff),
                                                 "t": float(t), "p": float(p)}
    return tests


def gradient_by_stage(runs: list[dict]) -> dict:
    """How the ENN term's gradient compares with the task gradient over training.

    From the per-epoch curve of each run (measured at the first step of each epoch:
    the task gradient's L2 norm and ``strength * ||dENN/dw||``), the ratio of the
    two per epoch, averaged over runs, and whether it changes with the stage:
    Spearman's rho between epoch and ratio over all (run, epoch) points, and a
    paired t-test of the ratio in the first against the last epoch.

    Args:
        runs: records of an ENN method (see :func:`run_method`), with their curves.

    Returns:
        ``{"epochs", "ratio_mean", "strength_mean", "spearman_rho", "spearman_p",
        "first_vs_last_t", "first_vs_last_p"}``; the tests are NaN with fewer than
        two runs or two epochs.
    """
    ratios = np.array([[p["enn_grad_norm"] / p["task_grad_norm"] if p["task_grad_norm"] else
                        float("nan") for p in run["curve"]] for run in runs])
    strengths = np.array([[p["strength"] for p in run["curve"]] for run in runs])
    n_runs, n_epochs = ratios.shape
    epochs = np.tile(np.arange(1, n_epochs + 1), n_runs)
    nan = float("nan")
    rho = p_rho = t = p_t = nan
    finite = np.isfinite(ratios.ravel())
    if n_epochs > 1 and finite.sum() > 2 and np.ptp(ratios.ravel()[finite]) > 0:
        rho, p_rho = stats.spearmanr(epochs[finite], ratios.ravel()[finite])
    if n_runs > 1 and n_epochs > 1:
        t, p_t = stats.ttest_rel(ratios[:, 0], ratios[:, -1])
    return {"epochs": list(range(1, n_epochs + 1)),
            "ratio_mean": [float(v) for v in np.nanmean(ratios, axis=0)],
            "strength_mean": [float(v) for v in strengths.mean(axis=0)],
            "spearman_rho": float(rho), "spearman_p": float(p_rho),
            "first_vs_last_t": float(t), "first_vs_last_p": float(p_t)}


def table_rows(results: dict) -> list[list]:
    """Rows of the comparison table: method, n, test mean, std, CI, gap, seconds."""
    rows = []
    for method, entry in results["methods"].items():
        s = entry["summary"]
        rows.append([method, s["n"], round(s["test_mean"], 2), round(s["test_std"], 2),
                     round(s["test_ci95"], 2), round(s["gap_mean"], 2),
                     round(s["seconds_mean"], 2)])
    return rows


TABLE_COLUMNS = ["method", "seeds", "test acc %", "std", "95% CI +-", "train-test gap",
                 "seconds/run"]


def format_table(results: dict) -> str:
    """The comparison as a fixed-width text table, with the Welch tests below it."""
    rows = table_rows(results)
    lines = [f"task {results['task']}, seeds {results['seeds']}, L1 {results['l1']}, "
             f"ENN strength {results['strength']}"]
    lines.append(f"{'method':<8} {'seeds':>5} {'test acc %':>18} {'train-test gap':>15} "
                 f"{'s/run':>6}")
    for m, n, mean, std, _ci, gap, sec in rows:
        lines.append(f"{m:<8} {n:>5} {mean:>10.2f} +- {std:<4.2f} {gap:>15.2f} {sec:>6.1f}")
    for name, t in results.get("tests", {}).items():
        lines.append(f"  {name}: {t['diff_points']:+.2f} points, Welch p = {t['p']:.3g}")
    return "\n".join(lines)
