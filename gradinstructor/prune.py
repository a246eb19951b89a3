"""The lottery-ticket check: do the weights Grad-CAM marks as relevant carry the network?

The paper reads Grad-CAM on the ENN as support for the strong lottery ticket
hypothesis. This module puts a number on that reading. At each sparsity (50%,
80%, 90%, 95% by default) three rules keep the same number of weights in every
weight matrix:

* ``gradcam``: the weights of highest Grad-CAM relevance (see :mod:`explain`);
* ``magnitude``: the weights of largest ``|w|``;
* ``random``: a uniform draw.

Biases are kept. Grad-CAM relevance is constant over each image block, so many
weights tie; ties are broken at random from the draw's seed (not by magnitude),
so a Grad-CAM mask carries what Grad-CAM knows and nothing more. Random and
Grad-CAM masks are drawn several times (mean and std reported); a magnitude mask
is unique.

Three measures, on the task's test split:

* ``trained``: masks from the trained network's weights (Grad-CAM at progress 1),
  accuracy of the masked trained network, no retraining;
* ``init``: masks from the same network's initial weights (Grad-CAM at progress
  0), accuracy of the masked initialisation, no training: what the strong
  hypothesis is about (a good subnetwork inside the random initialisation);
* ``init+train``: that masked initialisation trained with the mask held fixed,
  by plain SGD with the task's optimiser, batch size, epochs and minibatch order:
  the weak hypothesis's protocol (a sparse subnetwork that trains well from its
  initial weights). Fewer draws are trained than evaluated, to stay cheap.

Example:
    >>> result = prune_check(task, enn, init_model, trained_model)   # doctest: +SKIP
    >>> print(format_prune_table(result))                            # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from gradinstructor.enn import ENN
from gradinstructor.explain import gradcam
from gradinstructor.render import weight_matrices, weight_parameters
from gradinstructor.trainer import DivergenceError, TrainResult, accuracy, batch_order

if TYPE_CHECKING:
    from gradinstructor.tasks import Task

SPARSITIES = (0.5, 0.8, 0.9, 0.95)
CRITERIA = ("gradcam", "magnitude", "random")
CASES = ("trained", "init", "init+train")
CASE_TEXT = {
    "trained": "trained network, masked, no retraining",
    "init": "its initialisation, masked, no training",
    "init+train": "its initialisation, masked, then trained with the mask fixed",
}
DEFAULT_DRAWS = 5
DEFAULT_TRAIN_DRAWS = 3
TABLE_COLUMNS = ["case", "criterion", "sparsity %", "accuracy %", "std", "draws"]


def check_sparsity(sparsity: float) -> float:
    """Return ``sparsity`` as a float after checking it lies in [0, 1).

    Raises:
        ValueError: outside [0, 1) or not a number.
    """
    if not isinstance(sparsity, (int, float)) or math.isnan(sparsity) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a fraction in [0, 1) of weights to remove, but got "
                         f"{sparsity!r}; e.g. 0.9 keeps 10% of the weights")
    return float(sparsity)


def n_kept(n: int, sparsity: float) -> int:
    """How many of ``n`` weights a mask at ``sparsity`` keeps: n - round(sparsity * n)."""
    return n - int(round(check_sparsity(sparsity) * n))


def top_mask(scores: torch.Tensor, sparsity: float, seed: int | None = None) -> torch.Tensor:
    """Keep the entries of highest score; exactly :func:`n_kept` of them.

    Args:
        scores: any shape; higher is kept first.
        sparsity: fraction of entries to remove, in [0, 1).
        seed: ties are broken by a random order drawn from it; ``None`` breaks
            them by position (first kept first).

    Returns:
        A boolean mask of ``scores``' shape, on ``scores``' device. The ranking is done
        on the CPU (the tie-breaking draw comes from a CPU generator), so a mask is the
        same whatever the device.

    Raises:
        ValueError: ``sparsity`` outside [0, 1).
    """
    flat = scores.detach().reshape(-1).float().cpu()
    keep = n_kept(flat.numel(), sparsity)
    if seed is None:
        order = torch.arange(flat.numel())
    else:
        order = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))
    # a stable sort of the shuffled scores: equal scores stay in shuffled order
    ranked = torch.sort(flat[order], descending=True, stable=True).indices
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[order[ranked[:keep]]] = True
    return mask.reshape(scores.shape).to(scores.device)


def magnitude_masks(weights: Sequence[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Per matrix, keep the weights of largest ``|w|`` (each mask on its weight's device)."""
    return [top_mask(w.abs(), sparsity) for w in weights]


def random_masks(weights: Sequence[torch.Tensor], sparsity: float,
                 seed: int) -> list[torch.Tensor]:
    """Per matrix, keep a uniform draw of the weights (seeded; layer ``l`` uses seed+l).

    The draw is made on the CPU (the same masks on every device); each mask is put on
    its weight's device.
    """
    out = []
    for layer, w in enumerate(weights):
        noise = torch.rand(w.shape, generator=torch.Generator().manual_seed(seed * 1009 + layer))
        out.append(top_mask(noise, sparsity).to(w.device))
    return out


def gradcam_masks(relevances: Sequence[np.ndarray | torch.Tensor], sparsity: float,
                  seed: int, device: str | torch.device | None = None) -> list[torch.Tensor]:
    """Per matrix, keep the weights of highest Grad-CAM relevance; ties broken from ``seed``.

    The masks go to ``device``; by default a tensor relevance's own device, the CPU for
    a NumPy one (:func:`make_masks` puts them on the weights' device).
    """
    masks = []
    for layer, r in enumerate(relevances):
        scores = r if isinstance(r, torch.Tensor) else torch.as_tensor(np.asarray(r))
        mask = top_mask(scores, sparsity, seed=seed * 1009 + layer)
        masks.append(mask if device is None else mask.to(device))
    return masks


def make_masks(criterion: str, weights: Sequence[torch.Tensor],
               relevances: Sequence[np.ndarray] | None, sparsity: float,
               seed: int = 0) -> list[torch.Tensor]:
    """The masks of one criterion (see :data:`CRITERIA`), each on its weight's device.

    Raises:
        ValueError: unknown ``criterion``, or ``gradcam`` without one relevance map per
            weight matrix.
    """
    if criterion == "magnitude":
        return magnitude_masks(weights, sparsity)
    if criterion == "random":
        return random_masks(weights, sparsity, seed)
    if criterion == "gradcam":
        if relevances is None:
            raise ValueError("criterion 'gradcam' needs relevances (from explain.gradcam)")
        if len(relevances) != len(weights):
            raise ValueError(f"got {len(relevances)} relevance maps for {len(weights)} weight "
                             "matrices; pass one map per weight matrix (explain.gradcam)")
        masks = gradcam_masks(relevances, sparsity, seed)
        return [m.to(w.device) for m, w in zip(masks, weights)]
    raise ValueError(f"unknown criterion {criterion!r}; valid criteria: {', '.join(CRITERIA)}")


def _check_masks(model: nn.Module, masks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    weights = weight_parameters(model)
    if len(masks) != len(weights):
        raise ValueError(f"got {len(masks)} masks for {len(weights)} weight matrices; "
                         "pass one mask per weight matrix (see render.weight_matrices)")
    out = []
    for i, (mask, w) in enumerate(zip(masks, weights)):
        if mask.numel() != w.numel():
            raise ValueError(f"mask {i} has {mask.numel()} entries, but weight {i} has shape "
                             f"{tuple(w.shape)}; build masks from this model's weights")
        out.append(mask.reshape(w.shape).to(device=w.device, dtype=w.dtype))
    return out


def apply_masks(model: nn.Module, masks: Sequence[torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with the masked-out weights set to zero.

    Args:
        model: the network (unchanged).
        masks: one mask per weight matrix, as from :func:`make_masks` (2-D views
            of conv kernels are reshaped back).

    Raises:
        ValueError: a mask count or size that does not match the model.
    """
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for w, mask in zip(weight_parameters(masked), _check_masks(masked, masks)):
            w.mul_(mask)
    return masked


def fit_plain(task: Task, model: nn.Module, seed: int, method: str = "plain") -> TrainResult:
    """Train ``model`` as :func:`~gradinstructor.trainer.fit_target` does without extras.

    The same optimiser, batch size, epochs and minibatch order (so the same weights
    to the last bit), but no per-epoch curve: the check needs only the final
    accuracies, and the curve's full passes over the training and validation data
    were about a third of each training's time on mnist5k.

    Returns:
        The final train, validation and test accuracy; ``curve`` is empty.

    Raises:
        DivergenceError: the loss or the weights became non-finite.
    """
    data, cfg = task.data, task.config
    optimizer = task.make_optimizer(model)
    for idx in batch_order(len(data.train_y), cfg.batch_size, cfg.epochs, seed):
        loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if not torch.isfinite(loss) or not all(torch.isfinite(p).all() for p in model.parameters()):
        raise DivergenceError(f"{method}: training ended with a non-finite loss or non-finite "
                              f"weights after {task.total_steps} steps; lower the learning rate")
    return TrainResult(train_acc=accuracy(model, data.train_x, data.train_y),
                       val_acc=accuracy(model, data.val_x, data.val_y),
                       test_acc=accuracy(model, data.test_x, data.test_y), curve=[])


def train_masked(task: Task, model: nn.Module, masks: Sequence[torch.Tensor], seed: int):
    """Train a copy of ``model`` with the mask held fixed; return (network, TrainResult).

    The mask is a reparametrisation (``torch.nn.utils.prune``): the network uses
    ``weight_orig * mask``, so removed weights stay exactly zero and get no update.
    Training is :func:`fit_plain` (the task's optimiser, batch size, epochs; minibatch
    order from ``seed``).
    """
    masked = copy.deepcopy(model)
    weights = weight_parameters(masked)
    module_of = {id(getattr(m, "weight", None)): m for m in masked.modules()}
    for w, mask in zip(weights, _check_masks(masked, masks)):
        torch_prune.custom_from_mask(module_of[id(w)], "weight", mask)
    result = fit_plain(task, masked, seed, method="masked")
    for module in masked.modules():
        if torch_prune.is_pruned(module) and hasattr(module, "weight_mask"):
            torch_prune.remove(module, "weight")
    return masked, result


def _stats(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=float) * 100
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            "n": int(arr.size), "values": [float(v) for v in arr]}


def prune_check(task: Task, enn: ENN, init_model: nn.Module, trained_model: nn.Module,
                sparsities: Sequence[float] = SPARSITIES, draws: int = DEFAULT_DRAWS,
                train_draws: int = DEFAULT_TRAIN_DRAWS, layer: str | None = None,
                seed: int = 0) -> dict:
    """Compare Grad-CAM, magnitude and random masks at equal sparsity (see the module doc).

    Args:
        task: the task; accuracy is measured on its test split, masked training
            uses its optimiser, batch size and epochs.
        enn: the ENN whose Grad-CAM ranks the weights.
        init_model: the target network at initialisation.
        trained_model: the same network after training.
        sparsities: fractions of weights removed, each in [0, 1).
        draws: masks drawn per random criterion (random; Grad-CAM's tie-breaks)
            for the accuracy of masked networks.
        train_draws: how many of those draws are also trained (``init+train``).
        layer: ENN layer for Grad-CAM; default its last convolution.
        seed: the minibatch order of masked training; draws use seeds 0..draws-1.

    Returns:
        ``{"rows": [{case, criterion, sparsity, mean, std, n, values}], "dense": ...,
        "chance", "findings", "seconds", ...}``; accuracies in percent.

    Raises:
        ValueError: a sparsity outside [0, 1), ``draws`` < 2 or ``train_draws``
            outside [1, draws].
    """
    sparsities = [check_sparsity(s) for s in sparsities]
    if not sparsities:
        raise ValueError("sparsities must name at least one sparsity, e.g. 0.5,0.8,0.9,0.95")
    if not isinstance(draws, int) or draws < 2:
        raise ValueError(f"draws must be an integer of at least 2 (mean and std need two), "
                         f"but got {draws!r}")
    if not isinstance(train_draws, int) or not 1 <= train_draws <= draws:
        raise ValueError(f"train_draws must be an integer in [1, draws={draws}], but got "
                         f"{train_draws!r}")
    start = time.perf_counter()
    dense, rows = _measure(task, enn, init_model, trained_model, sparsities, draws,
                           train_draws, layer, seed)
    data = task.data
    result = {
        "task": task.name, "split": "test", "seed": seed, "sparsities": sparsities,
        "criteria": list(CRITERIA), "cases": {c: CASE_TEXT[c] for c in CASES},
        "draws": draws, "train_draws": train_draws, "enn_layer": layer,
        "ratio": enn.config.ratio, "chance": 100.0 / data.n_classes, "dense": dense,
        "rows": rows,
    }
    result["findings"] = findings(result)
    result["seconds"] = time.perf_counter() - start
    return result


def _measure(task: Task, enn: ENN, init_model: nn.Module, trained_model: nn.Module,
             sparsities: list[float], draws: int, train_draws: int, layer: str | None,
             seed: int) -> tuple[dict, list[dict]]:
    """The dense accuracies and the rows of :func:`prune_check`."""
    data = task.data
    test = (data.test_x, data.test_y)
    networks = {"trained": (trained_model, 1.0), "init": (init_model, 0.0)}
    relevance = {name: [m.relevance for m in gradcam(enn, net, progress=p, layer=layer)]
                 for name, (net, p) in networks.items()}
    weights = {name: [w.detach() for w in weight_matrices(net)]
               for name, (net, _) in networks.items()}
    dense_trained = fit_plain(task, copy.deepcopy(init_model), seed, method="dense").test_acc
    dense = {"trained": 100 * accuracy(trained_model, *test),
             "init": 100 * accuracy(init_model, *test), "init+train": 100 * dense_trained}

    rows = []
    for sparsity in sparsities:
        for criterion in CRITERIA:
            seeds = [0] if criterion == "magnitude" else list(range(draws))
            acc: dict[str, list[float]] = {case: [] for case in CASES}
            for draw in seeds:
                for name, (net, _) in networks.items():
                    masks = make_masks(criterion, weights[name], relevance[name], sparsity,
                                       seed=draw)
                    acc[name].append(accuracy(apply_masks(net, masks), *test))
                    if name == "init" and draw < train_draws:
                        acc["init+train"].append(train_masked(task, net, masks, seed)[1].test_acc)
            rows += [{"case": case, "criterion": criterion, "sparsity": sparsity,
                      **_stats(acc[case])} for case in CASES]
    return dense, rows


# --------------------------------------------------------------------------- reading the numbers


def _row(result: dict, case: str, criterion: str, sparsity: float) -> dict | None:
    for row in result["rows"]:
        if (row["case"], row["criterion"]) == (case, criterion) and \
                abs(row["sparsity"] - sparsity) < 1e-9:
            return row
    return None


def _compare(a: dict, b: dict) -> int:
    """+1 if ``a`` beats ``b`` beyond noise, -1 if it loses, 0 if they tie.

    Noise: twice the combined std of the two means' draws, and at least one point.
    """
    margin = max(1.0, 2.0 * math.sqrt(a["std"] ** 2 + b["std"] ** 2))
    diff = a["mean"] - b["mean"]
    return 1 if diff > margin else (-1 if diff < -margin else 0)


def _counts(result: dict, case: str, other: str) -> tuple[int, int, int]:
    """(wins, ties, losses) of Grad-CAM masks against ``other`` over the sparsities."""
    verdicts = []
    for s in result["sparsities"]:
        g, o = _row(result, case, "gradcam", s), _row(result, case, other, s)
        if g is not None and o is not None:
            verdicts.append(_compare(g, o))
    return verdicts.count(1), verdicts.count(0), verdicts.count(-1)


def _summary(result: dict) -> list[str]:
    """One sentence on the cases whose unmasked network is clearly above chance.

    The masked initialisation is left to the strong-hypothesis sentence: a random
    network is at chance by nature.
    """
    usable = [c for c in ("trained", "init+train")
              if result["dense"][c] >= result["chance"] + 10.0]
    if not usable:
        return []
    points = len(usable) * len(result["sparsities"])
    beat_random = sum(_counts(result, c, "random")[0] for c in usable)
    beat_magnitude = sum(_counts(result, c, "magnitude")[0] for c in usable)
    where = f"In short ({' and '.join(usable)}, {len(result['sparsities'])} sparsities each)"
    if beat_random == 0:
        return [f"{where}: Grad-CAM masks never beat random masks of the same size (0 of "
                f"{points}), so these numbers do not support the reading that Grad-CAM marks the "
                "weights that carry the network."]
    text = (f"{where}: Grad-CAM masks beat random masks of the same size at {beat_random} of "
            f"{points}, so here Grad-CAM relevance carries some information about which weights "
            "matter")
    if beat_magnitude == 0:
        return [f"{text}; they never beat magnitude masks, so it adds nothing that ranking the "
                "weights by size does not give."]
    return [f"{text}, and they beat magnitude masks at {beat_magnitude} of {points}."]


def findings(result: dict) -> list[str]:
    """Plain statements of what the numbers support and what they do not.

    Args:
        result: from :func:`prune_check`.

    Returns:
        Sentences, the measured ones first, then the limits of the check.
    """
    out = []
    n = len(result["sparsities"])
    for case in CASES:
        mag, rnd = _counts(result, case, "magnitude"), _counts(result, case, "random")
        out.append(
            f"{CASE_TEXT[case]}: Grad-CAM masks beat random masks at {rnd[0]} of {n} "
            f"sparsities (tie at {rnd[1]}, lose at {rnd[2]}) and beat magnitude masks at "
            f"{mag[0]} of {n} (tie at {mag[1]}, lose at {mag[2]}).")
    out += _summary(result)

    chance = result["chance"]
    for case in ("trained", "init+train"):  # a random init is at chance by nature
        dense = result["dense"][case]
        if dense < chance + 10.0:
            out.append(
                f"Case {case}: even unmasked, the network reaches only {dense:.1f}% (chance "
                f"{chance:.0f}%), so its masks have little accuracy to keep or lose and its "
                "rows say nothing for or against Grad-CAM; train it longer before reading them.")
    best_init = max((r["mean"] for r in result["rows"] if r["case"] == "init"), default=0.0)
    if best_init < chance + 10.0:
        out.append(
            f"No mask of the initialisation does much better than chance ({chance:.0f}%) "
            f"without training (best {best_init:.1f}%): these numbers give no support to the "
            "strong lottery ticket reading of Grad-CAM.")
    else:
        out.append(
            f"Some mask of the initialisation reaches {best_init:.1f}% without training "
            f"(chance {chance:.0f}%); see which criterion in the table before reading it as "
            "a strong lottery ticket.")
    out += [
        "What the check cannot say: the strong hypothesis claims that a good subnetwork exists "
        "inside a large random network; such subnetworks are found by optimising the mask "
        "(e.g. edge-popup), not by ranking weights. Three ranking rules that find none do not "
        "show that none exists, and one that does well on one network is not a proof either.",
        f"Grad-CAM relevance is constant over each image block (about {1 / result['ratio']:.0f}"
        f" x {1 / result['ratio']:.0f} weights at ratio {result['ratio']}), so its masks "
        "remove whole blocks; its ties are broken at random. The ENN's per-layer statistics "
        "bypass the convolution, so Grad-CAM covers only part of what the score rests on.",
        f"One network and one training seed; accuracy on the test split, {result['draws']} "
        f"draws per random mask ({result['train_draws']} trained). A difference within twice "
        "the spread of the draws (and under one point) is counted as a tie.",
    ]
    return out


def table_rows(result: dict) -> list[list]:
    """Rows for :data:`TABLE_COLUMNS`: case, criterion, sparsity %, mean, std, draws."""
    rows = [[case, "dense", 0, round(acc, 2), 0.0, 1] for case, acc in result["dense"].items()]
    rows += [[r["case"], r["criterion"], round(100 * r["sparsity"], 1), round(r["mean"], 2),
              round(r["std"], 2), r["n"]] for r in result["rows"]]
    return rows


def format_prune_table(result: dict) -> str:
    """The check as a fixed-width text table: one line per case and criterion.

    Args:
        result: from :func:`prune_check`.

    Returns:
        The table, accuracies in percent as ``mean +- std`` per sparsity.
    """
    sparsities = result["sparsities"]
    head = "".join(f"{f'{100 * s:g}%':>15}" for s in sparsities)
    lines = [f"lottery-ticket check on {result['task']} ({result['split']} accuracy %, "
             f"chance {result['chance']:.0f}%, {result.get('seconds', float('nan')):.0f} s)",
             f"{'case':<11} {'criterion':<10} {'dense':>7}{head}"]
    for case in CASES:
        for criterion in CRITERIA:
            cells = []
            for s in sparsities:
                row = _row(result, case, criterion, s)
                cells.append(f"{row['mean']:>8.2f} +-{row['std']:>4.1f}" if row else " " * 15)
            lines.append(f"{case:<11} {criterion:<10} {result['dense'][case]:>7.2f}"
                         + "".join(cells))
    return "\n".join(lines)


def plot_prune(result: dict, path) -> object:
    """Accuracy kept against sparsity: one panel per case, one line per criterion.

    Args:
        result: from :func:`prune_check`.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CASES), figsize=(12, 3.6), constrained_layout=True,
                             sharey=True)
    x = [100 * s for s in result["sparsities"]]
    for ax, case in zip(axes, CASES):
        for criterion, style in zip(CRITERIA, ("o-", "s--", "^:")):
            rows = [_row(result, case, criterion, s) for s in result["sparsities"]]
            mean = np.array([r["mean"] for r in rows])
            std = np.array([r["std"] for r in rows])
            (line,) = ax.plot(x, mean, style, ms=4, label=criterion)
            if std.any():  # the band in its line's colour
                ax.fill_between(x, mean - std, mean + std, alpha=0.15, color=line.get_color())
        ax.axhline(result["dense"][case], color="grey", lw=1, label="dense")
        ax.axhline(result["chance"], color="black", lw=0.8, ls=":", label="chance")
        ax.set_title(CASE_TEXT[case], fontsize=9)
        ax.set_xlabel("sparsity % (weights removed)")
        ax.set_xticks(x)
    axes[0].set_ylabel(f"{result['split']} accuracy %")
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
