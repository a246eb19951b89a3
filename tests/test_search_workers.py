"""Sweeps across processes: a worker killed mid-trial (SIGKILL) or interrupted (Ctrl-C) loses
only the trial in flight, and two workers share one study on PostgreSQL.

Each test starts ``python -m gradinstructor.cli sweep FILE ...`` in subprocesses, exactly as a
user would, and watches the study through its storage.

The PostgreSQL test needs a server: set ``GI_TEST_POSTGRES_URL`` to
``postgresql://USER:PASSWORD@127.0.0.1:5432/DB`` (``.ci/run`` starts one on loopback and sets
it). Without it the test is skipped, unless ``GI_REQUIRE_POSTGRES=1``, when it fails.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from gradinstructor.search import open_storage, redact
from gradinstructor.search.study import STORAGE_FILE

# A shrunk digits task with the smallest agent: a trial takes a few seconds in a fresh process.
PARAMETERS = {
    "task": {"value": "digits"}, "train_size": {"value": 200}, "epochs": {"value": 2},
    "timesteps": {"value": 32}, "n_envs": {"value": 2}, "n_steps": {"value": 4},
    "batch_size": {"value": 8}, "n_epochs": {"value": 1}, "zoo_size": {"value": 3},
    "seeds": {"value": 2}, "enn_width": {"value": 4}, "enn_hidden": {"value": 8},
    "max_strength": {"values": [3, 10, 30, 100]},
}
TARGET = 4  # complete trials: the whole grid
WAIT = 240  # seconds to wait for a state of the study before giving up


def write_sweep(path: Path, name: str, strengths: list[int] | None = None) -> Path:
    parameters = copy.deepcopy(PARAMETERS)
    if strengths is not None:
        parameters["max_strength"] = {"values": strengths}
    data = {"name": name, "method": "grid", "metric": {"name": "gain", "goal": "maximize"},
            "parameters": parameters}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def start_worker(sweep: Path, *options: str, trials: int = TARGET) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    # SIGINT back to its default in the worker, so that Python turns it into
    # KeyboardInterrupt even where the test runner was started with SIGINT ignored (a
    # background job of a script): otherwise the worker ignores Ctrl-C and finishes
    return subprocess.Popen(
        [sys.executable, "-m", "gradinstructor.cli", "sweep", str(sweep), "--trials",
         str(trials), "--tracker", "none", "--no-progress", *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def finish(proc: subprocess.Popen, timeout: float = WAIT) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"worker {proc.pid} did not finish in {timeout} s:\n{out}\n{err}")
    return proc.returncode, out, err


def load(storage, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def wait_for(proc: subprocess.Popen, storage, name: str, condition, what: str) -> list:
    """Poll the study until ``condition(trials)`` holds; fail if the worker exits first."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the worker exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        try:
            trials = load(storage, name).get_trials(deepcopy=True)
        except KeyError:  # the worker has not created the study yet
            trials = []
        if condition(trials):
            return trials
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"no {what} within {WAIT} s")


def in_flight(trials) -> list:
    """Trials RUNNING inside the objective (claimed by a worker, past the grid check)."""
    return [t for t in trials if t.state == TrialState.RUNNING and "settings" in t.user_attrs]


def finished(trials) -> dict[int, tuple]:
    return {t.number: (t.value, t.params, t.datetime_complete, t.user_attrs["gain"],
                       t.user_attrs["enn_path"])
            for t in trials if t.state == TrialState.COMPLETE}


# The kill test's grid: six points, so that each signal lands while a trial runs that is
# not the last one the worker needs (a trial takes a second or two; with the last one in
# flight a worker may finish before the signal arrives).
KILL_GRID = [1, 3, 10, 30, 50, 100]


def test_a_killed_or_interrupted_worker_loses_only_the_trial_in_flight(tmp_path):
    target = len(KILL_GRID)
    sweep = write_sweep(tmp_path / "kill.yaml", "kill", KILL_GRID)
    out = tmp_path / "run"
    storage = open_storage(None, out / STORAGE_FILE)

    def mid_trial(more_than: int, at_most: int):
        def condition(trials) -> bool:
            complete = sum(t.state == TrialState.COMPLETE for t in trials)
            return more_than < complete <= at_most and bool(in_flight(trials))
        return condition

    # 1. SIGKILL while a trial runs, after one or two finished
    worker = start_worker(sweep, "--out", str(out), trials=target)
    trials = wait_for(worker, storage, "kill", mid_trial(0, 2), "a finished and a running trial")
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=60)
    killed = in_flight(trials)[0].number
    done = finished(load(storage, "kill").get_trials())
    assert done and killed not in done

    # 2. Ctrl-C while a later trial runs, not the last: status 130, that trial FAIL as
    #    interrupted (the trial that was running when the signal landed: found by its error)
    worker = start_worker(sweep, "--out", str(out), trials=target)
    trials = wait_for(worker, storage, "kill", mid_trial(len(done), target - 2),
                      "a second running trial")
    running = in_flight(trials)[0].number
    worker.send_signal(signal.SIGINT)
    status, _, err = finish(worker, timeout=60)
    assert status == 130, err
    assert "interrupted" in err

    after_interrupt = load(storage, "kill").get_trials()
    by_number = {t.number: t for t in after_interrupt}
    assert by_number[killed].state == TrialState.FAIL  # found dead by the second worker
    assert "died while this trial ran" in by_number[killed].user_attrs["error"]
    interrupted_trials = [t.number for t in after_interrupt if t.state == TrialState.FAIL
                          and t.user_attrs.get("error", "").startswith("interrupted (Ctrl-C)")]
    assert len(interrupted_trials) == 1 and interrupted_trials[0] >= running
    interrupted = interrupted_trials[0]
    done_before_interrupt = finished(after_interrupt)
    for number, record in done.items():
        assert done_before_interrupt[number] == record

    # 3. the same command again completes the count (--device cpu reaches each trial; the
    #    workers before ran with the default, auto, which is the CPU here too)
    status, printed, err = finish(start_worker(sweep, "--out", str(out), "--device", "cpu",
                                               trials=target))
    assert status == 0, err
    final = load(storage, "kill").get_trials()
    complete = finished(final)
    assert {t.user_attrs["device"] for t in final if t.state == TrialState.COMPLETE} == {"cpu"}
    for number, record in done_before_interrupt.items():
        assert complete[number] == record  # every finished trial kept, unchanged
    assert len(complete) == target
    assert sorted(p["max_strength"] for _, p, *_ in complete.values()) == KILL_GRID
    assert {t.number for t in final if t.state == TrialState.FAIL} == {killed, interrupted}
    assert f"this worker completed {target - len(done_before_interrupt)} trial(s)" in printed
    assert "leave-one-out Spearman" in printed


def _postgres_url() -> str:
    url = os.environ.get("GI_TEST_POSTGRES_URL")
    if url:
        return url
    reason = ("GI_TEST_POSTGRES_URL is not set: start PostgreSQL on loopback and set it to "
              "postgresql://USER:PASSWORD@127.0.0.1:5432/DB (.ci/run does both)")
    if os.environ.get("GI_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"GI_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


def test_two_workers_share_one_study_on_postgresql(tmp_path):
    url = _postgres_url()
    storage = open_storage(url, tmp_path / "unused")  # fails at once, naming the URL
    name = f"two-workers-{uuid.uuid4().hex[:8]}"
    sweep = write_sweep(tmp_path / "shared.yaml", name)
    workers = [start_worker(sweep, "--storage", url, "--out", str(tmp_path / f"machine{i}"))
               for i in range(2)]
    try:
        results = [finish(worker) for worker in workers]
        for status, _, err in results:
            assert status == 0, err
        study = load(storage, name)
        trials = study.get_trials()
        complete = [t for t in trials if t.state == TrialState.COMPLETE]

        # the count: exactly the target, whoever ran them
        assert len(complete) == TARGET
        assert not [t for t in trials if t.state in (TrialState.FAIL, TrialState.RUNNING)]
        # the counts of the two workers add up, by their own report and by the study's record
        reported = []
        for worker, (_, printed, _) in zip(workers, results):
            match = re.search(r"this worker completed (\d+) trial\(s\)(?:: ([\d, ]+))?", printed)
            assert match, printed
            numbers = [int(n) for n in match.group(2).split(",")] if match.group(2) else []
            assert len(numbers) == int(match.group(1))
            assert numbers == sorted(t.number for t in complete
                                     if t.user_attrs["worker"]["pid"] == worker.pid)
            reported.append(len(numbers))
        assert sum(reported) == TARGET
        # no grid point ran twice: a trial that found its point taken was skipped before
        # any work (PRUNED, no results)
        points = [t.params["max_strength"] for t in complete]
        assert sorted(points) == [3, 10, 30, 100]
        for trial in trials:
            if trial.state == TrialState.PRUNED:
                assert "skipped" in trial.user_attrs and "gain" not in trial.user_attrs
        print(f"workers completed {reported} trials; {redact(url)}")
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass
