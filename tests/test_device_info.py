"""--device (auto, cpu, cuda) and ``gradinstructor info CHECKPOINT``.

This machine may have no GPU (and conftest hides CUDA from the suite), so the code
paths behind ``--device`` are checked for following their inputs' device on torch's
``meta`` device: a second device on any machine, which has shapes but no data. A
tensor left on the CPU among meta tensors fails there as it would among CUDA ones.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gradinstructor.cli import build_parser, main
from gradinstructor.device import resolve_device
from gradinstructor.enn import ENN, cpu_tensors
from gradinstructor.info import checkpoint_info
from gradinstructor.tasks import Task, load_task

REPO = Path(__file__).resolve().parents[1]
NO_CUDA = not torch.cuda.is_available()
META = torch.device("meta")
# every command that trains or evaluates networks, with the arguments it needs besides options
DEVICE_COMMANDS = {"train-enn": [], "compare": [], "explain": [], "zoo": [], "demo": [],
                   "sweep": ["strength"]}


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
    for command, extra in DEVICE_COMMANDS.items():
        with pytest.raises(SystemExit) as exit_:
            main([command, *extra, "--device", "cuda", "--out", str(tmp_path / "run")])
        assert exit_.value.code == 2
        lines = _error_lines(capsys)  # argparse prints the usage above the one error line
        assert len(lines) == 1
        assert lines[0].startswith(f"gradinstructor {command}: error: argument --device: "
                                   "device 'cuda' was asked for, but CUDA is not available")
    assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_the_python_api_refuses_cuda_without_cuda_before_writing_anything(tmp_path):
    from gradinstructor.pipeline import demo
    from gradinstructor.search import load_sweep, plan_trial, run_sweep, run_trial

    with pytest.raises(ValueError, match=r"'cuda' was asked for, but CUDA is not available"):
        demo(tmp_path / "demo", quick=True, tracker_kind="none", device="cuda")
    with pytest.raises(ValueError, match=r"'cuda:1' was asked for"):
        run_sweep(load_sweep("strength"), trials=1, out=tmp_path / "sweep", tracker="none",
                  progress_bar=False, device="cuda:1")
    with pytest.raises(ValueError, match=r"'cuda' was asked for"):
        run_trial(plan_trial({"task": "digits", "timesteps": 8}), device="cuda")
    assert list(tmp_path.iterdir()) == []  # no run folder, no study storage


def test_the_default_device_is_auto_everywhere_and_the_cpu_here():
    from gradinstructor import pipeline
    from gradinstructor.search import prepare_sweep, run_sweep, run_trial, run_wandb_sweep
    from gradinstructor.search.study import SweepRunner
    from gradinstructor.search.trial import trial_task

    # conftest hides CUDA before torch starts, so "auto" is the CPU even on a GPU machine
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and not torch.cuda.is_available()
    task = load_task("digits")
    assert task.device == resolve_device("auto") == torch.device("cpu")
    assert task.data.train_x.device.type == "cpu"
    for function in (load_task, Task.to, resolve_device, pipeline.demo, run_sweep,
                     prepare_sweep, SweepRunner.__init__, run_trial, trial_task,
                     run_wandb_sweep):
        default = inspect.signature(function).parameters["device"].default
        assert default == "auto", function.__qualname__
    parser = build_parser()
    for command, extra in DEVICE_COMMANDS.items():
        assert parser.parse_args([command, *extra]).device == "auto", command
        assert parser.parse_args([command, *extra, "--device", "cpu"]).device == "cpu"
    for argv in (["info", "enn.pt"], ["report", "runs/x"]):  # nothing to put on a device
        assert not hasattr(parser.parse_args(argv), "device")


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


def test_train_enn_compare_explain_zoo_and_info_with_device_options(tmp_path, capsys):
    task_file, agent_file = _tiny_files(tmp_path)
    out = tmp_path / "run"
    assert main(["train-enn", "--task", str(task_file), "--agent", str(agent_file),
                 "--timesteps", "8", "--out", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    assert main(["compare", "--task", str(task_file), "--seeds", "1", "--out", str(out),
                 "--methods", "plain,enn", "--device", "auto", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"plain", "enn"}
    # the checkpoint loads with any map_location, and without one: it holds CPU tensors
    for where in ("cpu", torch.device("cpu"), lambda storage, loc: storage):
        enn = ENN.load(out / "enn.pt", map_location=where)
        assert all(p.device.type == "cpu" for p in enn.parameters())
    raw = torch.load(out / "enn.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in raw["state_dict"].values())
    assert all(t.device.type == "cpu" for t in raw["actor"]["state_dict"].values())

    # explain (with the prune check) and zoo take --device too, and rank with RUN/enn.pt
    assert main(["explain", "--task", str(task_file), "--out", str(out), "--device", "cpu",
                 "--prune", "--draws", "2", "--no-progress"]) == 0
    gradcam = json.loads((out / "gradcam" / "gradcam.json").read_text())
    assert [s["label"] for s in gradcam["snapshots"]] == ["init", "25%", "50%", "trained"]
    assert json.loads((out / "prune.json").read_text())["draws"] == 2
    capsys.readouterr()
    assert main(["zoo", "--task", str(task_file), "--size", "4", "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    ranking = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ranking["zoo_size"] == 4 and "enn_tau" in ranking
    zoo = torch.load(out / "zoo.pt", weights_only=True)  # no map_location: CPU tensors
    assert all(t.device.type == "cpu" for m in zoo["members"] for t in m["weights"] + m["biases"])
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


# --------------------------------------------------------------------------- device-following


def _meta_task(task: Task) -> Task:
    """``task`` with its data on the meta device (Task.to accepts only cpu and cuda)."""
    return dataclasses.replace(task, data=task.data.to(META), device=META)


def test_gradcam_runs_on_the_models_device_and_takes_the_enn_there(tiny_mlp, tiny_enn):
    from gradinstructor.explain import gradcam, gradcam_tensors

    on_cpu = gradcam(tiny_enn, tiny_mlp, progress=0.5)
    # the progress fed to the ENN's head must follow the images: a CPU one fails on meta
    maps = gradcam_tensors(tiny_enn, tiny_mlp.to(META), progress=0.5)
    assert all(p.device == META for p in tiny_enn.parameters())
    assert len(maps) == len(on_cpu) == 2
    for (weight, relevance, cam), cpu_map in zip(maps, on_cpu):
        assert weight.device == relevance.device == cam.device == META
        assert tuple(relevance.shape) == cpu_map.relevance.shape == cpu_map.weight.shape
        assert tuple(cam.shape) == cpu_map.image_relevance.shape


def test_masks_are_made_on_the_device_of_the_weights_they_mask(tiny_mlp):
    from gradinstructor.prune import (
        apply_masks,
        gradcam_masks,
        make_masks,
        n_kept,
        random_masks,
    )

    weights = [w.detach() for w in tiny_mlp.to(META).parameters() if w.dim() == 2]
    relevances = [np.random.default_rng(0).random(tuple(w.shape)) for w in weights]
    cpu_weights = [torch.ones(w.shape) for w in weights]
    for masks in (random_masks(weights, 0.5, seed=1),
                  make_masks("random", weights, None, 0.5, seed=1),
                  make_masks("gradcam", weights, relevances, 0.5, seed=1),
                  gradcam_masks(relevances, 0.5, seed=1, device=META)):
        assert [m.device for m in masks] == [META, META]
        assert [m.dtype for m in masks] == [torch.bool, torch.bool]
        assert [m.shape for m in masks] == [w.shape for w in weights]
    # the draw is made on the CPU: the same masks whatever the weights' device
    cpu = random_masks(cpu_weights, 0.5, seed=1)
    assert [m.device.type for m in cpu] == ["cpu", "cpu"]
    assert [int(m.sum()) for m in cpu] == [n_kept(30, 0.5), n_kept(15, 0.5)]
    masked = apply_masks(tiny_mlp, cpu)  # CPU masks on a meta model go to the meta weights
    assert all(p.device == META for p in masked.parameters())
    with pytest.raises(ValueError, match="1 relevance maps for 2 weight matrices"):
        make_masks("gradcam", weights, relevances[:1], 0.5)


def test_the_supervised_enn_trains_on_the_tasks_device_and_the_zoo_stays_on_the_cpu(
        digits_task):
    from gradinstructor.pipeline import shrink_task
    from gradinstructor.zoo import fit_supervised_enn, make_zoo, member_model

    task = shrink_task(digits_task, train=64, epochs=1)
    task = dataclasses.replace(task, config=dataclasses.replace(task.config, hidden=[8]))
    zoo = make_zoo(task, size=2, seed=0)
    assert all(t.device.type == "cpu" for m in zoo.members for t in m.weights + m.biases)
    meta = _meta_task(task)
    assert all(p.device == META for p in member_model(meta, zoo.members[0]).parameters())
    # its images live on the task's device: an ENN or targets left on the CPU fail there
    enn = fit_supervised_enn(meta, zoo, epochs=2)
    assert all(p.device == META for p in enn.parameters())


def test_cpu_tensors_moves_every_tensor_of_a_nested_payload():
    weight = torch.ones(2, requires_grad=True)
    payload = {"a": [weight, (torch.zeros(1), 3)], "b": {"c": "text", "d": None}}
    out = cpu_tensors(payload)
    assert out["b"] == {"c": "text", "d": None} and out["a"][1][1] == 3
    assert isinstance(out["a"], list) and isinstance(out["a"][1], tuple)
    assert torch.equal(out["a"][0], weight) and not out["a"][0].requires_grad
    assert cpu_tensors(None) is None


def test_enn_load_puts_the_enn_where_its_tensors_are_mapped(tiny_enn, tmp_path):
    path = tiny_enn.save(tmp_path / "enn.pt", actor={"state_dict": {"w": torch.ones(2)}})
    enn = ENN.load(path, map_location=META)  # as --device puts it on the task's device
    assert all(t.device == META for t in [*enn.parameters(), *enn.buffers()])
    assert ENN.load(path, map_location=torch.device("cpu")).layer_embedding.device.type == "cpu"
    raw = torch.load(path, weights_only=True)  # written as CPU tensors: no map_location needed
    assert all(t.device.type == "cpu" for t in raw["state_dict"].values())
