"""An ENN trained on several widths of one depth reads any width; other depths are refused."""

from __future__ import annotations

import pytest
import torch

from gradinstructor.enn import ENN, CheckpointError, ENNConfig, config_for_models
from gradinstructor.render import layer_shapes, render_weights
from gradinstructor.tasks import build_cnn, build_mlp


def _train_on_widths(widths, steps=30):
    """A few supervised steps: the ENN learns to score networks by their weight scale."""
    models = [build_mlp([64, w, w, 10], seed=i) for i, w in enumerate(widths)]
    torch.manual_seed(0)
    enn = ENN(config_for_models(models, width=4, embed=2, hidden=8))
    opt = torch.optim.Adam(enn.parameters(), lr=0.01)
    scales = [0.5, 1.0, 1.5]
    for _ in range(steps):
        loss = 0.0
        for model in models:
            for scale in scales:
                images = [img[None] * scale for img in render_weights(model, enn.config.ratio)]
                pred = enn(images, torch.tensor([0.5]))
                loss = loss + (pred - scale / 2) ** 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    return enn, models


def _reference_score(enn: ENN, model, progress: float) -> torch.Tensor:
    """The score from one trunk call per layer (no shared canvas)."""
    images = [img[None] for img in render_weights(model, enn.config.ratio)]
    features = [enn.layer_features(img, i) for i, img in enumerate(images)]
    return enn.head_score(features, torch.tensor([progress]))[0]


def test_an_enn_trained_on_several_widths_accepts_any_width_of_that_depth(tmp_path):
    enn, _ = _train_on_widths([8, 16])
    assert enn.config.any_width and enn.config.layer_kinds == ["linear"] * 3
    path = enn.save(tmp_path / "enn.pt", trained_widths=[8, 16])
    assert torch.load(path, weights_only=True)["format_version"] == 2
    loaded = ENN.load(path, map_location="cpu")
    assert loaded.config.any_width and loaded.metadata["trained_widths"] == [8, 16]
    for width in (8, 16, 24, 5):
        model = build_mlp([64, width, width, 10], seed=7)
        score = loaded.score(model, 0.3)
        assert 0.0 < float(score.detach()) < 1.0
        torch.testing.assert_close(score, _reference_score(loaded, model, 0.3))
        (grad,) = torch.autograd.grad(score, [model[0].weight])
        assert float(grad.abs().sum()) > 0
    # it learnt something across widths: a larger weight scale scores higher, at a new width
    model = build_mlp([64, 24, 24, 10], seed=9)
    low = [img[None] * 0.5 for img in render_weights(model)]
    high = [img[None] * 1.5 for img in render_weights(model)]
    with torch.no_grad():
        assert float(loaded(high, torch.tensor([0.5]))) > float(loaded(low, torch.tensor([0.5])))


def test_it_refuses_another_depth_or_other_layer_kinds_naming_both():
    enn, _ = _train_on_widths([8, 16], steps=1)
    with pytest.raises(CheckpointError, match=r"reads 3 weight matrices \[\(8, 64\).*"
                                              r"has 2: \[\(12, 64\), \(10, 12\)\]"):
        enn.check_model(build_mlp([64, 12, 10]))
    cnn = build_cnn(8, [4], kernel=3, stride=1, hidden=[16])  # 3 matrices, the first a conv
    with pytest.raises(CheckpointError, match=r"\['linear', 'linear', 'linear'\].*"
                                              r"\['conv', 'linear', 'linear'\]"):
        enn.check_model(cnn)


def test_a_single_width_enn_still_refuses_another_width_naming_both(tmp_path):
    model = build_mlp([64, 16, 16, 10])
    enn = ENN(config_for_models([model, build_mlp([64, 16, 16, 10], seed=1)]))
    assert not enn.config.any_width
    plain = ENN(layer_shapes=layer_shapes(model))
    for i, one in enumerate([enn, plain]):
        loaded = ENN.load(one.save(tmp_path / f"enn{i}.pt"))
        with pytest.raises(CheckpointError, match=r"\(16, 64\).*\(24, 64\)"):
            loaded.check_model(build_mlp([64, 24, 24, 10]))
    # an ENN without the new fields is written in format 1, which older versions read
    payload = torch.load(tmp_path / "enn1.pt", weights_only=True)
    assert payload["format_version"] == 1 and "any_width" not in payload["config"]


def test_config_for_models_refuses_mixed_depths():
    with pytest.raises(ValueError, match="one depth"):
        config_for_models([build_mlp([64, 8, 10]), build_mlp([64, 8, 8, 10])])
    with pytest.raises(ValueError, match="layer_kinds"):
        ENNConfig(layer_shapes=[(8, 64)], layer_kinds=["dense"])


def test_a_width_free_enn_refuses_a_malformed_image():
    enn, _ = _train_on_widths([8, 16], steps=1)
    images = [torch.zeros(1, 3, 4, 4)] * 3
    with pytest.raises(ValueError, match="layer image 0 must have shape"):
        enn(images, torch.tensor([0.0]))
