"""Robustness: atomic writes, kill and resume, untrusted files, divergence, bad settings.

The kill-and-resume test runs ``train-enn`` in a subprocess on a tiny task, stops it
with Ctrl-C (SIGINT) and later with SIGKILL, resumes it twice, and checks that the
result is the one an uninterrupted run gives, bit for bit.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gradinstructor import pipeline
from gradinstructor.agent import (
    AGENT_FORMAT_VERSION,
    build_algorithm,
    load_agent_state,
    train_enn,
)
from gradinstructor.cli import main
from gradinstructor.config import SettingsError, load_agent_config
from gradinstructor.enn import (
    ENN,
    FORMAT_VERSION,
    CheckpointError,
    ENNConfig,
    atomic_torch_save,
)
from gradinstructor.render import layer_shapes
from gradinstructor.tasks import build_mlp, load_task
from gradinstructor.trainer import DivergenceError, GradInstructor, fit_target

TINY_TASK = """\
name: tiny-digits
dataset: digits
split: {train: 128, val: 64, test: 64}
hidden: [16]
lr: 0.05
batch_size: 32
epochs: 2
segments: 2
"""
TINY_AGENT = """\
name: tiny-ppo
algorithm: ppo
n_envs: 2
n_steps: 2
batch_size: 4
n_epochs: 2
"""
TOTAL = 80  # 20 rollouts of 2 environments x 2 segments


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("settings")
    (folder / "task.yaml").write_text(TINY_TASK)
    (folder / "agent.yaml").write_text(TINY_AGENT)
    return folder / "task.yaml", folder / "agent.yaml"


@pytest.fixture(scope="module")
def uninterrupted(tiny_files, tmp_path_factory) -> Path:
    """The tiny run, uninterrupted, in this process (one torch thread, as the subprocesses)."""
    task_file, agent_file = tiny_files
    run = tmp_path_factory.mktemp("uninterrupted")
    pipeline.stage_train_enn(load_task(str(task_file)), run, agent=str(agent_file),
                             timesteps=TOTAL, seed=0, progress_bar=False,
                             task_spec=str(task_file))
    return run


def _train_enn_process(run: Path, *extra: str, files: tuple[Path, Path]) -> subprocess.Popen:
    task_file, agent_file = files
    # SIGINT back to its default, so Python turns it into KeyboardInterrupt even where the
    # test runner was started with SIGINT ignored (a background job of a script)
    return subprocess.Popen(
        [sys.executable, "-m", "gradinstructor.cli", "train-enn", "--task", str(task_file),
         "--agent", str(agent_file), "--timesteps", str(TOTAL), "--out", str(run),
         "--no-progress", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_new_save(process: subprocess.Popen, path: Path, after: int | None,
                       timeout: float = 240) -> None:
    """Wait until ``path`` exists with an inode other than ``after`` (a newer save)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_ino != after:
            return
        assert process.poll() is None, f"train-enn ended early: {process.communicate()}"
        time.sleep(0.01)
    process.kill()
    pytest.fail(f"no save in {path} within {timeout} s")


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_and_interrupted_train_enn_resumes_to_the_uninterrupted_result(
        tmp_path, tiny_files, uninterrupted, record_wall_time):
    start = time.perf_counter()
    run = tmp_path / "run"
    state_file = run / "agent.pt"

    # 1. Ctrl-C after the first periodic save: exit 130, the state saved, told how to go on
    first = _train_enn_process(run, files=tiny_files)
    _wait_for_new_save(first, state_file, after=None)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    line = err.strip().splitlines()[-1]
    saved = load_agent_state(state_file)["num_timesteps"]
    assert 0 < saved < TOTAL
    assert re.fullmatch(
        rf"gradinstructor train-enn: interrupted at timestep \d+; the agent's state at "
        rf"timestep {saved} of {TOTAL} is in {re.escape(str(state_file))}; continue with "
        r"--resume", line), line
    assert not (run / "enn.pt").exists()

    # 2. resumed, then SIGKILLed after a newer save: the last save is intact
    second = _train_enn_process(run, "--resume", files=tiny_files)
    _wait_for_new_save(second, state_file, after=state_file.stat().st_ino)
    second.kill()
    second.communicate(timeout=60)
    assert second.returncode == -signal.SIGKILL
    assert not (run / "enn.pt").exists()
    killed_at = load_agent_state(state_file)["num_timesteps"]
    assert saved < killed_at < TOTAL

    # 3. resumed again to the end, with the settings taken from the save
    third = subprocess.run(
        [sys.executable, "-m", "gradinstructor.cli", "train-enn", "--out", str(run),
         "--resume", "--no-progress"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"})
    assert third.returncode == 0, third.stderr[-3000:]
    record_wall_time("kill and resume train-enn (3 processes)", time.perf_counter() - start)

    enn = ENN.load(run / "enn.pt")
    assert enn.metadata["num_timesteps"] == enn.metadata["total_timesteps"] == TOTAL
    assert enn.metadata["resumed_at"] == [saved, killed_at]
    assert load_agent_state(state_file)["num_timesteps"] == TOTAL
    # the same result as the uninterrupted run, bit for bit: ENN, actor and episodes
    reference = torch.load(uninterrupted / "enn.pt", weights_only=True)
    resumed = torch.load(run / "enn.pt", weights_only=True)
    assert _same_state(reference["state_dict"], resumed["state_dict"])
    assert _same_state(reference["actor"]["state_dict"], resumed["actor"]["state_dict"])
    episodes = json.loads((run / "train_enn.json").read_text())["episodes"]
    assert episodes == json.loads((uninterrupted / "train_enn.json").read_text())["episodes"]
    assert len(episodes) == TOTAL // 2  # 2 segments an episode, none diverged
    info = json.loads((run / "run_info.json").read_text())["train-enn"]["settings"]
    assert info["resumed_at"] == [saved, killed_at] and info["timesteps"] == TOTAL
    assert info["task"] == "tiny-digits"


def test_resuming_with_other_settings_names_the_setting(tmp_path, tiny_files, uninterrupted,
                                                        capsys):
    task_file, agent_file = tiny_files
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    argv = ["train-enn", "--out", str(run), "--resume", "--no-progress",
            "--task", str(task_file), "--agent", str(agent_file)]

    assert main([*argv, "--timesteps", "120"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert (f"cannot resume {run / 'agent.pt'}: it was saved with total_timesteps=80, but this "
            "run has total_timesteps=120" in lines[0])

    assert main([*argv, "--seed", "3"]) == 2
    assert "saved with seed=0, but this run has seed=3" in capsys.readouterr().err


def test_resume_without_a_save_says_there_is_nothing_to_resume(tmp_path, capsys):
    assert main(["train-enn", "--out", str(tmp_path), "--resume", "--task", "digits"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"gradinstructor train-enn: error: nothing to resume: "
                     f"{tmp_path / 'agent.pt'} does not exist; run train-enn without "
                     "--resume to start a new run"]


def test_a_resumed_finished_run_plays_no_more_steps(tmp_path, tiny_files, uninterrupted):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    (run / "enn.pt").unlink()
    task_file, agent_file = tiny_files

    enn = pipeline.stage_train_enn(load_task(str(task_file)), run, agent=str(agent_file),
                                   timesteps=TOTAL, progress_bar=False, resume=True)

    reference = ENN.load(uninterrupted / "enn.pt")
    assert enn.metadata["num_timesteps"] == TOTAL and enn.metadata["resumed_at"] == [TOTAL]
    assert _same_state(enn.state_dict(), reference.state_dict())


# --------------------------------------------------------------------------- atomic writes


class _FailsWhenPickled:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_a_write_that_fails_half_way_keeps_the_previous_checkpoint(tmp_path):
    torch.manual_seed(0)
    enn = ENN(ENNConfig(layer_shapes=[(5, 6), (3, 5)], width=4, embed=2, hidden=8))
    path = enn.save(tmp_path / "enn.pt", task="first")
    before = path.read_bytes()

    # a large tensor is written before the object that fails, so the file is half-written
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"big": torch.zeros(200_000), "bad": _FailsWhenPickled()}, path)
    with pytest.raises(TypeError, match="not JSON serialisable"):
        pipeline.write_json(tmp_path / "results.json", {"bad": object()})

    assert path.read_bytes() == before
    assert ENN.load(path).metadata["task"] == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enn.pt"]  # no temporary file left


# --------------------------------------------------------------------------- untrusted files


class _WritesAMarker:
    """Unpickling this calls ``Path.write_text(marker, "ran")``: code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (self.marker, "ran"))


def _malicious_checkpoint(path: Path, marker: Path, kind: str = "gradinstructor-enn") -> Path:
    torch.save({"format": kind, "format_version": 1, "config": _WritesAMarker(marker)}, path)
    return path


def test_the_malicious_pickle_really_runs_code_when_loaded_unsafely(tmp_path):
    """The control: the same construction does run code under plain pickle."""
    marker = tmp_path / "ran-unsafe"
    path = _malicious_checkpoint(tmp_path / "control.pt", marker)

    torch.load(path, weights_only=False)  # what a careless loader would do

    assert marker.read_text() == "ran"


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "was-executed"
    evil = _malicious_checkpoint(tmp_path / "enn.pt", marker)
    evil_agent = _malicious_checkpoint(tmp_path / "agent.pt", marker, "gradinstructor-agent")

    with pytest.raises(CheckpointError) as err:
        ENN.load(evil)
    message = str(err.value)
    assert re.match(rf"refused to load {re.escape(str(evil))}: it asks to import \S+, so "
                    "loading it could run code; ", message), message
    assert "weights_only=True" in message
    assert "\n" not in message
    with pytest.raises(CheckpointError, match="refused to load .*agent.pt: it asks to import"):
        load_agent_state(evil_agent)
    # through the command line: one line, exit status 2
    assert main(["compare", "--task", "digits", "--methods", "enn", "--enn", str(evil),
                 "--out", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradinstructor compare: error: refused")
    assert main(["train-enn", "--out", str(tmp_path), "--resume", "--task", "digits"]) == 2
    assert "refused to load" in capsys.readouterr().err

    assert not marker.exists()


@pytest.mark.parametrize(("version", "message"), [
    (FORMAT_VERSION + 1, f"has format version {FORMAT_VERSION + 1}, newer than this "
                         rf"gradinstructor \(0\.1\.0\) reads \(up to {FORMAT_VERSION}\)"),
    ("2", r"has an unknown format version '2'; this gradinstructor \(0\.1\.0\) reads "
          f"gradinstructor-enn format versions 1 to {FORMAT_VERSION}"),
    (0, "has an unknown format version 0"),
    (None, "has an unknown format version None"),
])
def test_a_newer_or_unknown_enn_format_version_names_both_versions(tmp_path, version, message):
    enn = ENN(ENNConfig(layer_shapes=[(5, 6)], width=4, embed=2, hidden=8))
    enn.save(tmp_path / "enn.pt")
    payload = torch.load(tmp_path / "enn.pt", weights_only=True)
    payload["format_version"] = version
    torch.save(payload, tmp_path / "enn.pt")

    with pytest.raises(CheckpointError, match=message):
        ENN.load(tmp_path / "enn.pt")


def test_a_newer_agent_state_is_refused_naming_both_versions(tmp_path, uninterrupted):
    payload = torch.load(uninterrupted / "agent.pt", weights_only=True)
    payload["format_version"] = AGENT_FORMAT_VERSION + 5
    torch.save(payload, tmp_path / "agent.pt")

    newer = AGENT_FORMAT_VERSION + 5
    with pytest.raises(CheckpointError,
                       match=f"format version {newer}, newer than this gradinstructor "
                             rf"\(0\.1\.0\) reads \(up to {AGENT_FORMAT_VERSION}\)"):
        load_agent_state(tmp_path / "agent.pt")


def test_a_truncated_checkpoint_is_refused_as_damaged(tmp_path):
    enn = ENN(ENNConfig(layer_shapes=[(5, 6)], width=4, embed=2, hidden=8))
    data = enn.save(tmp_path / "enn.pt").read_bytes()
    (tmp_path / "enn.pt").write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckpointError, match="damaged, truncated or not a torch file"):
        ENN.load(tmp_path / "enn.pt")


def test_a_checkpoint_with_a_damaged_config_is_refused(tmp_path):
    enn = ENN(ENNConfig(layer_shapes=[(5, 6)], width=4, embed=2, hidden=8))
    enn.save(tmp_path / "enn.pt")
    payload = torch.load(tmp_path / "enn.pt", weights_only=True)
    payload["config"]["layer_shapes"] = [(5, 6, 7)]
    torch.save(payload, tmp_path / "enn.pt")

    with pytest.raises(CheckpointError, match=r"is a damaged ENN checkpoint: .*layer_shapes\[0\]"):
        ENN.load(tmp_path / "enn.pt")


def test_settings_with_a_python_tag_are_refused_and_run_nothing(tmp_path):
    marker = tmp_path / "was-executed"
    path = tmp_path / "agent.yaml"
    path.write_text(f"name: x\nalgorithm: !!python/object/apply:os.mkdir ['{marker}']\n")

    with pytest.raises(SettingsError, match=f"^{re.escape(str(path))}: not valid YAML settings "
                                            r"at line 2, column \d+: .*python/object/apply"):
        load_agent_config(str(path))
    assert not marker.exists()


# --------------------------------------------------------------------------- divergence


def test_target_training_divergence_names_the_step_the_method_and_the_last_finite_loss(
        small_digits):
    model = build_mlp(small_digits.layer_sizes, seed=0)

    with pytest.raises(DivergenceError) as err:
        fit_target(small_digits, model, seed=0, method="plain", lr=1e12)

    match = re.fullmatch(r"plain: loss became (nan|inf) at step (\d+) \(epoch \d+\); last "
                         r"finite loss (\S+) \(step (\d+)\)\. Lower the learning rate or the "
                         r"ENN strength", str(err.value))
    assert match, str(err.value)
    step, last, previous = int(match[2]), float(match[3]), int(match[4])
    assert step >= 1 and previous == step - 1 and last == last  # a finite number


def test_an_enn_term_that_overflows_is_reported_with_its_method(small_digits):
    model = build_mlp(small_digits.layer_sizes, seed=0)
    enn = ENN(ENNConfig(layer_shapes=layer_shapes(model), width=4, embed=2, hidden=8))
    instructor = GradInstructor(model, enn, strength=1e38, total_steps=small_digits.total_steps)

    with pytest.raises(DivergenceError, match=r"^enn: loss became .* at step \d+ .*; "
                                              r"(last finite loss|the first loss)"):
        fit_target(small_digits, model, seed=0, instructor=instructor, method="enn")


def test_rl_divergence_stops_the_run_naming_the_timestep_the_algorithm_and_last_value(
        tiny_files):
    task_file, agent_file = tiny_files
    agent = load_agent_config(str(agent_file), learning_rate=1e8)

    with pytest.raises(DivergenceError) as err:
        train_enn(load_task(str(task_file)), agent, total_timesteps=40, progress_bar=False)

    message = str(err.value)
    assert re.match(r"ppo: .* became non-finite during the agent's training at timestep \d+; ",
                    message), message
    assert re.search(r"last finite critic output \d", message)
    assert "Lower learning_rate (now 1e+08)" in message


def test_episodes_that_diverge_end_with_the_penalty_and_the_learner_goes_on(tmp_path,
                                                                             tiny_files):
    _, agent_file = tiny_files
    task_file = tmp_path / "task.yaml"
    task_file.write_text(TINY_TASK.replace("lr: 0.05", "lr: 1.0e+12"))
    task = load_task(str(task_file))
    agent = load_agent_config(str(agent_file))
    enn_config = ENNConfig(layer_shapes=layer_shapes(task.build_model(seed=0)))
    algo = build_algorithm(task, agent, seed=0, enn_config=enn_config)
    infos: list[dict] = []

    from stable_baselines3.common.callbacks import BaseCallback

    class Record(BaseCallback):
        def _on_step(self) -> bool:
            infos.extend(i for i, done in zip(self.locals["infos"], self.locals["dones"])
                         if done)
            return True

    algo.learn(total_timesteps=12, callback=Record())  # 3 rollouts, 3 PPO updates

    assert algo.num_timesteps == 12 and len(infos) == 12  # every step ends its episode
    assert algo._n_updates == 3 * agent.n_epochs  # the learner went on updating
    assert all(i["diverged"] and i["val_acc"] == 0.0 for i in infos)
    assert all(i["diverged_step"] >= 1 and i["last_finite_loss"] > 0 for i in infos)
    assert all(torch.isfinite(p).all() for p in algo.policy.parameters())


# --------------------------------------------------------------------------- validation

@pytest.mark.parametrize(("overrides", "message"), [
    ({"learning_rat": 1e-3}, r"unknown key 'learning_rat' \(did you mean 'learning_rate'\?\); "
                             "valid keys: name, algorithm, "),
    ({"n_envs": "four"}, "n_envs must be an integer, but got 'four'"),
    ({"learning_rate": float("inf")}, "learning_rate must be a finite number, but got inf"),
    ({"batch_size": 1}, r"batch_size must be at least 2 for ppo \(advantages are normalised "
                        r"per minibatch\), but got 1"),
    ({"n_envs": 1, "n_steps": 1, "batch_size": 2},
     "n_steps must be such that n_envs . n_steps is at least 2 for ppo"),
    ({"batch_size": 13}, "batch_size must be a size that leaves no minibatch of one from the "
                         r"n_envs \* n_steps = 40 segments of a rollout \(e.g. a divisor of 40\), "
                         "but got 13"),
    ({"max_strength": -1.0}, "max_strength must be non-negative, but got -1.0"),
])
def test_bad_agent_settings_give_one_line_naming_key_value_and_choices(overrides, message):
    with pytest.raises(SettingsError) as err:
        load_agent_config("ppo", **overrides)
    assert "\n" not in str(err.value)
    assert re.search(message, str(err.value)), str(err.value)


@pytest.mark.parametrize(("text", "message"), [
    ("name: x\n  bad indent: [\n", r"not valid YAML settings at line \d+, column \d+"),
    ("name: x\ndataset: digits\nsplit: {train: 10, val: 10, test: 10}\nepochs: 0\n",
     "epochs must be at least 1, but got 0"),
    ("name: x\ndataset: digits\nsplit: {train: 10, val: 10, test: 10}\nlr: .nan\n",
     "lr must be a finite number, but got nan"),
    ("name: x\ndataset: digits\nsplit: {train: 10, val: 10, test: 10}\nepochz: 3\n",
     r"unknown key 'epochz' \(did you mean 'epochs'\?\)"),
    ("name: x\nsplit: {train: 10, val: 10, test: 10}\n",
     "missing key 'dataset'; required keys: name, dataset, split"),
    ("- digits\n", "expected a mapping of settings, got list"),
])
def test_bad_task_files_give_one_line(tmp_path, text, message):
    path = tmp_path / "task.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError) as err:
        load_task(str(path))
    assert "\n" not in str(err.value)
    assert re.search(message, str(err.value)), str(err.value)


def test_a_missing_settings_file_says_so(tmp_path):
    with pytest.raises(SettingsError, match=r"task settings file '.*nothing\.yaml' does not "
                                            "exist; known tasks: digits, "):
        load_task(str(tmp_path / "nothing.yaml"))


@pytest.mark.parametrize(("kwargs", "exception", "message"), [
    ({"ratio": 1.5}, ValueError, r"ratio must be in \(0, 1\], but got 1.5"),
    ({"ratio": 0.0}, ValueError, r"ratio must be in \(0, 1\], but got 0.0"),
    ({"ratio": True}, ValueError, r"ratio must be in \(0, 1\], but got True"),
    ({"width": 2.5}, ValueError, "ENN width must be at least 1, but got 2.5"),
    ({"layer_shapes": [(5, 6), (3, 0)]}, ValueError,
     r"ENN layer_shapes\[1\] must be a pair of positive integers \(out, in\), but got \(3, 0\)"),
    ({"layer_shapes": [(5, 2.5)]}, ValueError, r"layer_shapes\[0\] must be a pair"),
    ({"layer_shapes": "5x6"}, TypeError, "layer_shapes must be a list of"),
])
def test_bad_enn_settings_name_the_setting(kwargs, exception, message):
    with pytest.raises(exception, match=message):
        ENNConfig(**{"layer_shapes": [(5, 6)], **kwargs})


def test_a_negative_strength_is_refused(tiny_mlp, tiny_enn):
    with pytest.raises(ValueError, match="strength must be a finite non-negative.*but got -1.0"):
        GradInstructor(tiny_mlp, tiny_enn, strength=-1.0)


@pytest.mark.parametrize(("argv", "message"), [
    (["train-enn", "--seed", "-1"], "argument --seed: must be an integer from 0 to 4294967295, "
                                    "but got '-1'"),
    (["compare", "--strength", "inf"],
     "argument --strength: must be 'actor' or a non-negative number, but got 'inf'"),
    (["train-enn", "--save-every", "0"],
     "argument --save-every: must be a positive integer, but got '0'"),
    (["train-enn", "--timesteps", "0"],
     "argument --timesteps: must be a positive integer, but got '0'"),
])
def test_bad_options_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_an_out_path_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["train-enn", "--task", "digits", "--out", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"gradinstructor train-enn: error: --out '{tmp_path / 'file'}' is a file, not a run "
        "folder; pass a folder (it is created if missing)"]


def test_a_misspelt_task_suggests_the_nearest(tmp_path, capsys):
    assert main(["train-enn", "--task", "digts", "--out", str(tmp_path)]) == 2
    line = capsys.readouterr().err.strip()
    assert "unknown task 'digts' (did you mean 'digits'?)" in line and "\n" not in line


# --------------------------------------------------------------------------- reproducibility

TIMING_KEYS = ("seconds",)


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items()
                if not any(t in k for t in TIMING_KEYS)}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def test_the_same_seed_gives_the_same_quick_demo(quick_demo_run, tmp_path, record_wall_time):
    """``demo --quick`` twice on CPU: identical results (timings aside) and run_info."""
    first = quick_demo_run
    assert first.result.returncode == 0, first.result.stderr[-3000:]
    start = time.perf_counter()
    # the first ran with --device cpu, this one with the default, auto: the CPU here too
    second = subprocess.run(
        [sys.executable, "-m", "gradinstructor.cli", "demo", "--quick", "--tracker", "none",
         "--no-progress", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900,
        cwd=tmp_path, env={**os.environ, "WANDB_MODE": "offline"})
    record_wall_time("demo --quick (second run)", time.perf_counter() - start)
    assert second.returncode == 0, second.stderr[-3000:]

    for name in ("results.json", "train_enn.json", "prune.json", "gradcam/gradcam.json"):
        a = json.loads((first.path / name).read_text())
        b = json.loads((tmp_path / name).read_text())
        assert _without_timing(a) == _without_timing(b), name
    enn_a = torch.load(first.path / "enn.pt", weights_only=True)
    enn_b = torch.load(tmp_path / "enn.pt", weights_only=True)
    assert _same_state(enn_a["state_dict"], enn_b["state_dict"])

    info = json.loads((tmp_path / "run_info.json").read_text())
    assert set(info) >= {"train-enn", "compare", "explain"}
    for stage in info.values():
        assert stage["packages"]["torch"] == torch.__version__
        assert stage["packages"]["gradinstructor"] == "0.1.0"
        assert {"stable-baselines3", "numpy", "gymnasium"} <= set(stage["packages"])
        assert stage["python"] == sys.version.split()[0]
        assert stage["settings"]["device"] == "cpu"  # auto here (CUDA hidden): the CPU
    assert info["train-enn"]["settings"]["seed"] == 0
    assert info["train-enn"]["settings"]["agent"]["algorithm"] == "ppo"
    assert info["compare"]["settings"]["seeds"] == [0, 1]
