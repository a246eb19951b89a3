"""Explanation: Grad-CAM on the ENN, the report of a run folder, and the lottery-ticket check.

Every test drives real captum and torch on hand-built tiny networks: the ENN whose
score rests on one known region is built weight by weight, so where Grad-CAM must
point is known before it runs.
"""

from __future__ import annotations

import copy
import html
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from gradinstructor.cli import main
from gradinstructor.compare import METHODS
from gradinstructor.enn import ENN, N_STATS, ENNConfig
from gradinstructor.explain import (
    DEFAULT_LAYER,
    conv_layer_names,
    enn_scores,
    gradcam,
    gradcam_series,
    layer_name,
    save_series,
    train_with_snapshots,
)
from gradinstructor.pipeline import stage_compare, stage_explain
from gradinstructor.prune import (
    CASES,
    CRITERIA,
    SPARSITIES,
    apply_masks,
    findings,
    fit_plain,
    format_prune_table,
    make_masks,
    n_kept,
    plot_prune,
    prune_check,
    table_rows,
    top_mask,
    train_masked,
)
from gradinstructor.render import layer_shapes, weight_matrices, weight_parameters
from gradinstructor.report import PAGE_NAME, missing_parts, write_report
from gradinstructor.tasks import build_mlp
from gradinstructor.trainer import accuracy, fit_target

PNG = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- Grad-CAM shapes


def _pooling_bins(n: int, bins: int) -> np.ndarray:
    """(bins, n): True where adaptive average pooling puts item j into bin i."""
    i = np.arange(bins)[:, None]
    j = np.arange(n)[None]
    return (j >= (i * n) // bins) & (j < -(-((i + 1) * n) // bins))


@pytest.mark.parametrize("layer", [None, "trunk.conv1", "trunk.conv2"])
def test_gradcam_maps_have_each_weight_matrix_shape(tiny_mlp, tiny_enn, layer):
    maps = gradcam(tiny_enn, tiny_mlp, progress=0.3, layer=layer)

    weights = weight_matrices(tiny_mlp)
    assert [m.index for m in maps] == list(range(len(weights)))
    for m, w, image_shape in zip(maps, weights, tiny_enn.config.image_shapes):
        assert m.relevance.shape == tuple(w.shape) == m.weight.shape
        assert m.image_relevance.shape == tuple(image_shape)
        assert np.array_equal(m.weight, w.detach().numpy())
        assert np.isfinite(m.relevance).all() and (m.relevance >= 0).all()  # ReLU'd Grad-CAM


def test_gradcam_on_the_mnist_mlp_maps_each_weight_to_the_block_it_was_pooled_into():
    """100x784 at ratio 0.15 is a 15x118 image: the sides are not multiples of each other."""
    torch.manual_seed(1)
    net = build_mlp([784, 100, 100, 10], seed=1)
    enn = ENN(ENNConfig(layer_shapes=layer_shapes(net), width=4, embed=2, hidden=8))

    maps = gradcam(enn, net, progress=0.5)

    assert [m.relevance.shape for m in maps] == [(100, 784), (100, 100), (10, 100)]
    assert [m.image_relevance.shape for m in maps] == [(15, 118), (15, 15), (4, 15)]
    assert any(m.relevance.max() > 0 for m in maps)  # a random ENN still looks somewhere
    for m in maps:
        rows, cols = m.weight.shape
        height, width = m.image_relevance.shape
        in_row_bin = _pooling_bins(rows, height)  # (H, rows): bin i holds row r
        in_col_bin = _pooling_bins(cols, width)
        # every weight carries the relevance of one image block whose pooling window holds it
        for r in range(rows):
            for c in range(0, cols, 7):
                i = np.flatnonzero(in_row_bin[:, r])
                j = np.flatnonzero(in_col_bin[:, c])
                assert m.relevance[r, c] in m.image_relevance[np.ix_(i, j)]


# --------------------------------------------------------------------------- a known region

SHAPES_MLP = [60, 40, 40]  # weight matrices (40, 60) and (40, 40); images (20, 30), (20, 20)
RATIO = 0.5  # 2x2 weights per image pixel
# In weight coordinates, aligned to the 2x2 blocks; 3+ image pixels apart.
POSITIVE = (slice(24, 32), slice(8, 20))
NEGATIVE = (slice(4, 12), slice(28, 40))
REACH = 4  # two 3x3 convolutions spread a block by 2 image pixels, 4 weights


def _region_network(layer: int) -> torch.nn.Sequential:
    """Small noise everywhere; in weight matrix ``layer`` a +0.5 block and a -0.5 block.

    The other matrix gets large random weights, which the ENN below ignores.
    """
    net = build_mlp(SHAPES_MLP, seed=3)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for i, w in enumerate(weight_matrices(net)):
            if i == layer:
                w.copy_(0.01 * torch.randn(w.shape, generator=generator))
                w[POSITIVE] = 0.5
                w[NEGATIVE] = -0.5
            else:
                w.copy_(0.5 * torch.randn(w.shape, generator=generator))
    return net


def _region_enn(net: torch.nn.Module, layer: int) -> ENN:
    """An ENN whose score rises with the positive block mean of weight matrix ``layer`` only.

    conv1 reads only the block-mean channel, with positive 3x3 filters and a bias of
    -1, so after its ReLU only clearly positive regions survive (the noise and the
    negative block give 0); conv2 has positive filters and no bias; the head has one
    hidden unit with positive weights on ``layer``'s pooled trunk features and zero on
    everything else (statistics, embeddings, other layers, progress). The score then
    depends on the positive block and on the weights within the two convolutions' reach
    of it (2 image pixels), and on nothing else.
    """
    width, embed = 3, 2
    enn = ENN(ENNConfig(layer_shapes=layer_shapes(net), ratio=RATIO, width=width,
                        embed=embed, hidden=1))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in enn.parameters():
            p.zero_()
        enn.trunk.conv1.weight[:, 0] = 0.5 + 0.5 * torch.rand((width, 3, 3), generator=generator)
        enn.trunk.conv1.bias.fill_(-1.0)
        enn.trunk.conv2.weight.copy_(0.5 + 0.5 * torch.rand(enn.trunk.conv2.weight.shape,
                                                            generator=generator))
        start = layer * (width + N_STATS + embed)  # the layer's pooled features come first
        enn.head[0].weight[0, start:start + width] = 0.01  # small: the sigmoid must not saturate
        enn.head[2].weight[0, 0] = 1.0
    return enn


def _mask(shape, region, grow: int = 0) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    rows, cols = region
    mask[max(0, rows.start - grow):rows.stop + grow,
         max(0, cols.start - grow):cols.stop + grow] = True
    return mask


@pytest.mark.parametrize("layer", [0, 1])
def test_gradcam_finds_the_one_region_the_enn_score_depends_on(layer):
    net = _region_network(layer)
    enn = _region_enn(net, layer)
    # the construction does what it claims: the score's gradient lives around the block
    weight = weight_matrices(net)[layer]
    score = enn.score(net, 0.5)
    # above 0.5: the block is seen; below 1: the sigmoid is not saturated
    assert 0.55 < float(score.detach()) < 0.95
    grad = torch.autograd.grad(score, weight_parameters(net))
    assert float(grad[layer][POSITIVE].abs().min()) > 0
    near = torch.as_tensor(_mask(weight.shape, POSITIVE, grow=REACH))
    assert float(grad[layer][~near].abs().max()) == 0
    assert float(grad[layer][NEGATIVE].abs().max()) == 0
    assert float(grad[1 - layer].abs().max()) == 0

    maps = gradcam(enn, net, progress=0.5)

    m = maps[layer]
    assert m.relevance.shape == tuple(weight.shape)
    peak = np.unravel_index(np.argmax(m.relevance), m.relevance.shape)
    assert _mask(m.relevance.shape, POSITIVE)[peak], f"Grad-CAM peaks at {peak}, off the region"
    inside = m.relevance[_mask(m.relevance.shape, POSITIVE)]
    assert inside.min() > 0  # the whole region is lit
    assert m.relevance[~near.numpy()].max() == 0  # nothing beyond the convolutions' reach
    assert inside.sum() > 0.5 * m.relevance.sum()
    # as large as the positive block but of the other sign: magnitude would pick it, Grad-CAM not
    assert m.relevance[NEGATIVE].max() == 0
    # the other weight matrix is larger but the score ignores it
    assert maps[1 - layer].relevance.max() == 0
    assert np.abs(maps[1 - layer].weight).max() > np.abs(m.weight).max()


def test_gradcam_follows_the_region_when_it_moves():
    """The same ENN, the block moved: the peak moves with it (not a fixed position)."""
    net = _region_network(0)
    enn = _region_enn(net, 0)
    with torch.no_grad():
        w = weight_matrices(net)[0]
        w[POSITIVE] = 0.0
        w[NEGATIVE] = 0.5  # the positive block now sits where the negative one was

    m = gradcam(enn, net)[0]

    peak = np.unravel_index(np.argmax(m.relevance), m.relevance.shape)
    assert _mask(m.relevance.shape, NEGATIVE)[peak]
    assert m.relevance[POSITIVE].max() == 0


# --------------------------------------------------------------------------- the layer name


def test_layer_names_default_to_the_last_convolution(tiny_enn):
    assert conv_layer_names(tiny_enn) == ["trunk.conv1", "trunk.conv2"]
    assert layer_name(tiny_enn, None) == DEFAULT_LAYER == "trunk.conv2"
    assert layer_name(tiny_enn, "trunk.conv1") == "trunk.conv1"


@pytest.mark.parametrize("bad", ["nope", "trunk", "head.0", "trunk.act"])
def test_an_unknown_enn_layer_lists_the_valid_ones(tiny_mlp, tiny_enn, bad):
    with pytest.raises(ValueError, match="valid layers: trunk.conv1, trunk.conv2") as err:
        gradcam(tiny_enn, tiny_mlp, layer=bad)
    assert repr(bad) in str(err.value)


def test_explain_with_an_unknown_layer_exits_2_with_one_line_before_training(tmp_path, capsys):
    net = build_mlp([64, 100, 100, 10])  # the digits task's network
    path = ENN(ENNConfig(layer_shapes=layer_shapes(net), width=4, embed=2,
                         hidden=8)).save(tmp_path / "enn.pt")

    code = main(["explain", "--task", "digits", "--enn", str(path), "--layer", "nope",
                 "--out", str(tmp_path), "--no-progress"])

    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("gradinstructor explain: error: unknown ENN layer 'nope'")
    assert "valid layers: trunk.conv1, trunk.conv2" in lines[0]
    assert not (tmp_path / "gradcam").exists()  # failed before training anything


def test_explain_prune_with_one_draw_exits_2_before_training(tmp_path, capsys):
    net = build_mlp([64, 100, 100, 10])
    path = ENN(ENNConfig(layer_shapes=layer_shapes(net), width=4, embed=2,
                         hidden=8)).save(tmp_path / "enn.pt")

    code = main(["explain", "--task", "digits", "--enn", str(path), "--prune", "--draws", "1",
                 "--out", str(tmp_path), "--no-progress"])

    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "draws must be an integer of at least 2" in lines[0] and "got 1" in lines[0]
    assert not (tmp_path / "gradcam").exists()


# --------------------------------------------------------------------------- over training


@pytest.fixture(scope="module")
def digits_enn(digits_task) -> ENN:
    """An untrained, seeded ENN for the digits network (64-100-100-10)."""
    torch.manual_seed(0)
    net = digits_task.build_model(seed=0)
    return ENN(ENNConfig(layer_shapes=layer_shapes(net), width=4, embed=2, hidden=8))


def test_snapshots_over_training_and_their_gradcam(small_digits, digits_enn, tmp_path):
    init = small_digits.build_model(seed=0)
    model = copy.deepcopy(init)

    snapshots, result = train_with_snapshots(small_digits, model, digits_enn, seed=0,
                                             strength=5.0)

    total = small_digits.total_steps  # 10: a quarter of it rounds to step 2, i.e. 20%
    steps = [0, round(total / 4), round(total / 2), total]
    assert [s.step for s in snapshots] == steps
    assert [s.progress for s in snapshots] == [step / total for step in steps]
    middle = [f"{100 * step / total:.0f}" for step in steps[1:3]]
    assert [s.label for s in snapshots] == ["init", *(f"{m}%" for m in middle), "trained"]
    assert [s.tag for s in snapshots] == ["init", *(f"p{m}" for m in middle), "trained"]
    for key, value in init.state_dict().items():  # the first copy is the initialisation
        assert torch.equal(snapshots[0].state[key], value)
    for key, value in model.state_dict().items():  # the last is the trained network
        assert torch.equal(snapshots[-1].state[key], value)
    assert not torch.equal(snapshots[1].state["0.weight"], snapshots[0].state["0.weight"])
    assert 0.0 <= result.test_acc <= 1.0

    series = gradcam_series(digits_enn, model, snapshots)
    scores = enn_scores(digits_enn, model, snapshots)
    summary = save_series(series, snapshots, tmp_path, scores=scores, enn_layer="trunk.conv2")

    assert len(series) == 4 and all(len(row) == 3 for row in series)
    for row, snap in zip(series, snapshots):
        for m, (key, shape) in zip(row, (("0.weight", (100, 64)), ("2.weight", (100, 100)),
                                         ("4.weight", (10, 100)))):
            assert m.relevance.shape == shape
            assert np.array_equal(m.weight, snap.state[key].numpy())
    assert sorted(p.name for p in tmp_path.glob("layer*.png")) == [f"layer{i}.png"
                                                                   for i in range(3)]
    assert len(list((tmp_path / "steps").glob("*.png"))) == 12
    written = json.loads((tmp_path / "gradcam.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert [s["enn_score"] for s in written["snapshots"]] == pytest.approx(scores)
    assert all(len(layer["top10_share"]) == 4 for layer in written["layers"])
    for layer in written["layers"]:
        assert (tmp_path / layer["grid"]).read_bytes()[:8] == PNG


# --------------------------------------------------------------------------- the prune check


@pytest.fixture(scope="module")
def prune_task(digits_task):
    """digits with 600 training examples and 4 epochs: 40 steps per training."""
    from gradinstructor.pipeline import shrink_task

    return shrink_task(digits_task, train=600, epochs=4)


@pytest.fixture(scope="module")
def pruned(prune_task, digits_enn):
    """(init, trained, result) of the check at its default sparsities, 3 draws (2 trained).

    He initialisation, so that 40 steps train the network well above chance.
    """
    init = prune_task.build_model(seed=0, init="he")
    trained = copy.deepcopy(init)
    fit_target(prune_task, trained, seed=0)
    result = prune_check(prune_task, digits_enn, init, trained, draws=3, train_draws=2)
    return init, trained, result


def _row(result, case, criterion, sparsity):
    rows = [r for r in result["rows"] if (r["case"], r["criterion"]) == (case, criterion)
            and r["sparsity"] == pytest.approx(sparsity)]
    assert len(rows) == 1, (case, criterion, sparsity)
    return rows[0]


def test_prune_check_covers_every_sparsity_criterion_and_case(pruned, prune_task):
    init, trained, result = pruned

    assert SPARSITIES == (0.5, 0.8, 0.9, 0.95)
    assert result["sparsities"] == list(SPARSITIES)
    assert result["criteria"] == ["gradcam", "magnitude", "random"] == list(CRITERIA)
    assert list(result["cases"]) == ["trained", "init", "init+train"] == list(CASES)
    assert len(result["rows"]) == len(SPARSITIES) * len(CRITERIA) * len(CASES)
    test = (prune_task.data.test_x, prune_task.data.test_y)
    assert result["dense"]["trained"] == pytest.approx(100 * accuracy(trained, *test))
    assert result["dense"]["init"] == pytest.approx(100 * accuracy(init, *test))
    assert result["chance"] == pytest.approx(10.0)
    for s in SPARSITIES:
        for case in CASES:
            for criterion in CRITERIA:
                row = _row(result, case, criterion, s)
                # several draws for the random rules, one for the unique magnitude mask
                expected = 1 if criterion == "magnitude" else (2 if case == "init+train" else 3)
                assert row["n"] == len(row["values"]) == expected
                assert all(0.0 <= v <= 100.0 for v in row["values"])
                assert row["mean"] == pytest.approx(np.mean(row["values"]))
                assert row["std"] == pytest.approx(np.std(row["values"], ddof=1)
                                                   if expected > 1 else 0.0)
    assert result["seconds"] > 0


def test_prune_accuracies_are_those_of_the_masked_networks(pruned, prune_task, digits_enn):
    """Recompute a few cells by hand: the masks applied to the same networks."""
    init, trained, result = pruned
    test = (prune_task.data.test_x, prune_task.data.test_y)
    weights = [w.detach() for w in weight_matrices(trained)]
    relevance = [m.relevance for m in gradcam(digits_enn, trained, progress=1.0)]
    for s in (0.5, 0.95):
        magnitude = apply_masks(trained, make_masks("magnitude", weights, None, s))
        assert _row(result, "trained", "magnitude", s)["values"] == pytest.approx(
            [100 * accuracy(magnitude, *test)])
        randoms = [100 * accuracy(apply_masks(trained, make_masks("random", weights, None, s,
                                                                  seed=d)), *test)
                   for d in range(3)]
        assert _row(result, "trained", "random", s)["values"] == pytest.approx(randoms)
        cams = [100 * accuracy(apply_masks(trained, make_masks("gradcam", weights, relevance, s,
                                                               seed=d)), *test)
                for d in range(3)]
        assert _row(result, "trained", "gradcam", s)["values"] == pytest.approx(cams)
    # magnitude pruning at 50% keeps most of what a trained MLP knows; 95% at random does not
    dense = result["dense"]["trained"]
    assert dense > 50
    assert _row(result, "trained", "magnitude", 0.5)["mean"] > dense - 15
    assert _row(result, "trained", "random", 0.95)["mean"] < \
        _row(result, "trained", "magnitude", 0.5)["mean"]


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("network", ["init", "trained"])
def test_masks_keep_exactly_one_minus_sparsity_of_each_weight_matrix(pruned, digits_enn,
                                                                     criterion, network):
    init, trained, _ = pruned
    net = init if network == "init" else trained
    weights = [w.detach() for w in weight_matrices(net)]
    relevance = [m.relevance for m in gradcam(digits_enn, net, progress=0.0)]
    for s in SPARSITIES:
        masks = make_masks(criterion, weights, relevance, s, seed=1)
        masked = apply_masks(net, masks)
        for w, mask, kept_w, rel in zip(weights, masks, weight_matrices(masked), relevance):
            n = w.numel()
            assert mask.shape == w.shape and mask.dtype == torch.bool
            assert int(mask.sum()) == n_kept(n, s) == n - round(s * n)
            assert abs(int(mask.sum()) / n - (1 - s)) <= 0.5 / n
            # the masked network: exactly the kept weights survive, unchanged
            assert int((kept_w != 0).sum()) == int(mask.sum())
            assert torch.equal(kept_w[mask], w[mask])
            if criterion == "magnitude":
                assert w[mask].abs().min() >= w[~mask].abs().max()
            if criterion == "gradcam":
                rel = torch.as_tensor(rel)
                assert rel[mask].min() >= rel[~mask].max()
    # the original network is left as it was
    assert all(int((w != 0).sum()) == w.numel() for w in weight_matrices(net))


def test_random_and_gradcam_draws_differ_by_seed_and_repeat_for_the_same_seed(pruned,
                                                                              digits_enn):
    _, trained, _ = pruned
    weights = [w.detach() for w in weight_matrices(trained)]
    relevance = [m.relevance for m in gradcam(digits_enn, trained)]
    for criterion in ("random", "gradcam"):
        a = make_masks(criterion, weights, relevance, 0.9, seed=0)
        again = make_masks(criterion, weights, relevance, 0.9, seed=0)
        b = make_masks(criterion, weights, relevance, 0.9, seed=1)
        assert all(torch.equal(x, y) for x, y in zip(a, again))
        # Grad-CAM ties (one value per image block) are broken differently per seed
        assert not all(torch.equal(x, y) for x, y in zip(a, b))


def test_top_mask_breaks_ties_without_looking_at_anything_else():
    scores = torch.tensor([[3.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 2.0]])

    mask = top_mask(scores, 0.5)  # keep 4: 3, 2 and two of the five 1s

    assert int(mask.sum()) == 4 and mask[0, 0] and mask[1, 3] and not mask[1, 2]
    draws = {tuple(top_mask(scores, 0.5, seed=s).flatten().tolist()) for s in range(20)}
    assert len(draws) > 1


def test_unknown_criterion_and_bad_sparsity_say_what_is_valid(pruned):
    _, trained, _ = pruned
    weights = weight_matrices(trained)
    with pytest.raises(ValueError, match="valid criteria: gradcam, magnitude, random"):
        make_masks("saliency", weights, None, 0.5)
    with pytest.raises(ValueError, match="needs relevances"):
        make_masks("gradcam", weights, None, 0.5)
    with pytest.raises(ValueError, match=r"sparsity must be a fraction in \[0, 1\)"):
        make_masks("magnitude", weights, None, 1.0)


def test_the_check_trains_exactly_as_fit_target_does(prune_task):
    """fit_plain skips the per-epoch curve of fit_target, nothing else: the same weights."""
    a, b = prune_task.build_model(seed=7), prune_task.build_model(seed=7)

    reference = fit_target(prune_task, a, seed=3)
    result = fit_plain(prune_task, b, seed=3)

    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    assert (result.train_acc, result.val_acc, result.test_acc) == (
        reference.train_acc, reference.val_acc, reference.test_acc)
    assert result.curve == [] and len(reference.curve) == prune_task.config.epochs


def test_masked_training_keeps_removed_weights_at_zero(pruned, prune_task):
    init, _, _ = pruned
    weights = [w.detach() for w in weight_matrices(init)]
    masks = make_masks("random", weights, None, 0.8, seed=2)

    net, result = train_masked(prune_task, init, masks, seed=0)

    assert 0.0 <= result.test_acc <= 1.0
    for before, after, mask in zip(weights, weight_matrices(net), masks):
        assert torch.count_nonzero(after[~mask]) == 0
        assert not torch.equal(after[mask], before[mask])  # the kept weights did train
    names = [name for name, _ in net.named_parameters()]
    assert not any(name.endswith("_orig") for name in names)  # the pruning is made permanent
    assert torch.equal(weights[0], weight_matrices(init)[0])  # the input network is untouched


def test_prune_table_plot_and_tracker_rows(pruned, tmp_path):
    _, _, result = pruned

    text = format_prune_table(result)
    path = plot_prune(result, tmp_path / "prune.png")

    lines = text.splitlines()
    assert lines[0].startswith("lottery-ticket check on digits (test accuracy %")
    assert lines[1].split() == ["case", "criterion", "dense", "50%", "80%", "90%", "95%"]
    body = [line.split()[:2] for line in lines[2:]]
    assert body == [[case, criterion] for case in CASES for criterion in CRITERIA]
    cell = _row(result, "init", "random", 0.9)
    assert f"{cell['mean']:.2f} +-" in lines[2 + 3 + 2]
    rows = table_rows(result)
    assert len(rows) == len(CASES) + len(result["rows"])
    assert Path(path).read_bytes()[:8] == PNG and Path(path).stat().st_size > 10_000


# --------------------------------------------------------------------------- the findings


def _claims(text: str) -> dict[str, tuple[int, int]]:
    """{"random": (beats, n), "magnitude": (beats, n)} from one measured sentence."""
    out = {}
    for other in ("random", "magnitude"):
        match = re.search(rf"beat {other} masks at (\d+) of (\d+)", text)
        assert match, text
        out[other] = (int(match[1]), int(match[2]))
    return out


def test_findings_claim_no_more_than_the_measured_rows_show(pruned):
    _, _, result = pruned

    lines = result["findings"]

    assert lines == findings(result) and all(isinstance(line, str) and line for line in lines)
    for case, line in zip(CASES, lines):
        assert line.startswith(result["cases"][case])
        for other, (beats, n) in _claims(line).items():
            assert n == len(SPARSITIES)
            # a claimed win needs Grad-CAM's mean above the other's by more than a point
            wins = sum(_row(result, case, "gradcam", s)["mean"]
                       > _row(result, case, other, s)["mean"] + 1.0 for s in SPARSITIES)
            assert beats <= wins
    text = " ".join(lines)
    assert "What the check cannot say" in text
    assert "One network and one training seed" in text


def _synthetic(gradcam_init: float, random_init: float, gradcam_trained: float,
               random_trained: float, std: float) -> dict:
    """A result in prune_check's layout with chosen accuracies (magnitude = random)."""
    means = {("init", "gradcam"): gradcam_init, ("init", "random"): random_init,
             ("init", "magnitude"): random_init, ("trained", "gradcam"): gradcam_trained,
             ("trained", "random"): random_trained, ("trained", "magnitude"): random_trained,
             ("init+train", "gradcam"): 80.0, ("init+train", "random"): 80.0,
             ("init+train", "magnitude"): 80.0}
    rows = [{"case": case, "criterion": criterion, "sparsity": s, "mean": mean,
             "std": 0.0 if criterion == "magnitude" else std, "n": 5, "values": []}
            for s in SPARSITIES for (case, criterion), mean in means.items()]
    return {"sparsities": list(SPARSITIES), "rows": rows, "chance": 10.0, "ratio": 0.15,
            "draws": 5, "train_draws": 3, "dense": {c: 85.0 for c in CASES}}


def test_findings_count_a_clear_gap_as_a_win_and_noise_as_a_tie():
    clear = findings(_synthetic(10.0, 10.0, 70.0, 40.0, std=1.0))
    noisy = findings(_synthetic(10.0, 10.0, 44.0, 40.0, std=3.0))  # 4 points, spread 3
    worse = findings(_synthetic(10.0, 10.0, 30.0, 40.0, std=1.0))

    assert _claims(clear[0]) == {"random": (4, 4), "magnitude": (4, 4)}
    assert _claims(noisy[0]) == {"random": (0, 4), "magnitude": (0, 4)}
    assert "tie at 4" in noisy[0]
    assert _claims(worse[0]) == {"random": (0, 4), "magnitude": (0, 4)}
    assert "lose at 4" in worse[0]
    for lines in (clear, noisy, worse):
        assert _claims(lines[2]) == {"random": (0, 4), "magnitude": (0, 4)}  # all equal


def test_findings_speak_of_the_strong_hypothesis_only_as_the_init_numbers_allow():
    at_chance = " ".join(findings(_synthetic(11.0, 10.0, 70.0, 40.0, std=1.0)))
    above = " ".join(findings(_synthetic(60.0, 10.0, 70.0, 40.0, std=1.0)))

    assert "give no support to the strong lottery ticket reading" in at_chance
    assert "best 11.0%" in at_chance
    assert "no support" not in above
    assert "reaches 60.0% without training" in above
    for text in (at_chance, above):  # never a proof, whichever way the numbers fall
        assert "not a proof" in text and "do not show that none exists" in text
        assert not re.search(r"\b(proves?|confirms?|demonstrates?)\b", text)


# --------------------------------------------------------------------------- the report


class _PageParser(HTMLParser):
    """Collects the tables (by id), image sources, element ids and missing-parts items."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self.ids: list[str] = []
        self.missing: list[str] = []
        self._table: list | None = None
        self._row: list | None = None
        self._text: str | None = None  # the text of the open cell or notice item
        self._in_missing = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id", ""), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "div" and attrs.get("id") == "missing":
            self._in_missing = True
        if (tag in ("td", "th") and self._row is not None) or (tag == "li" and self._in_missing):
            self._text = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag in ("td", "th") and self._text is not None:
            self._row.append(self._text)
            self._text = None
        elif tag == "li" and self._in_missing and self._text is not None:
            self.missing.append(self._text)
            self._text = None
        elif tag == "div":
            self._in_missing = False

    def handle_data(self, data):
        if self._text is not None:
            self._text += data


class _Page:
    """The tables (by id), images, element ids and missing-parts notice of a report page."""

    def __init__(self, path: Path) -> None:
        parser = _PageParser()
        parser.feed(path.read_text(encoding="utf-8"))
        self.tables, self.images = parser.tables, parser.images
        self.ids, self.missing = parser.ids, parser.missing

    def body_rows(self, table_id: str) -> list[list[str]]:
        return self.tables[table_id][1:]  # the first row is the header


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, prune_task, digits_enn) -> Path:
    """A run folder written by the real stages on a tiny task (no RL record)."""
    run = tmp_path_factory.mktemp("run")
    stage_compare(prune_task, run, digits_enn, seeds=[0, 1], strength=5.0, progress_bar=False)
    stage_explain(prune_task, run, digits_enn, seed=0, prune=True, draws=2)
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    (target / PAGE_NAME).unlink(missing_ok=True)
    shutil.rmtree(target / "plots", ignore_errors=True)
    return target


def _images_exist(page: _Page, run: Path) -> None:
    assert page.images
    for src in page.images:
        assert not re.match(r"[a-z]+://", src) and not src.startswith("/"), src  # relative
        assert (run / src).read_bytes()[:8] == PNG, src


def test_explain_stage_accepts_two_draws_and_the_report_shows_every_part(small_run):
    prune = json.loads((small_run / "prune.json").read_text())
    assert prune["draws"] == 2 and prune["train_draws"] == 2

    page = _Page(write_report(small_run))

    assert missing_parts(small_run) == ["train_enn.json"]
    assert page.missing == ["train_enn.json (the RL training record (gradinstructor "
                            "train-enn))"]
    assert [row[0] for row in page.body_rows("comparison")] == list(METHODS)
    assert [row[:2] for row in page.body_rows("prune")] == [[c, k] for c in CASES
                                                            for k in CRITERIA]
    assert page.tables["prune"][0][3:] == ["50% removed", "80% removed", "90% removed",
                                           "95% removed"]
    assert len(page.body_rows("gradcam-points")) == 4
    for section in ("sec-comparison", "sec-gradcam", "sec-prune"):
        assert section in page.ids
    _images_exist(page, small_run)
    names = {Path(src).name for src in page.images}
    assert {"curves.png", "schedule.png", "prune.png", "layer0.png", "layer1.png",
            "layer2.png"} <= names
    text = (small_run / PAGE_NAME).read_text()
    for line in prune["findings"]:  # the reading, in full
        assert f"<li>{html.escape(line)}</li>" in text


def test_a_folder_with_missing_parts_names_them_and_renders_the_rest(small_run, tmp_path):
    run = _copy(small_run, tmp_path)
    (run / "prune.json").unlink()
    (run / "gradcam" / "layer1.png").unlink()
    (run / "train_enn.json").write_text("{not json")

    page = _Page(write_report(run))

    assert len(page.missing) == 3, page.missing
    assert page.missing[0].startswith("train_enn.json: unreadable (JSONDecodeError")
    assert page.missing[1] == "gradcam/layer1.png (listed in gradcam/gradcam.json)"
    assert page.missing[2].startswith("prune.json (the lottery-ticket check")
    assert [row[0] for row in page.body_rows("comparison")] == list(METHODS)
    assert "prune" not in page.tables and "sec-prune" not in page.ids
    names = {Path(src).name for src in page.images}
    assert {"layer0.png", "layer2.png", "curves.png"} <= names and "layer1.png" not in names
    _images_exist(page, run)


def test_an_empty_folder_names_all_four_parts_and_still_writes_a_page(tmp_path):
    page = _Page(write_report(tmp_path))

    assert [item.split()[0] for item in page.missing] == ["results.json", "train_enn.json",
                                                          "gradcam", "prune.json"]
    assert missing_parts(tmp_path) == ["results.json", "train_enn.json", "gradcam",
                                       "prune.json"]
    assert page.images == [] and page.tables == {}


def test_malformed_parts_are_named_and_the_others_still_render(small_run, tmp_path):
    run = _copy(small_run, tmp_path)
    (run / "results.json").write_text(json.dumps({"task": "digits", "methods": {"plain": 3}}))
    (run / "gradcam" / "gradcam.json").unlink()  # the figures are still there

    page = _Page(write_report(run))

    assert any(item.startswith("results.json (could not be rendered: ")
               for item in page.missing), page.missing
    assert any(item.startswith("gradcam/gradcam.json") for item in page.missing), page.missing
    assert "comparison" not in page.tables
    assert [row[:2] for row in page.body_rows("prune")][0] == ["trained", "gradcam"]
    names = {Path(src).name for src in page.images}
    assert {"layer0.png", "layer1.png", "layer2.png", "prune.png"} <= names
    _images_exist(page, run)


def test_report_of_a_folder_that_does_not_exist_exits_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "nowhere"

    assert main(["report", str(missing)]) == 2

    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradinstructor report: error: ")
    assert str(missing) in lines[0] and "does not exist" in lines[0]


def test_findings_say_when_the_network_itself_is_at_chance():
    result = _synthetic(10.0, 10.0, 11.0, 11.0, std=0.5)
    result["dense"] = {"trained": 11.0, "init": 10.0, "init+train": 85.0}

    text = " ".join(findings(result))

    assert "Case trained: even unmasked, the network reaches only 11.0%" in text
    assert "say nothing for or against Grad-CAM" in text
    assert "Case init+train:" not in text and "Case init:" not in text
    assert "even unmasked" not in " ".join(findings(_synthetic(10, 10, 70, 40, 1.0)))


def test_the_summary_sentence_follows_the_counts():
    never = findings(_synthetic(10.0, 10.0, 40.0, 40.0, std=1.0))
    clear = _synthetic(10.0, 10.0, 70.0, 40.0, std=1.0)  # trained: Grad-CAM 30 points ahead
    at_chance = _synthetic(10.0, 10.0, 11.0, 11.0, std=0.5)
    at_chance["dense"] = {"trained": 11.0, "init": 10.0, "init+train": 11.0}

    assert never[3] == ("In short (trained and init+train, 4 sparsities each): Grad-CAM masks "
                        "never beat random masks of the same size (0 of 8), so these numbers "
                        "do not support the reading that Grad-CAM marks the weights that carry "
                        "the network.")
    # magnitude equals random in _synthetic, so the wins over both are counted alike
    assert "beat random masks of the same size at 4 of 8" in findings(clear)[3]
    assert "they beat magnitude masks at 4 of 8" in findings(clear)[3]
    assert not any(line.startswith("In short") for line in findings(at_chance))
