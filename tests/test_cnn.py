"""Convolutional target networks: the mnist5k-cnn task, an ENN trained on it, the comparison."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import yaml

from gradinstructor.cli import main
from gradinstructor.compare import METHODS
from gradinstructor.config import SettingsError
from gradinstructor.enn import ENN, CheckpointError
from gradinstructor.render import layer_shapes, render_matrix, render_weights
from gradinstructor.tasks import build_cnn, load_task

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cnn_task():
    return load_task("mnist5k-cnn")


def test_the_cnn_task_builds_a_seeded_cnn_on_the_mnist_images(cnn_task):
    model = cnn_task.build_model(seed=3)
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8] and convs[0].stride == (2, 2)
    assert layer_shapes(model) == [(4, 9), (8, 36), (32, 288), (10, 32)]
    assert model(cnn_task.data.train_x[:5]).shape == (5, 10)
    again = cnn_task.build_model(seed=3)
    other = cnn_task.build_model(seed=4)
    assert torch.equal(convs[0].weight, again[1].weight)
    assert not torch.equal(convs[0].weight, other[1].weight)
    he = cnn_task.build_model(seed=3, init="he")
    assert float(he[1].bias.detach().abs().sum()) == 0.0  # He init zeroes the biases
    # same split as mnist5k
    assert torch.equal(cnn_task.data.test_y, load_task("mnist5k").data.test_y)


def test_the_enn_reads_each_kernel_as_out_by_in_times_k_times_k(cnn_task):
    model = cnn_task.build_model(seed=0)
    kernel = model[3].weight  # (8, 4, 3, 3)
    image = render_weights(model)[1]
    # row o of the matrix is kernel[o] flattened in (in, kh, kw) order
    torch.testing.assert_close(image, render_matrix(kernel.reshape(8, 36)))
    assert not torch.allclose(image, render_matrix(kernel.permute(0, 2, 3, 1).reshape(8, 36)))
    enn = ENN(layer_shapes=layer_shapes(model))
    score = enn.score(model, 0.5)
    (grad,) = torch.autograd.grad(score, [kernel])
    assert grad.shape == kernel.shape and float(grad.abs().sum()) > 0


def test_a_cnn_too_deep_for_its_image_is_refused():
    with pytest.raises(ValueError, match="too small"):
        build_cnn(8, [4, 4, 4], kernel=3, stride=2)


def test_bad_cnn_settings_name_the_key(tmp_path):
    data = yaml.safe_load((REPO / "tasks" / "mnist5k-cnn.yaml").read_text())
    for key, value, word in [("arch", "rnn", "arch"), ("conv", [], "conv"),
                             ("kernel", 0, "kernel")]:
        path = tmp_path / f"bad-{key}.yaml"
        path.write_text(yaml.safe_dump({**data, key: value}))
        with pytest.raises(SettingsError, match=word):
            load_task(str(path))
    path = tmp_path / "mlp-with-conv.yaml"
    mlp = yaml.safe_load((REPO / "tasks" / "mnist5k.yaml").read_text())
    path.write_text(yaml.safe_dump({**mlp, "conv": [4]}))
    with pytest.raises(SettingsError, match="conv"):
        load_task(str(path))


def test_train_enn_and_compare_on_the_cnn_task_end_to_end(tmp_path, capsys, record_wall_time):
    """The CLI trains an ENN on a small budget of the CNN task, then compares every method."""
    data = yaml.safe_load((REPO / "tasks" / "mnist5k-cnn.yaml").read_text())
    data.update(name="mnist5k-cnn-tiny", split={"train": 256, "val": 128, "test": 128},
                epochs=2, segments=2)
    task_file = tmp_path / "task.yaml"
    task_file.write_text(yaml.safe_dump(data))
    agent = yaml.safe_load((REPO / "agents" / "ppo.yaml").read_text())
    agent.update(name="ppo-tiny", n_envs=2, n_steps=4, batch_size=8, n_epochs=2)
    agent_file = tmp_path / "agent.yaml"
    agent_file.write_text(yaml.safe_dump(agent))
    out = tmp_path / "run"
    start = time.perf_counter()
    assert main(["train-enn", "--task", str(task_file), "--agent", str(agent_file),
                 "--timesteps", "16", "--out", str(out), "--no-progress"]) == 0
    enn = ENN.load(out / "enn.pt")
    assert enn.config.layer_shapes == [(4, 9), (8, 36), (32, 288), (10, 32)]
    assert enn.metadata["task"] == "mnist5k-cnn-tiny" and enn.actor_payload
    assert main(["compare", "--task", str(task_file), "--seeds", "2", "--out", str(out),
                 "--no-progress"]) == 0
    record_wall_time("cnn_train_enn_and_compare", time.perf_counter() - start)
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == set(METHODS)
    for method in METHODS:
        runs = results["methods"][method]["runs"]
        assert len(runs) == 2 and all(0.0 <= r["test_acc"] <= 1.0 for r in runs)
        assert results["methods"][method]["summary"]
    table = capsys.readouterr().out
    for method in METHODS:
        assert method in table
    # the ENN trained on the CNN refuses the MLP, naming both architectures
    with pytest.raises(CheckpointError, match=r"\(4, 9\).*\(100, 784\)"):
        enn.check_model(load_task("mnist5k").build_model(seed=0))
