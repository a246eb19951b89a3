"""The ENN: score range and shape, checkpoints and the errors of a wrong checkpoint."""

from __future__ import annotations

import os

import pytest
import torch

from gradinstructor.enn import ENN, FORMAT_VERSION, CheckpointError, ENNConfig
from gradinstructor.render import CHANNELS, layer_shapes
from gradinstructor.tasks import build_mlp
from gradinstructor.trainer import GradInstructor


@pytest.fixture
def net():
    return build_mlp([64, 32, 10], seed=0)


@pytest.fixture
def enn(net):
    torch.manual_seed(0)
    return ENN(ENNConfig(layer_shapes=layer_shapes(net)))


def _random_images(enn: ENN, batch: int, scale: float) -> list[torch.Tensor]:
    return [torch.randn(batch, CHANNELS, h, w) * scale for h, w in enn.config.image_shapes]


@pytest.mark.parametrize("scale", [0.0, 1.0, 1e4])
def test_scores_are_in_0_1_with_one_per_network(enn, scale):
    torch.manual_seed(1)
    scores = enn(_random_images(enn, 5, scale), torch.rand(5))

    assert scores.shape == (5,)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_score_of_one_model_is_a_scalar_in_0_1(enn, net):
    score = enn.score(net, progress=0.5)
    assert score.shape == () and 0.0 <= score.item() <= 1.0


def test_observation_form_matches_the_image_form(enn):
    images = _random_images(enn, 3, 1.0)
    progress = torch.rand(3)
    obs = {f"layer{i}": img.reshape(3, -1) for i, img in enumerate(images)}
    obs["progress"] = progress[:, None]

    torch.testing.assert_close(enn.forward_obs(obs), enn(images, progress)[:, None])


def test_wrong_number_of_images_is_refused(enn):
    with pytest.raises(ValueError, match="reads 2 layer images, but got 1"):
        enn(_random_images(enn, 2, 1.0)[:1], torch.zeros(2))


def test_save_load_round_trip_keeps_outputs_and_metadata(enn, net, tmp_path):
    actor = {"n_layers": 2, "hidden": 4, "max_strength": 30.0, "ratio": 0.15,
             "state_dict": {"w": torch.ones(2)}}
    path = enn.save(tmp_path / "sub" / "enn.pt", actor=actor, task="digits", steps=80)

    loaded = ENN.load(path)

    assert path == tmp_path / "sub" / "enn.pt" and path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name != "enn.pt"]  # no temporary left
    assert loaded.metadata == {"task": "digits", "steps": 80}
    assert loaded.config == enn.config
    assert loaded.actor_payload["max_strength"] == 30.0
    torch.testing.assert_close(loaded.actor_payload["state_dict"]["w"], torch.ones(2))
    images, progress = _random_images(enn, 4, 1.0), torch.rand(4)
    assert torch.equal(loaded(images, progress), enn(images, progress))
    assert torch.equal(loaded.score(net, 0.7), enn.score(net, 0.7))
    for key, value in enn.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_round_trip_keeps_a_non_default_architecture(tmp_path):
    config = ENNConfig(layer_shapes=[(5, 6), (3, 5)], ratio=0.5, width=3, embed=2, hidden=7)
    ENN(config).save(tmp_path / "enn.pt")
    assert ENN.load(tmp_path / "enn.pt").config == config


@pytest.mark.parametrize(
    ("sizes", "match"),
    [
        ([64, 32, 16, 10], r"reads 2 weight matrices .* has 3"),  # layer count
        ([64, 20, 10], r"trained on layer shapes \[\(32, 64\), \(10, 32\)\].*\(20, 64\)"),
        ([100, 32, 10], r"\(32, 100\)"),  # same count, other input width
    ],
)
def test_checkpoint_for_another_architecture_is_refused(enn, tmp_path, sizes, match):
    enn.save(tmp_path / "enn.pt")
    loaded = ENN.load(tmp_path / "enn.pt")
    other = build_mlp(sizes)

    with pytest.raises(CheckpointError, match=match) as err:
        GradInstructor(other, loaded, strength=1.0, total_steps=10)
    assert "train" in str(err.value)  # says what to do
    with pytest.raises(CheckpointError):
        loaded.score(other)


def test_checkpoint_at_another_ratio_is_refused(enn, net):
    with pytest.raises(CheckpointError, match=r"ratio 0\.15.*ratio=0\.3"):
        GradInstructor(net, enn, strength=1.0, total_steps=10, ratio=0.3)
    GradInstructor(net, enn, strength=1.0, total_steps=10, ratio=0.15)  # the same ratio is fine


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ENN.load(tmp_path / "nothing.pt")


def test_a_text_file_is_refused(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a checkpoint this version can read"):
        ENN.load(path)


def test_another_torch_file_is_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="is not a gradinstructor-enn checkpoint"):
        ENN.load(tmp_path / "other.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="is not a gradinstructor-enn checkpoint"):
        ENN.load(tmp_path / "list.pt")


class _MakesADirectoryWhenUnpickled:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_loading_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / "was-executed"
    torch.save({"format": "gradinstructor-enn", "format_version": FORMAT_VERSION,
                "payload": _MakesADirectoryWhenUnpickled(str(marker))}, tmp_path / "evil.pt")

    with pytest.raises(CheckpointError):
        ENN.load(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, "1", None])
def test_a_newer_or_unknown_format_version_is_refused(enn, tmp_path, version):
    enn.save(tmp_path / "enn.pt")
    payload = torch.load(tmp_path / "enn.pt", weights_only=True)
    payload["format_version"] = version
    torch.save(payload, tmp_path / "enn.pt")

    with pytest.raises(CheckpointError, match="format version .*upgrade gradinstructor"):
        ENN.load(tmp_path / "enn.pt")


@pytest.mark.parametrize("key", ["width", "embed", "hidden"])
def test_bad_architecture_values_are_refused(key):
    with pytest.raises(ValueError, match=f"ENN {key} must be at least 1, but got 0"):
        ENNConfig(layer_shapes=[(5, 6)], **{key: 0})


def test_no_layer_shapes_is_refused():
    with pytest.raises(ValueError, match="at least one weight matrix"):
        ENNConfig(layer_shapes=[])
