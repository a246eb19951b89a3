"""Search: sweep files, the Optuna mapping, storage errors, the W&B translation, and tiny real
sweeps (real Optuna, real SB3, the digits task shrunk) that record, resume, fail and analyze.

The multi-process checks (SIGKILL, Ctrl-C, two workers on PostgreSQL) are in
``test_search_workers.py``.
"""

from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from gradinstructor.cli import main
from gradinstructor.config import SettingsError
from gradinstructor.enn import ENN
from gradinstructor.search import (
    StorageError,
    SweepError,
    analyze_study,
    format_analysis,
    load_sweep,
    open_storage,
    parse_sweep,
    plan_trial,
    redact,
    run_sweep,
    run_trial,
    to_wandb_sweep,
    valid_parameters,
)
from gradinstructor.search.diagnostics import DIAGNOSTICS
from gradinstructor.search.study import STORAGE_FILE, make_sampler, open_study
from gradinstructor.tracking import NullTracker

# The smallest budgets a trial allows on a shrunk digits task: a trial takes about a second
# once the process has loaded the task (and a few more for the first, which builds the zoo).
TINY = {
    "task": {"value": "digits"}, "train_size": {"value": 200}, "epochs": {"value": 2},
    "timesteps": {"value": 16}, "n_envs": {"value": 2}, "n_steps": {"value": 4},
    "batch_size": {"value": 8}, "n_epochs": {"value": 1}, "zoo_size": {"value": 3},
    "seeds": {"value": 2}, "enn_width": {"value": 4}, "enn_hidden": {"value": 8},
}
# Strengths far apart, so that the gains of the trials differ (checked below).
STRENGTHS = [3, 30, 300, 3000, 30000]


def tiny_sweep(name: str = "tiny", method: str = "grid", **parameters) -> dict:
    """A sweep file's contents: TINY plus ``parameters`` (default: the strength grid)."""
    params = copy.deepcopy(TINY)
    params.update(parameters or {"max_strength": {"values": STRENGTHS}})
    return {"name": name, "method": method, "metric": {"name": "gain", "goal": "maximize"},
            "parameters": params}


def write_sweep(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def trials_of(study, *states):
    return study.get_trials(deepcopy=True, states=states or None)


def snapshot(study) -> dict[int, tuple]:
    """Number -> what must never change once a trial is finished."""
    return {t.number: (t.state, t.value, t.params, t.datetime_complete,
                       t.user_attrs.get("gain"), t.user_attrs.get("enn_path"))
            for t in trials_of(study, TrialState.COMPLETE)}


# --------------------------------------------------------------------------- sweep files


def _sweep_error(data: dict) -> str:
    with pytest.raises(SettingsError) as err:
        parse_sweep(data, "my-sweep.yaml")
    return str(err.value)


def test_an_unknown_top_level_key_is_named_with_the_valid_keys():
    data = tiny_sweep()
    data["methd"] = data.pop("method")
    message = _sweep_error(data)
    assert message.startswith("my-sweep.yaml: unknown sweep key 'methd'")
    assert "did you mean 'method'?" in message
    assert "valid: method, metric, parameters, name" in message


def test_an_unknown_method_is_named_with_the_valid_methods():
    message = _sweep_error(tiny_sweep(method="gird"))
    assert "method must be one of grid, random, bayes, but got 'gird'" in message
    assert "did you mean 'grid'?" in message


@pytest.mark.parametrize("spec, missing", [
    ({"distribution": "uniform", "min": 0.1}, "missing max"),
    ({"distribution": "log_uniform_values", "max": 0.1}, "missing min"),
    ({"distribution": "int_uniform"}, "missing min and max"),
])
def test_a_distribution_without_bounds_names_the_parameter_and_the_missing_bound(spec, missing):
    message = _sweep_error(tiny_sweep(method="random", learning_rate=spec))
    assert "my-sweep.yaml: parameters.learning_rate" in message
    assert f"distribution {spec['distribution']!r} needs bounds min and max; {missing}" in message


def test_a_spec_without_value_values_or_bounds_says_what_to_give():
    message = _sweep_error(tiny_sweep(method="random", learning_rate={"min": 0.001}))
    assert "parameters.learning_rate: give `value`, `values`, or a distribution with `min` " \
           "and `max`, but got keys min" in message


def test_a_parameter_the_trial_does_not_know_is_named_with_every_valid_one():
    message = _sweep_error(tiny_sweep(max_strenght={"values": [1, 2]}))
    assert "unknown parameter 'max_strenght' (did you mean 'max_strength'?)" in message
    assert message.endswith("; a trial knows: " + ", ".join(valid_parameters()))
    for name in ("learning_rate", "enn_width", "ratio", "timesteps", "seeds"):
        assert name in valid_parameters()


@pytest.mark.parametrize("spec, expected", [
    ({"valuse": [1, 2]}, "unknown parameter key 'valuse' (did you mean 'value'?); valid: value, "
                         "values, distribution, min, max"),
    ({"distribution": "unifrom", "min": 1, "max": 2},
     "unknown distribution 'unifrom' (did you mean 'uniform'?); valid: constant, categorical"),
    ({"distribution": "normal", "mu": 1, "sigma": 2},
     "distribution 'normal' has no Optuna counterpart; Optuna runs: constant, categorical, "
     "int_uniform, uniform, q_uniform, log_uniform_values, log_uniform (or use --backend "
     "wandb)"),
    ({"distribution": "uniform", "min": 5, "max": 1}, "min must not exceed max"),
    ({"values": [3, -1]}, "parameters.max_strength: max_strength must be non-negative, but got "
                          "-1"),
])
def test_bad_parameter_specs_name_the_key_the_value_and_the_choices(spec, expected):
    message = _sweep_error(tiny_sweep(method="random", max_strength=spec))
    assert "my-sweep.yaml: parameters.max_strength" in message
    assert expected in message


def test_a_float_range_for_an_integer_setting_points_to_int_uniform():
    message = _sweep_error(tiny_sweep(method="random",
                                      timesteps={"distribution": "uniform", "min": 8,
                                                 "max": 32}))
    assert "parameters.timesteps: timesteps must be an integer, but got 8.0" in message
    assert "int_uniform" in message


def test_grid_refuses_a_continuous_distribution():
    message = _sweep_error(tiny_sweep(ratio={"distribution": "uniform", "min": 0.1, "max": 0.3}))
    assert "parameters.ratio: method grid cannot enumerate the continuous distribution " \
           "'uniform'" in message


def test_an_unknown_metric_and_a_misspelt_task_are_named():
    data = tiny_sweep()
    data["metric"] = {"name": "gian", "goal": "maximize"}
    assert "metric.name must be one of gain, enn_val_acc, but got 'gian' (did you mean " \
           "'gain'?)" in _sweep_error(data)
    message = _sweep_error(tiny_sweep(task={"values": ["digits", "digitz"]}))
    assert "parameters.task: unknown task 'digitz' (did you mean 'digits'?)" in message


def test_a_bad_sweep_file_on_the_command_line_exits_2_naming_the_file(tmp_path, capsys):
    data = tiny_sweep()
    data["parameters"]["max_strenght"] = data["parameters"].pop("max_strength")
    path = write_sweep(tmp_path / "bad.yaml", data)

    assert main(["sweep", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gradinstructor sweep: error: {path}: unknown parameter "
                          "'max_strenght' (did you mean 'max_strength'?)")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing started


def test_a_missing_sweep_file_names_the_path_and_the_shipped_sweeps(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert main(["sweep", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err
    assert "agent, enn-architecture, strength" in err


def test_the_shipped_sweeps_cover_architecture_agent_and_strength_on_digits():
    architecture, agent, strength = (load_sweep(n) for n in ("enn-architecture", "agent",
                                                             "strength"))
    assert {"enn_width", "enn_embed", "enn_hidden", "ratio"} <= set(architecture.searched)
    assert {"learning_rate", "n_epochs", "batch_size", "ent_coef", "vf_coef"} <= set(
        agent.searched)
    assert set(strength.searched) == {"max_strength"}
    assert len(strength.grid_points()) == 6
    for sweep in (architecture, agent, strength):
        assert sweep.constants["task"] == "digits"
        assert sweep.metric == "gain" and sweep.goal == "maximize"
        assert sweep.constants["seeds"] == 3  # the gain is averaged over 3 seeds
        plan_trial({**sweep.constants, **{n: p.candidates()[0]
                                          for n, p in sweep.searched.items()}})


# --------------------------------------------------------------------------- Optuna mapping


@pytest.mark.parametrize("method, sampler", [
    ("grid", optuna.samplers.GridSampler),
    ("random", optuna.samplers.RandomSampler),
    ("bayes", optuna.samplers.TPESampler),
])
def test_each_method_runs_on_its_optuna_sampler(method, sampler):
    params = {"max_strength": {"values": [3, 30]}}
    if method != "grid":
        params["learning_rate"] = {"distribution": "log_uniform_values", "min": 1e-4,
                                   "max": 1e-2}
    sweep = parse_sweep(tiny_sweep(method=method, **params), "s.yaml")

    assert isinstance(make_sampler(sweep, seed=0, n_trials=6), sampler)
    study = open_study(sweep, optuna.storages.InMemoryStorage(), "s", n_trials=6, seed=0)
    assert isinstance(study.sampler, sampler)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    if method == "grid":
        assert study.sampler._search_space == {"max_strength": [3, 30]}


def test_parameters_draw_the_distributions_wandb_maps_them_to():
    """Each W&B distribution becomes the Optuna distribution W&B's own scheduler uses."""
    wandb_optuna = pytest.importorskip("wandb.sdk.sweeps.scheduler.optuna")
    specs = {
        "n_epochs": {"distribution": "int_uniform", "min": 3, "max": 10},
        "vf_coef": {"distribution": "uniform", "min": 0.5, "max": 2.0},
        "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 3e-3},
        "n_steps": {"distribution": "q_uniform", "min": 4, "max": 12, "q": 4},
        "ratio": {"distribution": "q_uniform", "min": 0.1, "max": 0.3, "q": 0.05},
        "enn_width": {"values": [4, 8]},
        "ent_coef": {"min": 0.0, "max": 0.1},  # inferred: uniform
        "n_envs": {"min": 2, "max": 4},  # inferred: int_uniform
    }
    sweep = parse_sweep(tiny_sweep(method="random", **specs), "s.yaml")
    trial = optuna.create_study().ask()
    for name, parameter in sweep.searched.items():
        value = parameter.suggest(trial)
        expected = wandb_optuna.sweep_parameter_to_distribution(specs[name])
        assert trial.distributions[name] == expected, name
        assert expected._contains(expected.to_internal_repr(value))


def test_log_uniform_bounds_are_exponents_as_in_wandb():
    sweep = parse_sweep(tiny_sweep(method="random", learning_rate={
        "distribution": "log_uniform", "min": math.log(1e-4), "max": math.log(1e-2)}), "s.yaml")
    trial = optuna.create_study().ask()
    value = sweep.searched["learning_rate"].suggest(trial)
    dist = trial.distributions["learning_rate"]
    assert dist.log and math.isclose(dist.low, 1e-4) and math.isclose(dist.high, 1e-2)
    assert 1e-4 <= value <= 1e-2


# --------------------------------------------------------------------------- storage


def test_redact_hides_passwords_in_every_form():
    assert redact("postgresql://me:secret@127.0.0.1:5432/db") == \
        "postgresql://me:***@127.0.0.1:5432/db"
    assert redact("postgresql://me:p@ss@127.0.0.1/db") == "postgresql://me:***@127.0.0.1/db"
    assert redact("postgresql://me@127.0.0.1/db?password=secret&x=1") == \
        "postgresql://me@127.0.0.1/db?password=***&x=1"
    assert redact("sqlite:///runs/x.db") == "sqlite:///runs/x.db"


def test_an_unreachable_storage_fails_at_once_naming_the_url_without_its_password(tmp_path):
    url = "postgresql://user:secret@127.0.0.1:1/db"  # port 1 on loopback: nothing listens
    start = time.perf_counter()
    with pytest.raises(StorageError) as err:
        run_sweep(parse_sweep(tiny_sweep(), "s.yaml"), storage=url, out=tmp_path / "run",
                  tracker="none", progress_bar=False)
    seconds = time.perf_counter() - start

    message = str(err.value)
    assert "postgresql://user:***@127.0.0.1:1/db" in message
    assert "secret" not in message
    assert seconds < 20, f"took {seconds:.1f} s to fail"
    assert not (tmp_path / "run").exists()  # no trial started


def test_storage_errors_on_the_command_line_name_the_url_and_what_to_do(tmp_path, capsys):
    path = write_sweep(tmp_path / "s.yaml", tiny_sweep())
    for url, expected in [
        ("postgresql://user:secret@127.0.0.1:1/db", "check that the server is running"),
        ("foo://user:secret@127.0.0.1/db", "not a storage URL SQLAlchemy knows"),
        ("postgresql://user:secret@127.0.0.1:port/db", "it does not parse"),
        (f"sqlite:///{tmp_path}/missing/dir/x.db", "check that its folder exists"),
    ]:
        assert main(["sweep", str(path), "--storage", url, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert "gradinstructor sweep: error:" in err and expected in err, err
        assert redact(url) in err and "secret" not in err


# --------------------------------------------------------------------------- W&B translation


def test_the_wandb_translation_keeps_the_file_and_names_the_logged_metric():
    sweep = load_sweep("agent")
    raw = copy.deepcopy(sweep.raw)
    config = to_wandb_sweep(sweep, trials=4, name="agents-1")

    assert sweep.raw == raw  # the sweep is not changed
    assert config["method"] == "bayes"
    assert config["metric"] == {"name": "eval/gain", "goal": "maximize"}
    assert config["parameters"] == raw["parameters"]
    assert config["run_cap"] == 4 and config["name"] == "agents-1"
    assert to_wandb_sweep(sweep)["run_cap"] == raw["run_cap"]
    assert to_wandb_sweep(load_sweep("strength"))["name"] == "strength"


def test_the_config_handed_to_wandb_sweep_is_the_translation(tmp_path, monkeypatch):
    """run_wandb_sweep hands the translated file to wandb.sweep and the trial to wandb.agent;
    both are replaced by recorders here, so that no W&B server is needed."""
    import wandb

    from gradinstructor.search import run_wandb_sweep

    handed: dict = {}
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # "logged in"; nothing is sent
    monkeypatch.setattr(wandb, "sweep", lambda sweep, project, entity: handed.update(
        config=copy.deepcopy(sweep), project=project) or "sweep-id")
    monkeypatch.setattr(wandb, "agent", lambda sweep_id, function, count, project, entity:
                        handed.update(sweep_id=sweep_id, count=count, function=function))
    sweep = load_sweep("strength")

    assert run_wandb_sweep(sweep, trials=2, name="str", out=tmp_path, seeds=1) == "sweep-id"
    expected = to_wandb_sweep(sweep.with_constant("seeds", 1), trials=2, name="str")
    assert handed["config"] == expected
    assert handed["config"]["parameters"]["seeds"] == {"value": 1}
    assert handed["config"]["parameters"]["max_strength"] == {
        "values": [3, 10, 20, 30, 60, 100]}
    assert handed["sweep_id"] == "sweep-id" and handed["count"] == 2
    assert handed["project"] == "gradinstructor"


def test_the_wandb_backend_refuses_to_run_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["sweep", "strength", "--backend", "wandb", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--backend wandb needs W&B's server" in err
    assert "wandb login" in err and "--backend optuna" in err


class _Recorder(NullTracker):
    def __init__(self) -> None:
        self.logged: dict = {}

    def log(self, metrics, step=None) -> None:
        self.logged.update(metrics)


def test_a_trial_logs_the_metric_the_wandb_sweep_optimises():
    sweep = parse_sweep(tiny_sweep(max_strength={"value": 30}), "s.yaml")
    tracker = _Recorder()
    result = run_trial(plan_trial(sweep.constants), tracker=tracker)

    metric = to_wandb_sweep(sweep)["metric"]["name"]
    assert tracker.logged[metric] == pytest.approx(result.metrics["gain"])
    for name in DIAGNOSTICS:
        if result.diagnostics[name] is not None:
            assert tracker.logged[f"eval/{name}"] == pytest.approx(result.diagnostics[name])


# --------------------------------------------------------------------------- tiny real sweeps


@pytest.fixture(scope="module")
def grid_runs(tmp_path_factory):
    """One grid study run three times on one journal file: 3 trials, resumed to 5 (with a wandb
    run per trial, offline), then run again with nothing left to do."""
    out = tmp_path_factory.mktemp("grid")
    sweep = parse_sweep(tiny_sweep(), "tiny.yaml")
    runs = {"out": out, "sweep": sweep}
    start = time.perf_counter()
    study = run_sweep(sweep, trials=3, out=out, tracker="none", progress_bar=False, seed=0)
    runs["first_seconds"] = time.perf_counter() - start
    runs["first"] = snapshot(study)
    runs["first_trials"] = trials_of(study)
    study = run_sweep(sweep, trials=5, out=out, tracker="wandb", progress_bar=False, seed=0)
    runs["second"] = snapshot(study)
    runs["second_trials"] = trials_of(study)
    study = run_sweep(sweep, trials=5, out=out, tracker="none", progress_bar=False, seed=0)
    runs["third_trials"] = trials_of(study)
    runs["study"] = study
    return runs


def test_a_tiny_sweep_completes_its_trials_with_gain_and_diagnostics(grid_runs,
                                                                     record_wall_time):
    record_wall_time("tiny_sweep_3_trials", grid_runs["first_seconds"])
    trials = grid_runs["first_trials"]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert len({t.params["max_strength"] for t in trials}) == 3
    for trial in trials:
        attrs = trial.user_attrs
        assert trial.params["max_strength"] in STRENGTHS
        assert trial.value == attrs["gain"]
        # the gain is ENN-augmented minus plain validation accuracy, in points, over seeds
        assert attrs["gain"] == pytest.approx(100 * (attrs["enn_val_acc"]
                                                     - attrs["plain_val_acc"]), abs=1e-6)
        assert 0 <= attrs["plain_val_acc"] <= 1 and 0 <= attrs["enn_val_acc"] <= 1
        assert attrs["settings"]["seeds"] == 2
        for name in DIAGNOSTICS:
            assert name in attrs
        for name in ("critic_mse", "zoo_mse", "grad_ratio", "push_ratio", "rl_val_acc",
                     "rl_strength"):
            assert math.isfinite(attrs[name]), name
        assert attrs["rl_strength"] <= trial.params["max_strength"]
        assert attrs["worker"]["pid"] == os.getpid()
        enn = ENN.load(attrs["enn_path"])
        assert Path(attrs["enn_path"]).parent.name == str(trial.number)
        assert enn.metadata["sweep_params"]["max_strength"] == trial.params["max_strength"]


def test_running_again_keeps_finished_trials_and_completes_the_count(grid_runs):
    first, second = grid_runs["first"], grid_runs["second"]
    for number, record in first.items():
        assert second[number] == record  # unchanged: value, params, finish time, checkpoint
    complete = [t for t in grid_runs["second_trials"] if t.state == TrialState.COMPLETE]
    assert len(complete) == 5
    assert sorted(t.params["max_strength"] for t in complete) == STRENGTHS  # each point once
    assert not [t for t in grid_runs["second_trials"] if t.state == TrialState.FAIL]
    # a third run with the count reached starts no trial
    assert len(grid_runs["third_trials"]) == len(grid_runs["second_trials"])


def test_each_trial_is_a_wandb_run(grid_runs):
    new = [t for t in grid_runs["second_trials"] if t.number not in grid_runs["first"]]
    dirs = {t.user_attrs["wandb_dir"] for t in new}
    assert len(dirs) == len(new) == 2
    for path in dirs:
        assert Path(path).is_dir() and Path(path).parent.parent == grid_runs["out"]
        assert list(Path(path).glob("*.wandb"))


def _independent_loo(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Leave-one-out predictions of a standardised ridge, written out here."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    def fit_predict(train_x, train_y, test_x):
        imputer = SimpleImputer(strategy="median", keep_empty_features=True).fit(train_x)
        scaler = StandardScaler().fit(imputer.transform(train_x))
        model = Ridge(alpha=1.0).fit(scaler.transform(imputer.transform(train_x)), train_y)
        return model.predict(scaler.transform(imputer.transform(test_x)))

    return np.array([fit_predict(np.delete(x, i, 0), np.delete(y, i), x[i:i + 1])[0]
                     for i in range(len(y))])


def test_analyze_prints_the_table_with_numbers_it_computed(grid_runs, capsys):
    from scipy.stats import spearmanr

    study = grid_runs["study"]
    complete = trials_of(study, TrialState.COMPLETE)
    y = np.array([t.value for t in complete])
    assert np.ptp(y) > 0, f"the tiny sweep's gains should differ: {y}"
    x = np.array([[t.user_attrs[n] if t.user_attrs[n] is not None else np.nan
                   for n in DIAGNOSTICS] for t in complete], dtype=float)
    loo = _independent_loo(x, y)
    rho = spearmanr(loo, y).statistic

    analysis = analyze_study(study)
    assert [r["number"] for r in analysis["rows"]] == [t.number for t in complete]
    assert [r["loo"] for r in analysis["rows"]] == pytest.approx(loo.tolist())
    assert analysis["loo_spearman"] == pytest.approx(rho)
    assert analysis["measured_best"]["number"] == complete[int(np.argmax(y))].number
    assert set(analysis["importances"]) == {"max_strength"}

    out_dir = grid_runs["out"]
    assert main(["sweep", "analyze", "--study", "tiny", "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].startswith("study tiny: 5 complete, 0 failed")
    assert lines[1].split()[:3] == ["trial", "gain", "LOO-pred"]
    for trial, prediction in zip(complete, loo):
        row = next(line.split() for line in lines[2:] if line.split()[0] == str(trial.number))
        assert float(row[1]) == pytest.approx(trial.value, abs=0.006)
        assert float(row[2]) == pytest.approx(prediction, abs=0.0006)
    assert (f"leave-one-out Spearman (prediction vs measured, trials unseen by the model): "
            f"{rho:+.3f}") in printed
    best = analysis["predicted_best"]
    assert f"predicted best ENN: trial {best['number']} " in printed
    assert f"max_strength={best['params']['max_strength']}" in printed
    assert "parameter importances (optuna): max_strength 1.00" in printed


def test_analyze_names_a_missing_study_and_the_ones_there(grid_runs, capsys):
    assert main(["sweep", "analyze", "--study", "tinny", "--out", str(grid_runs["out"])]) == 2
    err = capsys.readouterr().err
    assert f"no study 'tinny' in {grid_runs['out'] / STORAGE_FILE}; studies there: tiny" in err


def test_a_crashing_trial_is_recorded_as_failed_with_its_error(tmp_path, capsys):
    """Trials that raise are FAIL with their error; after max_failures in a row the sweep
    stops, naming the error; once the cause is fixed, the same call completes the count."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "trials").write_text("a file where the checkpoints' folder should be")
    sweep = parse_sweep(tiny_sweep(max_strength={"values": [3, 30]}), "crash.yaml")

    with pytest.raises(SweepError) as err:
        run_sweep(sweep, trials=2, out=out, tracker="none", progress_bar=False,
                  max_failures=2)
    assert "2 trials in a row failed" in str(err.value)
    assert "run the same command again" in str(err.value)

    storage = open_storage(None, out / STORAGE_FILE)
    failed = trials_of(optuna.load_study(study_name="tiny", storage=storage), TrialState.FAIL)
    assert len(failed) == 2
    for trial in failed:
        assert trial.user_attrs["error"].startswith(("NotADirectoryError", "FileExistsError"))
        assert str(out / "trials") in trial.user_attrs["error"]
        assert "run_trial" in trial.user_attrs["traceback"]

    (out / "trials").unlink()  # the cause, fixed
    study = run_sweep(sweep, trials=2, out=out, tracker="none", progress_bar=False)
    assert len(trials_of(study, TrialState.COMPLETE)) == 2
    assert [t.user_attrs["error"] for t in trials_of(study, TrialState.FAIL)] == \
        [t.user_attrs["error"] for t in failed]
    printed = format_analysis(analyze_study(study))
    assert f"failed trial {failed[0].number}: {failed[0].user_attrs['error']}" in printed


def test_a_bayes_sweep_draws_from_the_files_ranges(tmp_path):
    sweep = parse_sweep(tiny_sweep(method="bayes", max_strength={
        "distribution": "log_uniform_values", "min": 1.0, "max": 1000.0}), "b.yaml")
    study = run_sweep(sweep, trials=2, out=tmp_path, tracker="none", progress_bar=False,
                      seed=1)
    complete = trials_of(study, TrialState.COMPLETE)
    assert len(complete) == 2
    assert all(1.0 <= t.params["max_strength"] <= 1000.0 for t in complete)
    assert len({t.params["max_strength"] for t in complete}) == 2
    assert sorted(p.name for p in (tmp_path / "trials").iterdir()) == \
        sorted(str(t.number) for t in complete)
