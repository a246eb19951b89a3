"""Report: a self-contained local HTML dashboard of one run folder, and its wandb twin.

A run folder holds what the pipeline wrote (see :mod:`gradinstructor.pipeline`):
``results.json`` (the comparison), ``train_enn.json`` (RL episodes),
``gradcam/`` (Grad-CAM over training, with ``gradcam.json``), ``prune.json`` (the
lottery-ticket check) and ``enn.pt``. The dashboard, ``report.html`` in the same
folder, shows the comparison table, learning curves per method, the strength
schedule the actor chose, the size of the ENN gradient against the task
gradient over training, the weights and their Grad-CAM side by side per layer
and over training, and the prune check's table, plot and reading. Plots are PNG
files in ``plots/`` beside the page; the page loads nothing from a network, so
the folder can be copied and opened anywhere.

A part that is missing, unreadable or malformed is named at the top of the page
and the rest still renders.

Example:
    >>> path = write_report("runs/demo")          # doctest: +SKIP
    >>> log_dashboard("runs/demo", tracker)       # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gradinstructor.compare import ENN_METHODS, TABLE_COLUMNS, table_rows

logger = logging.getLogger(__name__)

PARTS = {
    "results.json": "the comparison (gradinstructor compare)",
    "train_enn.json": "the RL training record (gradinstructor train-enn)",
    "gradcam": "the Grad-CAM images (gradinstructor explain)",
    "prune.json": "the lottery-ticket check (gradinstructor explain --prune)",
}
PAGE_NAME = "report.html"
# What a failing section may raise when a JSON file has the wrong layout.
_MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_part(run_dir: Path, name: str) -> tuple[dict | None, str | None]:
    """Read one JSON part of the run folder.

    Returns:
        ``(data, None)``, or ``(None, why)`` where why is "missing" or says why
        the file cannot be read.
    """
    path = run_dir / name
    if not path.is_file():
        return None, "missing"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"unreadable ({type(err).__name__}: {err})"
    if not isinstance(data, dict):
        return None, f"unreadable (expected a JSON object, got {type(data).__name__})"
    return data, None


# --------------------------------------------------------------------------- plots


def _mean_curve(runs: list[dict], key: str) -> np.ndarray | None:
    """Mean over seeds of one per-epoch value; None when no run has a curve."""
    curves = [[float(p[key]) for p in r["curve"]] for r in runs if r.get("curve")]
    if not curves:
        return None
    length = min(len(c) for c in curves)
    return np.mean([c[:length] for c in curves], axis=0)


# Line style and marker per method, so that methods whose curves coincide (L1 with a
# tiny coefficient and plain share seeds) still show as two lines.
_STYLES = (("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ((0, (5, 1, 1, 1)), "v"))


def _integer_ticks(ax) -> None:
    """Only whole numbers on the x axis (epochs, episodes)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_curves(results: dict, path: Path) -> Path:
    """Validation and training accuracy per epoch, mean over seeds, one line per method."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), constrained_layout=True, sharey=True)
    for number, (method, entry) in enumerate(results["methods"].items()):
        line, marker = _STYLES[number % len(_STYLES)]
        for ax, key in zip(axes, ("val_acc", "train_acc")):
            curves = [[p[key] * 100 for p in r["curve"]] for r in entry["runs"] if r["curve"]]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            curves = np.array([c[:length] for c in curves])
            mean, epochs = curves.mean(axis=0), np.arange(1, length + 1)
            ax.plot(epochs, mean, linestyle=line, marker=marker, ms=4, alpha=0.9, label=method)
            if len(curves) > 1:
                std = curves.std(axis=0)
                ax.fill_between(epochs, mean - std, mean + std, alpha=0.12)
    axes[0].set_ylabel("accuracy %")
    for ax, what in zip(axes, ("validation", "training")):
        ax.set_xlabel("epoch")
        _integer_ticks(ax)
        ax.set_title(f"{what} accuracy, {results['task']} (mean +- std over seeds)", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _positive(values: np.ndarray) -> np.ndarray:
    """Values for a log axis: zeros (no ENN term) become gaps."""
    return np.where(values > 0, values, np.nan)


def _gradient_curves(results: dict):
    """(method, strength, task gradient norm, ENN gradient norm), per-epoch means over seeds."""
    for method in (m for m in ENN_METHODS if m in results["methods"]):
        runs = results["methods"][method]["runs"]
        strength = _mean_curve(runs, "strength")
        if strength is not None:
            yield (method, strength, _mean_curve(runs, "task_grad_norm"),
                   _mean_curve(runs, "enn_grad_norm"))


def plot_schedule(results: dict, path: Path) -> Path | None:
    """Per epoch, for the ENN methods: strength, ENN and task gradient norms, their ratio."""
    enn_methods = [m for m in ENN_METHODS if m in results["methods"]]
    if not enn_methods:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    colors = dict(zip(enn_methods, ("tab:blue", "tab:orange")))
    for method, strength, task_norm, enn_norm in _gradient_curves(results):
        color = colors[method]
        epochs = np.arange(1, len(strength) + 1)
        axes[0].plot(epochs, strength, marker="o", ms=3, color=color, label=method)
        axes[1].plot(epochs, _positive(task_norm), "-", marker="o", ms=3, color=color,
                     label=f"{method}: task")
        axes[1].plot(epochs, _positive(enn_norm), "--", marker="s", ms=3, color=color,
                     label=f"{method}: ENN term")
        axes[2].plot(epochs, _positive(enn_norm / np.maximum(task_norm, 1e-12)), marker="o",
                     ms=3, color=color, label=method)
    who = "the actor chose" if results.get("strength") == "actor" else "used"
    axes[0].set_title(f"ENN strength {who} (last step of each epoch)", fontsize=10)
    axes[0].set_ylabel("strength")
    axes[1].set_title("gradient norm over the weights", fontsize=10)
    axes[2].set_title("|ENN gradient| / |task gradient|", fontsize=10)
    for ax in axes[1:]:
        ax.set_yscale("log")
    for ax in axes:
        ax.set_xlabel("epoch")
        _integer_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_rl(record: dict, path: Path) -> Path | None:
    """Final validation accuracy and mean strength of each RL episode."""
    episodes = record.get("episodes", [])
    if not episodes:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6), constrained_layout=True)
    acc = [e["val_acc"] * 100 for e in episodes]
    ax.plot(acc, ".", alpha=0.4, label="episode val acc %")
    window = max(1, len(acc) // 10)
    ax.plot(np.convolve(acc, np.ones(window) / window, mode="valid"), label="moving mean")
    ax2 = ax.twinx()
    ax2.plot([e["mean_strength"] for e in episodes], color="tab:red", alpha=0.5, lw=1)
    ax2.set_ylabel("mean strength", color="tab:red")
    ax.set_xlabel("episode")
    _integer_ticks(ax)
    ax.set_ylabel("validation accuracy %")
    ax.set_title("RL training of the ENN")
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- sections


def _esc(value) -> str:
    return html.escape(str(value))


def _short(value) -> str:
    """A float to 4 significant digits (0.2554, not 0.25540000200271606); others as is."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _share(value) -> str:
    """A top-10% share; NaN (a map that is 0 everywhere) says so instead."""
    value = float(value)
    return f"{value:.2f}" if np.isfinite(value) else "map is 0"


def _img(run_dir: Path, path: Path, caption: str) -> str:
    src = Path(os.path.relpath(path, run_dir)).as_posix()
    return (f'<figure><img src="{_esc(src)}" alt="{_esc(caption)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def _table(columns: list[str], rows: list[list], table_id: str = "") -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>"
                   for row in rows)
    attr = f' id="{table_id}"' if table_id else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _comparison(results: dict, run_dir: Path, plots: Path) -> str:
    tests = "".join(
        f"<li>{_esc(name)}: {t['diff_points']:+.2f} points, Welch p = {t['p']:.3g}</li>"
        for name, t in results.get("tests", {}).items())
    strength = results.get("strength")
    parts = [
        f'<h2 id="sec-comparison">Comparison on {_esc(results["task"])}</h2>',
        f"<p>Test accuracy over seeds {_esc(results.get('seeds'))}; L1 coefficient "
        f"{_esc(results.get('l1'))}; ENN strength {_esc(strength)}.</p>",
        _table(TABLE_COLUMNS, table_rows(results), table_id="comparison"),
        f"<ul>{tests}</ul>" if tests else "",
        "<h3>Learning curves per method</h3>",
        _img(run_dir, plot_curves(results, plots / "curves.png"),
             "validation and training accuracy per epoch, mean over seeds"),
    ]
    schedule = plot_schedule(results, plots / "schedule.png")
    if schedule:
        parts += ["<h3>Strength schedule and the size of the ENN gradient</h3>",
                  _schedule_text(results),
                  _img(run_dir, schedule, "ENN strength, gradient norms and their ratio per "
                                          "epoch (mean over seeds)")]
    return "\n".join(parts)


def _schedule_text(results: dict) -> str:
    """One sentence per ENN method: strength and gradient ratio at the first and last epoch."""
    items = []
    for method, strength, task_norm, enn_norm in _gradient_curves(results):
        ratio = enn_norm / np.maximum(task_norm, 1e-12)
        items.append(f"<li>{_esc(method)}: strength {strength[0]:.3g} in epoch 1, "
                     f"{strength[-1]:.3g} in epoch {len(strength)}; |ENN grad| / |task grad| "
                     f"{ratio[0]:.3g} then {ratio[-1]:.3g}.</li>")
    return f"<ul>{''.join(items)}</ul>"


def _rl(record: dict, run_dir: Path, plots: Path) -> str:
    meta = record.get("metadata", {})
    parts = ['<h2 id="sec-rl">ENN training by RL</h2>',
             "<p>" + _esc(", ".join(f"{k}: {_short(v)}" for k, v in meta.items())) + "</p>"]
    rl = plot_rl(record, plots / "rl.png")
    if rl:
        parts.append(_img(run_dir, rl, "RL episodes: final validation accuracy and strength"))
    return "\n".join(parts)


def _gradcam(run_dir: Path, problems: list[str]) -> str | None:
    folder = run_dir / "gradcam"
    summary, why = read_part(folder, "gradcam.json")
    if summary is None:
        pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if not pngs:
            return None
        problems.append("gradcam/gradcam.json (missing: the Grad-CAM figures are shown without "
                        "their summary)" if why == "missing" else f"gradcam/gradcam.json: {why}")
        return "\n".join(['<h2 id="sec-gradcam">Grad-CAM</h2>']
                         + [_img(run_dir, p, p.stem) for p in pngs])
    snapshots, layers = summary["snapshots"], summary["layers"]
    rows = []
    for s, snap in enumerate(snapshots):
        score = snap.get("enn_score")
        rows.append([snap["label"], snap["step"], f"{100 * snap['progress']:.0f}%",
                     "" if score is None else f"{score:.4f}"]
                    + [_share(layer["top10_share"][s]) for layer in layers])
    columns = ["point", "step", "budget used", "ENN score"] + [
        f"layer {layer['index']}: top-10% share" for layer in layers]
    parts = [
        '<h2 id="sec-gradcam">Grad-CAM: what the ENN\'s score rests on</h2>',
        f"<p>ENN layer {_esc(summary.get('enn_layer'))}; one target network "
        f"({_esc(summary.get('task'))}, seed {_esc(summary.get('seed'))}) trained with the ENN "
        f"term (strength {_esc(summary.get('strength'))}). Per layer, one row per point of "
        "training: left the weight matrix (one colour scale for all rows), right the Grad-CAM "
        "relevance of the ENN's score interpolated to the matrix's shape (each panel has its "
        "own scale; its maximum is in the title). The top-10% share is the part of the total "
        "relevance held by the most relevant tenth of the weights (0.1 means flat; \"map "
        "is 0\" where Grad-CAM finds no region that raises the score).</p>",
        _table(columns, rows, table_id="gradcam-points"),
    ]
    for layer in layers:
        path = folder / layer["grid"]
        if not path.is_file():
            problems.append(f"gradcam/{layer['grid']} (listed in gradcam/gradcam.json)")
            continue
        shape = "x".join(str(v) for v in layer["shape"])
        parts.append(_img(run_dir, path, f"layer {layer['index']} ({shape}; image "
                                         f"{'x'.join(str(v) for v in layer['image_shape'])}) "
                                         "over training"))
    return "\n".join(parts)


def _prune(result: dict, run_dir: Path, plots: Path) -> str:
    from gradinstructor.prune import CASES, CRITERIA, plot_prune

    sparsities = result["sparsities"]
    lookup = {(r["case"], r["criterion"], round(r["sparsity"], 6)): r for r in result["rows"]}
    rows = []
    for case in CASES:
        for criterion in CRITERIA:
            cells = []
            for s in sparsities:
                row = lookup.get((case, criterion, round(s, 6)))
                cells.append("" if row is None else f"{row['mean']:.2f} ± {row['std']:.2f}")
            rows.append([case, criterion, f"{result['dense'][case]:.2f}", *cells])
    columns = ["case", "criterion", "dense"] + [f"{100 * s:g}% removed" for s in sparsities]
    cases = "".join(f"<li><b>{_esc(k)}</b>: {_esc(v)}</li>" for k, v in result["cases"].items())
    found = "".join(f"<li>{_esc(f)}</li>" for f in result.get("findings", []))
    seconds = result.get("seconds")
    timing = f" The check took {seconds:.0f} s." if isinstance(seconds, (int, float)) else ""
    return "\n".join([
        '<h2 id="sec-prune">Lottery-ticket check: which weights carry the network?</h2>',
        f"<p>At each sparsity every weight matrix keeps the same number of weights, chosen by "
        f"Grad-CAM relevance, by magnitude or at random ({result['draws']} draws for random "
        f"masks and Grad-CAM tie-breaks, {result['train_draws']} of them trained; mean ± std). "
        f"Accuracy % on the {_esc(result['split'])} split; chance is "
        f"{result['chance']:.0f}%.{timing}</p><ul>{cases}</ul>",
        _table(columns, rows, table_id="prune"),
        _img(run_dir, plot_prune(result, plots / "prune.png"),
             "accuracy kept against sparsity, per case and criterion"),
        f"<h3>What the numbers support, and what they do not</h3><ul>{found}</ul>",
    ])


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``report.html`` and its plots into ``run_dir``.

    Args:
        run_dir: a run folder (see :mod:`gradinstructor.pipeline`).

    Returns:
        The path of ``report.html``.

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist; pass the --out "
                                "folder of an earlier command")
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    problems: list[str] = []
    sections: list[str] = []

    def add(part: str, build: Callable[[], str | None]) -> None:
        try:
            text = build()
        except _MALFORMED as err:
            logger.warning("report: %s could not be rendered: %r", part, err)
            problems.append(f"{part} (could not be rendered: {type(err).__name__}: {err})")
            return
        if text:
            sections.append(text)
        elif part == "gradcam":
            problems.append(f"gradcam ({PARTS['gradcam']})")

    for name, build in (("results.json", lambda d: _comparison(d, run_dir, plots)),
                        ("train_enn.json", lambda d: _rl(d, run_dir, plots))):
        data, why = read_part(run_dir, name)
        if data is None:
            problems.append(f"{name} ({PARTS[name]})" if why == "missing" else f"{name}: {why}")
        else:
            add(name, lambda b=build, d=data: b(d))
    add("gradcam", lambda: _gradcam(run_dir, problems))
    data, why = read_part(run_dir, "prune.json")
    if data is None:
        problems.append(f"prune.json ({PARTS['prune.json']})" if why == "missing"
                        else f"prune.json: {why}")
    else:
        add("prune.json", lambda: _prune(data, run_dir, plots))

    notice = ""
    if problems:
        items = "".join(f"<li>{_esc(p)}</li>" for p in problems)
        notice = (f'<div class="missing" id="missing"><b>Missing or unreadable parts of this '
                  f"run folder</b> (the rest is shown below):<ul>{items}</ul></div>")
    nav = " · ".join(f'<a href="#{i}">{t}</a>' for i, t in (
        ("sec-comparison", "comparison"), ("sec-rl", "RL"), ("sec-gradcam", "Grad-CAM"),
        ("sec-prune", "lottery-ticket check")) if f'id="{i}"' in "".join(sections))
    page = _PAGE.format(title=_esc(f"Grad-Instructor run {run_dir.name}"),
                        nav=f"<nav>{nav}</nav>" if nav else "", notice=notice,
                        body="\n".join(sections))
    path = run_dir / PAGE_NAME
    path.write_text(page, encoding="utf-8")
    return path


def missing_parts(run_dir: str | os.PathLike) -> list[str]:
    """The parts of the run folder (see :data:`PARTS`) that are absent."""
    run_dir = Path(run_dir)
    missing = []
    for name in PARTS:
        path = run_dir / name
        if not path.exists() or (path.is_dir() and not any(path.glob("*.png"))):
            missing.append(name)
    return missing


# --------------------------------------------------------------------------- tracker


def log_dashboard(run_dir: str | os.PathLike, tracker, log_stage_outputs: bool = True) -> None:
    """Log the dashboard's content to a tracker (a wandb run): metrics, tables, images.

    Logs the mean learning curves per method as metrics (one step per epoch,
    ``train/mean/{method}/{key}`` against ``train/epoch``) and the dashboard's plots
    as images; with ``log_stage_outputs`` also the comparison and prune tables and
    the Grad-CAM figures, which the stages log themselves when they run with a tracker.
    Call :func:`write_report` first, so that the plots exist.

    Args:
        run_dir: the run folder.
        tracker: a :class:`~gradinstructor.tracking.Tracker`.
        log_stage_outputs: also log the stages' own outputs (see above).
    """
    from gradinstructor import prune as prune_mod

    run_dir = Path(run_dir)
    results, _ = read_part(run_dir, "results.json")
    if results is not None:
        try:
            _log_curves(results, tracker)
            if log_stage_outputs:
                tracker.log_table("eval/comparison", TABLE_COLUMNS, table_rows(results))
        except _MALFORMED as err:
            logger.warning("results.json could not be logged: %r", err)
    for name, key in (("curves.png", "eval/curves"), ("schedule.png", "train/schedule"),
                      ("rl.png", "rl/episodes")):
        if (run_dir / "plots" / name).is_file():
            tracker.log_image(key, run_dir / "plots" / name, caption=name)
    if not log_stage_outputs:
        return
    pruned, _ = read_part(run_dir, "prune.json")
    if pruned is not None:
        try:
            tracker.log_table("explain/prune", prune_mod.TABLE_COLUMNS,
                              prune_mod.table_rows(pruned))
        except _MALFORMED as err:
            logger.warning("prune.json could not be logged: %r", err)
        if (run_dir / "plots" / "prune.png").is_file():
            tracker.log_image("explain/prune_plot", run_dir / "plots" / "prune.png")
    for grid in sorted((run_dir / "gradcam").glob("layer*.png")):
        tracker.log_image(f"explain/gradcam_over_training/{grid.stem}", grid, caption=grid.stem)


def _log_curves(results: dict, tracker) -> None:
    """One tracker step per epoch with every method's mean curve values."""
    keys = ("val_acc", "train_acc", "strength", "task_grad_norm", "enn_grad_norm")
    means = {}
    for method, entry in results["methods"].items():
        for key in keys:
            curve = _mean_curve(entry["runs"], key)
            if curve is not None and (key not in keys[2:] or method in ENN_METHODS):
                means[f"train/mean/{method}/{key}"] = curve
    if not means:
        return
    epochs = min(len(c) for c in means.values())
    for e in range(epochs):
        tracker.log({"train/epoch": e + 1, **{k: float(c[e]) for k, c in means.items()}})


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px;
       padding: 0 1em; color: #222; line-height: 1.45; }}
h1 {{ font-size: 1.6em; margin-bottom: 0.2em; }}
h2 {{ border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }}
nav {{ margin-bottom: 1em; }}
nav a {{ color: #1a5fb4; text-decoration: none; }}
table {{ border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }}
th, td {{ border: 1px solid #bbb; padding: 3px 9px; text-align: right; }}
th {{ background: #f0f0f0; }}
th:first-child, td:first-child {{ text-align: left; }}
#prune th:nth-child(2), #prune td:nth-child(2) {{ text-align: left; }}
tbody tr:nth-child(even) {{ background: #fafafa; }}
img {{ max-width: 100%; }}
figure {{ margin: 1em 0; }}
figcaption {{ color: #555; font-size: 0.9em; }}
.missing {{ background: #fff3cd; border: 1px solid #e0c060; padding: 0.5em 1em; }}
</style></head>
<body><h1>{title}</h1>
{nav}
{notice}
{body}
</body></html>
"""
