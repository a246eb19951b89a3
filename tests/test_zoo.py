"""The zoo and its rankers: weight statistics, Kendall's tau, the supervised ENN."""

import numpy as np
import pytest
import torch

from gradinstructor.pipeline import shrink_task
from gradinstructor.render import weight_parameters
from gradinstructor.tasks import load_task
from gradinstructor.trainer import accuracy
from gradinstructor.zoo import (
    QUANTILES,
    Member,
    enn_tau,
    fit_supervised_enn,
    kendall_tau,
    make_zoo,
    member_model,
    stats_tau,
    weight_statistics,
)


@pytest.fixture(scope="module")
def small_task():
    return shrink_task(load_task("digits"), train=300, epochs=2)


@pytest.fixture(scope="module")
def zoo(small_task):
    return make_zoo(small_task, size=12, seed=0)


def test_kendall_tau_hand_computed():
    # pairs: (1,2) concordant, (1,3) concordant, (2,3) discordant -> (2 - 1) / 3
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 1, 1], [1, 2, 3]) == 0.0  # undefined tau counts as no skill


def test_weight_statistics_are_per_layer_moments_and_quantiles():
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    member = Member(weights=[w], biases=[], progress=0.5, final_test_acc=0.0,
                    final_val_acc=0.0, test_acc=0.0, settings={})
    feats = weight_statistics(member)
    assert len(feats) == 2 + len(QUANTILES) + 1
    assert feats[0] == pytest.approx(5.5)
    assert feats[1] == pytest.approx(np.var(np.arange(12), ddof=1))
    assert feats[2] == 0.0 and feats[2 + len(QUANTILES) - 1] == 11.0  # min and max
    assert feats[-1] == 0.5


def test_zoo_members_are_varied_and_reloadable(small_task, zoo):
    assert len(zoo.members) == 12
    assert len({m.settings["seed"] for m in zoo.members}) == 12
    assert len({round(m.progress, 3) for m in zoo.members}) > 1
    for member in zoo.members[:4]:
        model = member_model(small_task, member)
        for w, saved in zip(weight_parameters(model), member.weights):
            assert torch.equal(w, torch.nan_to_num(saved))
        if all(torch.isfinite(w).all() for w in member.weights):
            acc = accuracy(model, small_task.data.test_x, small_task.data.test_y)
            assert acc == pytest.approx(member.test_acc)


def test_zoo_is_reproducible(small_task):
    a = make_zoo(small_task, size=3, seed=5)
    b = make_zoo(small_task, size=3, seed=5)
    assert [m.final_test_acc for m in a.members] == [m.final_test_acc for m in b.members]


def test_split_is_a_partition(zoo):
    train, test = zoo.split(0.5, seed=1)
    ids = [id(m) for m in train.members + test.members]
    assert sorted(ids) == sorted(id(m) for m in zoo.members)
    assert len(train.members) == 6


def test_rankers_return_a_tau(small_task, zoo):
    train, test = zoo.split(0.5)
    tau = stats_tau(train, test)
    assert -1.0 <= tau <= 1.0
    enn = fit_supervised_enn(small_task, train, epochs=30)
    assert -1.0 <= enn_tau(enn, small_task, test) <= 1.0


def test_supervised_enn_fits_its_training_zoo(small_task, zoo):
    from gradinstructor.render import render_weights

    def mse(enn):
        with torch.no_grad():
            images = [torch.stack(p) for p in zip(*[
                render_weights(member_model(small_task, m)) for m in zoo.members])]
            progress = torch.tensor([m.progress for m in zoo.members])
            pred = enn(images, progress)
        return float(((pred - torch.tensor(zoo.targets()).float()) ** 2).mean())

    untrained = fit_supervised_enn(small_task, zoo, epochs=0)
    trained = fit_supervised_enn(small_task, zoo, epochs=150)
    assert mse(trained) < 0.5 * mse(untrained)


def test_zoo_size_must_allow_ranking(small_task):
    with pytest.raises(ValueError, match="size must be at least 2"):
        make_zoo(small_task, size=1)


def test_zoo_round_trips_through_a_weights_only_file(tmp_path, zoo):
    path = zoo.save(tmp_path / "zoo.pt")
    loaded = type(zoo).load(path)
    assert loaded.task_name == zoo.task_name and len(loaded.members) == len(zoo.members)
    for a, b in zip(loaded.members, zoo.members):
        assert a.settings == b.settings and a.final_test_acc == b.final_test_acc
        assert all(torch.equal(x, y) for x, y in zip(a.weights, b.weights))
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temporary file, then renamed


def test_loading_something_else_than_a_zoo_says_so(tmp_path):
    from gradinstructor.zoo import Zoo

    with pytest.raises(FileNotFoundError, match="gradinstructor zoo"):
        Zoo.load(tmp_path / "none.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a zoo of format"):
        Zoo.load(tmp_path / "other.pt")


def test_rank_zoo_scores_every_ranker_on_the_held_out_half(small_task, zoo):
    from gradinstructor.enn import ENN, ENNConfig
    from gradinstructor.render import layer_shapes
    from gradinstructor.zoo import rank_zoo

    enn = ENN(ENNConfig(layer_shapes=layer_shapes(small_task.build_model(seed=0))))
    result = rank_zoo(small_task, zoo, enn, seed=0)
    _, held_out = zoo.split(0.5, seed=0)
    assert result["held_out"] == len(held_out.members) == 6
    assert result["enn_tau"] == pytest.approx(enn_tau(enn, small_task, held_out))
    assert set(result) >= {"stats_tau", "supervised_enn_tau"}
    with pytest.raises(ValueError, match="--task"):
        rank_zoo(load_task("mnist5k"), zoo)


def test_zoo_command_writes_the_zoo_and_prints_the_taus(tmp_path, capsys):
    import json

    from gradinstructor.cli import main

    task_file = tmp_path / "tiny.yaml"
    task_file.write_text("name: tiny\ndataset: digits\nsplit: {train: 200, val: 100, test: 100}\n"
                         "hidden: [16]\nepochs: 1\nsegments: 2\n")
    assert main(["zoo", "--task", str(task_file), "--size", "6", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["zoo_size"] == 6 and "enn_tau" not in last  # no ENN in the folder
    assert json.loads((tmp_path / "zoo_ranking.json").read_text()) == last
    assert main(["zoo", "--task", str(task_file), "--reuse", "--out", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == last
