"""Report: a self-contained local HTML dashboard of one run folder.

A run folder holds what the pipeline wrote: ``results.json`` (the comparison),
``train_enn.json`` (RL episodes), ``gradcam/*.png`` and ``enn.pt``. The
dashboard (``report.html`` in the same folder) shows the comparison table,
learning curves per method, the strength schedule the actor chose, the size of
the ENN gradient against the task gradient over training, and the Grad-CAM
images. Images are PNG files next to the page; nothing is fetched from a
network. Missing parts are listed at the top and the rest still renders.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np

from gradinstructor.compare import TABLE_COLUMNS, table_rows

PARTS = {
    "results.json": "the comparison (gradinstructor compare)",
    "train_enn.json": "the RL training record (gradinstructor train-enn)",
    "gradcam": "the Grad-CAM images (gradinstructor explain)",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def plot_curves(results: dict, path: Path) -> Path:
    """Validation accuracy per epoch, mean over seeds, one line per method."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
    for method, entry in results["methods"].items():
        curves = [[p["val_acc"] * 100 for p in r["curve"]] for r in entry["runs"] if r["curve"]]
        if not curves:
            continue
        mean = np.mean(curves, axis=0)
        epochs = np.arange(1, len(mean) + 1)
        ax.plot(epochs, mean, marker="o", ms=3, label=method)
        if len(curves) > 1:
            std = np.std(curves, axis=0)
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy %")
    ax.set_title(f"learning curves, {results['task']}")
    ax.legend()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_schedule(results: dict, path: Path) -> Path | None:
    """ENN strength and ENN / task gradient norms per epoch for the ENN methods."""
    enn_methods = [m for m in ("enn", "he+enn") if m in results["methods"]]
    if not enn_methods:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    for method in enn_methods:
        runs = results["methods"][method]["runs"]
        strength = np.mean([[p["strength"] for p in r["curve"]] for r in runs], axis=0)
        ratio = np.mean([[p["enn_grad_norm"] / max(p["task_grad_norm"], 1e-12)
                          for p in r["curve"]] for r in runs], axis=0)
        epochs = np.arange(1, len(strength) + 1)
        ax1.plot(epochs, strength, marker="o", ms=3, label=method)
        ax2.plot(epochs, ratio, marker="o", ms=3, label=method)
    ax1.set_title("ENN strength at the start of each epoch")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("strength")
    ax2.set_title("|ENN gradient| / |task gradient|")
    ax2.set_xlabel("epoch")
    ax2.set_yscale("log")
    for ax in (ax1, ax2):
        ax.legend()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_rl(record: dict, path: Path) -> Path | None:
    """Final validation accuracy and mean strength of each RL episode."""
    episodes = record.get("episodes", [])
    if not episodes:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
    acc = [e["val_acc"] * 100 for e in episodes]
    ax.plot(acc, ".", alpha=0.4, label="episode val acc %")
    window = max(1, len(acc) // 10)
    ax.plot(np.convolve(acc, np.ones(window) / window, mode="valid"), label="moving mean")
    ax2 = ax.twinx()
    ax2.plot([e["mean_strength"] for e in episodes], color="tab:red", alpha=0.5, lw=1)
    ax2.set_ylabel("mean strength", color="tab:red")
    ax.set_xlabel("episode")
    ax.set_ylabel("validation accuracy %")
    ax.set_title("RL training of the ENN")
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _table_html(results: dict) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in TABLE_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in table_rows(results))
    tests = "".join(
        f"<li>{html.escape(name)}: {t['diff_points']:+.2f} points, Welch p = {t['p']:.3g}</li>"
        for name, t in results.get("tests", {}).items())
    return (f'<table id="comparison"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            f"</table><ul>{tests}</ul>")


def missing_parts(run_dir: Path) -> list[str]:
    """Which of the run folder's parts are absent."""
    missing = []
    for name, what in PARTS.items():
        path = run_dir / name
        if not path.exists() or (path.is_dir() and not any(path.glob("*.png"))):
            missing.append(f"{name} ({what})")
    return missing


def _img(src: str, alt: str) -> str:
    return f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}"><figcaption>' \
           f"{html.escape(alt)}</figcaption></figure>"


def write_report(run_dir: str | os.PathLike) -> Path:
    """Write ``report.html`` (and its plots) into ``run_dir``; return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    sections = []
    missing = missing_parts(run_dir)
    if missing:
        items = "".join(f"<li>{html.escape(m)}</li>" for m in missing)
        sections.append(f'<div class="missing"><b>Missing from this run folder:</b>'
                        f"<ul>{items}</ul></div>")

    results = _read_json(run_dir / "results.json")
    if results:
        sections.append(f"<h2>Comparison on {html.escape(results['task'])}</h2>"
                        + _table_html(results))
        sections.append(_img(os.path.relpath(plot_curves(results, plots / "curves.png"),
                                             run_dir), "validation accuracy per epoch"))
        schedule = plot_schedule(results, plots / "schedule.png")
        if schedule:
            sections.append(_img(os.path.relpath(schedule, run_dir),
                                 "ENN strength and gradient size over training"))

    record = _read_json(run_dir / "train_enn.json")
    if record:
        meta = record.get("metadata", {})
        sections.append("<h2>ENN training by RL</h2><p>" + html.escape(
            ", ".join(f"{k}: {v}" for k, v in meta.items())) + "</p>")
        rl = plot_rl(record, plots / "rl.png")
        if rl:
            sections.append(_img(os.path.relpath(rl, run_dir), "RL episodes"))

    cams = sorted((run_dir / "gradcam").glob("*.png")) if (run_dir / "gradcam").is_dir() else []
    if cams:
        sections.append("<h2>Grad-CAM: what the ENN's score rests on</h2>"
                        "<p>Left: the weight matrix. Right: Grad-CAM relevance of the ENN's "
                        "score, interpolated to the weight matrix's shape.</p>")
        sections += [_img(os.path.relpath(p, run_dir), p.stem) for p in cams]

    page = _PAGE.format(title=html.escape(f"Grad-Instructor run {run_dir.name}"),
                        body="\n".join(sections))
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #bbb; padding: 4px 10px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}
figure {{ margin: 1em 0; }}
.missing {{ background: #fff3cd; border: 1px solid #e0c060; padding: 0.5em 1em; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""
