"""Baselines and the comparison: L1, He and default init, compare(), summaries, Welch tests."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from gradinstructor.compare import (
    L1_GRID,
    METHODS,
    SELECTION_SEED,
    check_methods,
    compare,
    format_table,
    run_method,
    summarize,
    welch_tests,
)
from gradinstructor.enn import ENN, ENNConfig
from gradinstructor.render import layer_shapes
from gradinstructor.tasks import build_mlp
from gradinstructor.trainer import fit_target, l1_penalty


def test_l1_penalty_by_hand():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, -0.25]]))
        model[2].weight.copy_(torch.tensor([[-3.0, 0.0]]))
        model[0].bias.fill_(100.0)  # biases are not penalised
        model[2].bias.fill_(-100.0)

    assert l1_penalty(model).item() == pytest.approx(1 + 2 + 0.5 + 0.25 + 3)


def test_l1_penalty_gradient_is_the_sign():
    model = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [-0.1, 4.0, -3.0]]))
    l1_penalty(model).backward()
    assert torch.equal(model[0].weight.grad, torch.sign(model[0].weight.detach()))
    assert model[0].bias.grad is None


def _kurtosis(x: torch.Tensor) -> float:
    x = x.double().flatten()
    centred = x - x.mean()
    return float((centred**4).mean() / (centred**2).mean() ** 2)


def test_he_init_has_the_kaiming_normal_std_on_a_wide_layer():
    fan_in = 2048
    model = build_mlp([fan_in, 1024, 10], seed=0, init="he")
    weight = model[0].weight.detach()  # 2M samples: the std is known to about 0.05%

    assert weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.01)
    assert abs(weight.mean().item()) < 4 * math.sqrt(2.0 / fan_in) / math.sqrt(weight.numel())
    assert _kurtosis(weight) == pytest.approx(3.0, abs=0.05)  # normal, not uniform (1.8)
    assert torch.equal(model[0].bias, torch.zeros(1024))
    assert model[2].weight.std().item() == pytest.approx(math.sqrt(2.0 / 1024), rel=0.05)


def test_default_init_is_pytorchs():
    sizes = [64, 32, 16, 10]
    model = build_mlp(sizes, seed=5)

    torch.manual_seed(5)
    reference = [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert len(linears) == 3 and [type(m) for m in model[1::2]] == [nn.ReLU, nn.ReLU]
    for ours, theirs in zip(linears, reference):
        assert torch.equal(ours.weight, theirs.weight)
        assert torch.equal(ours.bias, theirs.bias)


def test_default_init_has_the_kaiming_uniform_std_and_differs_from_he():
    fan_in = 2048
    default = build_mlp([fan_in, 1024], seed=0)[0].weight.detach()

    # PyTorch's Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), so std = 1/sqrt(3 fan_in)
    assert default.std().item() == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.01)
    assert default.abs().max().item() <= 1 / math.sqrt(fan_in)
    assert _kurtosis(default) == pytest.approx(1.8, abs=0.05)


def test_init_is_seeded_and_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = build_mlp([8, 4], seed=1, init="he")
    assert torch.equal(torch.rand(3), expected_next)

    assert torch.equal(first[0].weight, build_mlp([8, 4], seed=1, init="he")[0].weight)
    assert not torch.equal(first[0].weight, build_mlp([8, 4], seed=2, init="he")[0].weight)


def test_unknown_init_is_refused():
    with pytest.raises(ValueError, match="init must be one of default, he, xavier, but got 'lec"):
        build_mlp([4, 2], init="lecun")


@pytest.fixture(scope="module")
def untrained_enn(small_digits) -> ENN:
    torch.manual_seed(0)
    return ENN(ENNConfig(layer_shapes=layer_shapes(small_digits.build_model(seed=0))))


@pytest.fixture(scope="module")
def comparison(small_digits, untrained_enn) -> dict:
    """All five methods on a shrunk digits task, 2 seeds, L1 chosen on validation."""
    return compare(small_digits, untrained_enn, methods=METHODS, seeds=[0, 1], strength=20.0)


def test_compare_returns_every_requested_method_and_seed(comparison):
    assert list(comparison["methods"]) == list(METHODS)
    assert comparison["seeds"] == [0, 1] and comparison["strength"] == 20.0
    for entry in comparison["methods"].values():
        assert [r["seed"] for r in entry["runs"]] == [0, 1]
        for run in entry["runs"]:
            assert 0.0 <= run["test_acc"] <= 1.0
            assert run["gap"] == pytest.approx(100 * (run["train_acc"] - run["test_acc"]))
            assert [p["epoch"] for p in run["curve"]] == [1, 2]
    json.loads(json.dumps(comparison))  # the JSON behind the table


def test_summary_statistics_equal_numpys(comparison):
    for entry in comparison["methods"].values():
        runs, summary = entry["runs"], entry["summary"]
        test = np.array([r["test_acc"] for r in runs]) * 100
        gap = np.array([r["gap"] for r in runs])

        assert summary["n"] == 2
        assert summary["test_mean"] == pytest.approx(np.mean(test))
        assert summary["test_std"] == pytest.approx(np.std(test, ddof=1))
        assert summary["gap_mean"] == pytest.approx(np.mean(gap))
        assert summary["gap_std"] == pytest.approx(np.std(gap, ddof=1))
        assert summary["val_mean"] == pytest.approx(100 * np.mean([r["val_acc"] for r in runs]))
        half = 12.706204736174707 * np.std(test, ddof=1) / math.sqrt(2)  # t(0.975, df 1)
        assert summary["test_ci95"] == pytest.approx(half)


def test_summary_of_hand_made_runs():
    runs = [{"test_acc": a, "gap": g, "val_acc": a, "seconds": 1.0}
            for a, g in [(0.90, 1.0), (0.80, 3.0), (0.70, 2.0)]]
    summary = summarize(runs)
    assert summary["test_mean"] == pytest.approx(80.0)
    assert summary["test_std"] == pytest.approx(10.0)
    assert summary["gap_mean"] == pytest.approx(2.0)
    assert summary["test_ci95"] == pytest.approx(4.302652729911275 * 10 / math.sqrt(3))
    assert summarize(runs[:1])["test_std"] == 0.0


def test_methods_differ_where_they_should(comparison):
    def accs(method):
        return [r["test_acc"] for r in comparison["methods"][method]["runs"]]

    def final_losses(method):
        return [r["curve"][-1]["loss"] for r in comparison["methods"][method]["runs"]]

    assert accs("he") != accs("plain")
    assert final_losses("enn") != final_losses("plain")  # the ENN term was applied
    assert all(p["strength"] == 20.0 for r in comparison["methods"]["enn"]["runs"]
               for p in r["curve"])
    assert all(p["strength"] == 0.0 for r in comparison["methods"]["plain"]["runs"]
               for p in r["curve"])


def test_l1_coefficient_is_chosen_on_validation_seeds(comparison, small_digits):
    val = [fit_target(small_digits, small_digits.build_model(SELECTION_SEED), SELECTION_SEED,
                      l1=coef).val_acc for coef in L1_GRID]
    assert comparison["l1"] == L1_GRID[int(np.argmax(val))]


def test_same_seed_gives_the_same_plain_result(small_digits, comparison):
    def without_time(record) -> str:  # as JSON, so that the NaN ENN scores compare equal
        return json.dumps({k: v for k, v in record.items() if k != "seconds"}, sort_keys=True)

    first = compare(small_digits, None, methods=["plain"], seeds=[1])
    second = compare(small_digits, None, methods=["plain"], seeds=[1])

    assert without_time(first["methods"]["plain"]["runs"][0]) == without_time(
        second["methods"]["plain"]["runs"][0])
    assert without_time(first["methods"]["plain"]["runs"][0]) == without_time(
        comparison["methods"]["plain"]["runs"][1])


def test_a_strong_l1_penalty_changes_the_result(small_digits):
    plain = run_method(small_digits, "plain", seed=0)
    strong = run_method(small_digits, "l1", seed=0, l1=0.05)
    assert strong["curve"][-1]["loss"] != plain["curve"][-1]["loss"]


def _welch_by_hand(a, b) -> tuple[float, float]:
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, 2 * stats.t.sf(abs(t), df)


def test_welch_tests_match_the_textbook_formula_and_scipy():
    groups = {"plain": [0.80, 0.82, 0.79, 0.85], "he": [0.91, 0.90, 0.93],
              "enn": [0.86, 0.88, 0.83, 0.90, 0.87]}
    methods = {m: {"runs": [{"test_acc": a} for a in accs]} for m, accs in groups.items()}

    tests = welch_tests(methods)

    assert set(tests) == {"enn vs plain", "enn vs he"}
    for base in ("plain", "he"):
        t, p = _welch_by_hand(groups["enn"], groups[base])
        scipy_result = stats.ttest_ind(groups["enn"], groups[base], equal_var=False)
        got = tests[f"enn vs {base}"]
        assert got["t"] == pytest.approx(t) == pytest.approx(scipy_result.statistic)
        assert got["p"] == pytest.approx(p) == pytest.approx(scipy_result.pvalue)
        assert got["diff_points"] == pytest.approx(
            100 * (np.mean(groups["enn"]) - np.mean(groups[base])))


def test_welch_tests_of_the_comparison(comparison):
    tests = comparison["tests"]
    assert set(tests) == {f"{e} vs {b}" for e in ("enn", "he+enn") for b in ("plain", "l1", "he")}
    for name, result in tests.items():
        enn_method, base = name.split(" vs ")
        a = [r["test_acc"] for r in comparison["methods"][enn_method]["runs"]]
        b = [r["test_acc"] for r in comparison["methods"][base]["runs"]]
        if np.std(a) + np.std(b) > 0:
            assert result["p"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue,
                                                nan_ok=True)


def test_format_table_names_every_method(comparison):
    table = format_table(comparison)
    for method in METHODS:
        assert f"\n{method} " in table
    assert "Welch p" in table


@pytest.mark.parametrize("methods", [["plain", "sgd"], ["L1"], ["he+l1"]])
def test_unknown_methods_are_refused_with_the_valid_ones(small_digits, methods):
    bad = [m for m in methods if m not in METHODS][0]
    message = re.escape(f"unknown method {bad!r}; valid methods: plain, l1, he, enn, he+enn")
    with pytest.raises(ValueError, match=message):
        check_methods(methods, None)
    with pytest.raises(ValueError, match=message):
        compare(small_digits, None, methods=methods, seeds=[0])


@pytest.mark.parametrize("methods", [["enn"], ["plain", "he+enn"]])
def test_enn_methods_without_an_enn_are_refused(small_digits, methods):
    message = "need an ENN checkpoint .*valid methods without one: plain, l1, he$"
    with pytest.raises(ValueError, match=message):
        compare(small_digits, None, methods=methods, seeds=[0])


def test_no_seeds_is_refused(small_digits):
    with pytest.raises(ValueError, match="seeds"):
        compare(small_digits, None, methods=["plain"], seeds=[])
