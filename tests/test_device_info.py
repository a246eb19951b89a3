"""--device (auto, cpu, cuda) and ``gradinstructor info CHECKPOINT``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from gradinstructor.cli import main
from gradinstructor.device import resolve_device
from gradinstructor.enn import ENN
from gradinstructor.info import checkpoint_info
from gradinstructor.tasks import load_task

REPO = Path(__file__).resolve().parents[1]
NO_CUDA = not torch.cuda.is_available()


def _tiny_files(tmp_path: Path) -> tuple[Path, Path]:
    task = yaml.safe_load((REPO / "tasks" / "digits.yaml").read_text())
    task.update(name="digits-tiny", split={"train": 128, "val": 64, "test": 64}, epochs=2,
                segments=2, hidden=[16])
    agent = yaml.safe_load((REPO / "agents" / "ppo.yaml").read_text())
    agent.update(name="ppo-tiny", n_envs=2, n_steps=4, batch_size=8, n_epochs=2)
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(agent))
    return tmp_path / "task.yaml", tmp_path / "agent.yaml"


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err.strip().splitlines()
    return [line for line in err if "error" in line]


def test_auto_and_cpu_resolve_to_the_cpu_here():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if not NO_CUDA else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    with pytest.raises(ValueError, match="'tpu'"):
        resolve_device("tpu")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_cuda_without_cuda_fails_at_once_naming_the_value(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"'cuda' was asked for, but CUDA is not available"):
        load_task("digits", device="cuda")
    with pytest.raises(ValueError, match="'cuda:0'"):
        resolve_device("cuda:0")
    for command in ("compare", "train-enn"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--device", "cuda", "--out", str(tmp_path / "run")])
        assert exit_.value.code == 2
        lines = _error_lines(capsys)  # argparse prints the usage above the one error line
        assert len(lines) == 1
        assert lines[0].startswith(f"gradinstructor {command}: error: argument --device: "
                                   "device 'cuda' was asked for, but CUDA is not available")
    assert not (tmp_path / "run").exists()  # nothing was started


def test_a_task_and_its_networks_live_on_the_chosen_device():
    task = load_task("digits", device="auto")
    want = resolve_device("auto")
    assert task.device == want and task.data.train_x.device.type == want.type
    model = task.build_model(seed=0)
    assert all(p.device.type == want.type for p in model.parameters())
    cpu = task.to("cpu")
    assert cpu.device.type == "cpu" and cpu.data.test_y.device.type == "cpu"
    # the same initialisation whatever the device
    torch.testing.assert_close(cpu.build_model(seed=0)[0].weight.cpu(),
                               load_task("digits").build_model(seed=0)[0].weight)


def test_train_enn_compare_and_info_with_device_options(tmp_path, capsys):
    task_file, agent_file = _tiny_files(tmp_path)
    out = tmp_path / "run"
    assert main(["train-enn", "--task", str(task_file), "--agent", str(agent_file),
                 "--timesteps", "8", "--out", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    assert main(["compare", "--task", str(task_file), "--seeds", "1", "--out", str(out),
                 "--methods", "plain,enn", "--device", "auto", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"plain", "enn"}
    # the checkpoint loads with any map_location
    for where in ("cpu", torch.device("cpu"), lambda storage, loc: storage):
        enn = ENN.load(out / "enn.pt", map_location=where)
        assert all(p.device.type == "cpu" for p in enn.parameters())
    capsys.readouterr()

    assert main(["info", str(out / "enn.pt")]) == 0
    text = capsys.readouterr().out
    assert "task:              digits-tiny" in text
    assert "layer shapes:      16x64, 10x16" in text
    assert "ratio:             0.15" in text
    assert "gradinstructor 0.1.0 (format version 1)" in text
    assert "timesteps played:" in text and "final_mean_val_acc:" in text
    info = checkpoint_info(out / "enn.pt")
    assert info["training"]["num_timesteps"] >= 8 and info["strength_schedule"] is True
    assert info["layer_shapes"] == [[16, 64], [10, 16]]


def test_info_on_a_missing_or_invalid_file_is_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gradinstructor info: error: checkpoint '{tmp_path / 'nope.pt'}' "
                   "does not exist"]
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gradinstructor info: error: ")
    assert "not a checkpoint this version can read" in err[0]
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else", "format_version": 1}, other)
    assert main(["info", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gradinstructor info: error: {other} is not a gradinstructor-enn checkpoint"]


def test_info_on_a_width_free_enn_without_training_metadata(tmp_path, capsys):
    from gradinstructor.enn import config_for_models
    from gradinstructor.tasks import build_mlp

    enn = ENN(config_for_models([build_mlp([64, 8, 10]), build_mlp([64, 16, 10])]))
    path = enn.save(tmp_path / "enn.pt", note="hand-made")
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "8x64, 10x8 (linear, linear); any width of this depth" in text
    assert "(format version 2)" in text
    assert "not recorded (not trained by train-enn)" in text
    assert "note:" in text and "hand-made" in text
