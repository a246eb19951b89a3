"""The command line: help, one-line errors with exit status 2, and the quick demo end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gradinstructor.cli import main
from gradinstructor.compare import METHODS
from gradinstructor.enn import ENN

COMMANDS = ["train-enn", "compare", "explain", "zoo", "report", "demo", "sweep"]


def _run_module(*args: str, cwd: Path | None = None, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "gradinstructor.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "WANDB_MODE": "offline"})


def test_top_level_help_as_a_module():
    result = _run_module("--help")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: gradinstructor")
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.skipif(shutil.which("gradinstructor") is None,
                    reason="the gradinstructor console script is not on PATH")
def test_the_console_script_runs():
    result = subprocess.run(["gradinstructor", "--version"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "gradinstructor 0.1.0"


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])

    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: gradinstructor {command}")


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: gradinstructor" in capsys.readouterr().out


def _error_line(capsys) -> str:
    """The one line a failed command writes to stderr."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_an_unknown_task_exits_2_with_one_line(tmp_path, capsys):
    assert main(["compare", "--task", "mnist5", "--methods", "plain", "--out",
                 str(tmp_path)]) == 2
    line = _error_line(capsys)
    assert line.startswith("gradinstructor compare: error: ")
    assert "unknown task 'mnist5' (did you mean 'mnist5k'?)" in line
    assert "known tasks: " in line and "digits" in line


def test_an_unknown_agent_exits_2_with_one_line(tmp_path, capsys):
    assert main(["train-enn", "--task", "digits", "--agent", "sac", "--out", str(tmp_path),
                 "--no-progress"]) == 2
    line = _error_line(capsys)
    assert line.startswith("gradinstructor train-enn: error: ")
    assert "unknown agent 'sac'" in line and "known agents: a2c, " in line
    assert not (tmp_path / "enn.pt").exists()


def test_a_missing_checkpoint_exits_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "enn.pt"
    assert main(["explain", "--task", "digits", "--enn", str(missing), "--out",
                 str(tmp_path)]) == 2
    line = _error_line(capsys)
    assert line.startswith("gradinstructor explain: error: ")
    assert str(missing) in line and "does not exist" in line


def test_enn_methods_without_a_checkpoint_exit_2(tmp_path, capsys):
    assert main(["compare", "--task", "digits", "--methods", "plain,enn", "--out",
                 str(tmp_path)]) == 2
    line = _error_line(capsys)
    assert str(tmp_path / "enn.pt") in line and "does not exist" in line


def test_a_bad_task_file_exits_2_naming_the_key(tmp_path, capsys):
    path = tmp_path / "task.yaml"
    path.write_text("name: x\ndataset: digits\nsplit: {train: 10, val: 10, test: 10}\n"
                    "epochs: lots\n")
    assert main(["compare", "--task", str(path), "--methods", "plain", "--out",
                 str(tmp_path)]) == 2
    assert "epochs must be an integer, but got 'lots'" in _error_line(capsys)


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["compare", "--methods", "plain,bogus"],
      "argument --methods: unknown method 'bogus'; valid methods: plain, l1, he, enn, he+enn"),
     (["compare", "--methods", ","], "argument --methods: unknown method ','"),
     (["compare", "--seeds", "0"], "argument --seeds: must be a positive integer, but got '0'"),
     (["compare", "--strength", "-1"],
      "argument --strength: must be 'actor' or a non-negative number, but got '-1'"),
     (["train-enn", "--timesteps", "ten"],
      "argument --timesteps: must be a positive integer, but got 'ten'"),
     (["demo", "--tracker", "tensorboard"], "argument --tracker: invalid choice: 'tensorboard'"),
     (["fly"], "argument COMMAND: invalid choice: 'fly'")],
)
def test_bad_options_exit_2_with_an_error_line_naming_the_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)

    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # argparse prints usage above it
    assert last.startswith("gradinstructor")
    assert message in last


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None,
                    reason="torchvision is installed: loading would try to download the files")
def test_a_missing_dataset_exits_2_naming_the_offline_tasks(tmp_path, capsys):
    assert main(["compare", "--task", "mnist", "--data-dir", str(tmp_path / "data"),
                 "--methods", "plain", "--out", str(tmp_path)]) == 2
    line = _error_line(capsys)
    assert "dataset 'mnist'" in line and "mnist5k, digits" in line


def test_quick_demo_with_offline_wandb_writes_every_artefact(quick_demo_run, record_wall_time,
                                                              capsys):
    tmp_path, result, seconds = quick_demo_run.path, quick_demo_run.result, quick_demo_run.seconds
    record_wall_time("demo --quick (wall)", seconds)
    with capsys.disabled():
        print(f"\n[demo --quick finished in {seconds:.1f} s]")

    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for method in METHODS:
        assert f"\n{method} " in out  # a table row per method
    assert f"report: {tmp_path / 'report.html'}" in out

    report = (tmp_path / "report.html").read_text()
    assert report.lstrip().lower().startswith("<!doctype html") and "he+enn" in report
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["methods"]) == list(METHODS) and results["task"] == "mnist5k"
    assert all(len(entry["runs"]) == 2 for entry in results["methods"].values())
    enn = ENN.load(tmp_path / "enn.pt")
    assert enn.metadata["task"] == "mnist5k" and enn.actor_payload is not None
    gradcam = json.loads((tmp_path / "gradcam" / "gradcam.json").read_text())
    grids = sorted((tmp_path / "gradcam").glob("layer*.png"))  # one per layer, over training
    steps = sorted((tmp_path / "gradcam" / "steps").glob("*.png"))  # a layer at a snapshot
    assert len(grids) == enn.n_layers
    assert len(steps) == enn.n_layers * len(gradcam["snapshots"]) >= 2 * enn.n_layers
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in grids + steps)
    assert (tmp_path / "prune.json").is_file() and (tmp_path / "plots" / "prune.png").is_file()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))

    assert main(["report", str(tmp_path)]) == 0  # the report stage alone rewrites the page
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.html")


def test_a_wheel_install_finds_the_shipped_settings(tmp_path):
    """Without ``-e``, tasks/, agents/ and sweeps/ must come inside the wheel."""
    import zipfile

    root = Path(__file__).resolve().parent.parent
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path), str(root)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("gradinstructor-*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    for kind in ("tasks", "agents", "sweeps"):
        shipped = {p.name for p in (root / kind).glob("*.yaml")}
        inside = {p.name for p in (tmp_path / "site" / "gradinstructor" / "_settings" / kind)
                  .glob("*.yaml")}
        assert shipped and inside == shipped, kind
    probe = ("import gradinstructor.config as c; print(c.known_names('tasks')); "
             "print(c.settings_path('agents', 'ppo'))")
    found = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert found.returncode == 0, found.stderr[-2000:]
    assert "mnist5k" in found.stdout
    assert str(tmp_path / "site" / "gradinstructor" / "_settings" / "agents") in found.stdout
