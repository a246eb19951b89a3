"""The stages as functions over a run folder: train-enn, compare, explain, report, demo.

Each stage reads and writes files in one run folder, so the CLI, tests and
users' scripts drive the same code:

    RUN/enn.pt            the ENN checkpoint (with the actor's schedule)
    RUN/agent.pt          the agent's last periodic save, for train-enn --resume
    RUN/train_enn.json    RL episodes and ENN metadata
    RUN/results.json      the comparison
    RUN/gradcam/          Grad-CAM over training: layer{i}.png, steps/*.png, gradcam.json
    RUN/prune.json        the lottery-ticket check (explain --prune); plot in RUN/plots/
    RUN/plots/            the dashboard's plots
    RUN/report.html       the dashboard
    RUN/wandb/            the offline wandb run
    RUN/run_info.json     seed, settings and package versions
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import sys
import time
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradinstructor.compare import METHODS, TABLE_COLUMNS, compare, format_table, table_rows
from gradinstructor.config import load_agent_config
from gradinstructor.enn import ENN
from gradinstructor.tasks import Task, load_task
from gradinstructor.tracking import NullTracker, Tracker
from gradinstructor.trainer import DEFAULT_ENN_EVERY

logger = logging.getLogger(__name__)

# The agent's state is written every this many rollouts: a write takes milliseconds,
# a rollout seconds to minutes, so every rollout costs nothing noticeable.
DEFAULT_SAVE_EVERY = 1
AGENT_STATE = "agent.pt"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_json(path: Path, data: Any) -> Path:
    """Write JSON atomically (temporary file, flushed to disk, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, default=_jsonable)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def record_run_info(run_dir: Path, stage: str, settings: dict) -> None:
    """Add this stage's seed, settings and package versions to ``run_info.json``."""
    path = run_dir / "run_info.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    versions = {}
    for pkg in ("gradinstructor", "torch", "stable-baselines3", "gymnasium", "captum",
                "numpy", "wandb"):
        try:
            versions[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            versions[pkg] = None
    info[stage] = {"settings": settings, "python": sys.version.split()[0],
                   "platform": platform.platform(), "packages": versions}
    write_json(path, info)


def stage_train_enn(task: Task, run_dir: Path, agent: str = "ppo", timesteps: int = 2000,
                    seed: int = 0, enn_every: int = DEFAULT_ENN_EVERY,
                    tracker: Tracker | None = None, progress_bar: bool = True,
                    agent_overrides: dict | None = None,
                    save_every: int = DEFAULT_SAVE_EVERY, resume: bool = False,
                    task_spec: str | None = None) -> ENN:
    """Train an ENN by RL and write ``enn.pt`` and ``train_enn.json``.

    The agent's state goes to ``RUN/agent.pt`` every ``save_every`` rollouts, on
    Ctrl-C and at the end (atomically; tensors and plain data only). With
    ``resume`` the run continues from it to the same total of ``timesteps``; the
    settings must be the saved ones (:func:`read_saved_settings` gives them).

    Raises:
        FileNotFoundError: ``resume`` without ``RUN/agent.pt``.
        SettingsError: ``resume`` with settings other than the saved ones.
    """
    from gradinstructor.agent import load_agent_state, train_enn

    agent_cfg = load_agent_config(agent, **(agent_overrides or {}))
    state_path = run_dir / AGENT_STATE
    resume_from = None
    if resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"nothing to resume: {state_path} does not exist; run "
                                    "train-enn without --resume to start a new run")
        resume_from = load_agent_state(state_path)
    elif state_path.is_file():
        logger.warning("%s holds an earlier run's agent state; it will be overwritten "
                       "(use --resume to continue that run instead)", state_path)
    seed_everything(seed)
    result = train_enn(task, agent_cfg, total_timesteps=timesteps, seed=seed,
                       enn_every=enn_every, tracker=tracker, progress_bar=progress_bar,
                       save_path=state_path, save_every=save_every, resume_from=resume_from,
                       settings_extra={"task_spec": task_spec or task.name,
                                       "agent_spec": agent})
    result.enn.save(run_dir / "enn.pt")
    write_json(run_dir / "train_enn.json",
               {"metadata": result.enn.metadata, "episodes": result.episodes})
    record_run_info(run_dir, "train-enn", {"task": task.name, "device": str(task.device),
                                           "agent": dataclasses.asdict(agent_cfg),
                                           "timesteps": timesteps, "seed": seed,
                                           "enn_every": enn_every, "save_every": save_every,
                                           "resumed_at": result.enn.metadata.get("resumed_at",
                                                                                 [])})
    if tracker is not None:
        for episode in result.episodes[-1:]:
            tracker.log({"rl/final_val_acc": episode["val_acc"]})
    return result.enn


def read_saved_settings(run_dir: Path) -> dict:
    """The settings of the run saved in ``RUN/agent.pt`` (task spec, agent, timesteps, ...).

    Raises:
        FileNotFoundError: there is no ``RUN/agent.pt``.
        CheckpointError: it is damaged or not an agent state.
    """
    from gradinstructor.agent import load_agent_state

    path = run_dir / AGENT_STATE
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist; run train-enn "
                                "without --resume to start a new run")
    state = load_agent_state(path)
    return {**state["settings"], "num_timesteps": state["num_timesteps"]}


def stage_compare(task: Task, run_dir: Path, enn: ENN | None, seeds: list[int],
                  methods: list[str] | tuple[str, ...] = METHODS, strength: Any = None,
                  enn_every: int = DEFAULT_ENN_EVERY, tracker: Tracker | None = None,
                  progress_bar: bool = True) -> dict:
    """Compare the methods over seeds; write ``results.json``; return the results."""
    from tqdm.auto import tqdm

    tracker = tracker or NullTracker()
    bar = tqdm(total=len(methods) * len(seeds), desc="compare", unit="run",
               disable=not progress_bar, leave=False)
    counter = {"n": 0}

    def on_run(method: str, record: dict) -> None:
        bar.update(1)
        bar.set_postfix(method=method, test=f"{record['test_acc']:.3f}")
        counter["n"] += 1
        for point in record["curve"]:
            tracker.log({f"train/{method}/val_acc": point["val_acc"],
                         f"train/{method}/strength": point["strength"]})
        tracker.log({f"eval/{method}/test_acc": record["test_acc"],
                     f"eval/{method}/gap": record["gap"]})

    try:
        results = compare(task, enn, methods=methods, seeds=seeds, strength=strength,
                          enn_every=enn_every, on_run=on_run)
    finally:
        bar.close()
    write_json(run_dir / "results.json", results)
    tracker.log_table("eval/comparison", TABLE_COLUMNS, table_rows(results))
    record_run_info(run_dir, "compare", {"task": task.name, "device": str(task.device),
                                         "seeds": seeds, "methods": list(methods),
                                         "strength": results["strength"],
                                         "enn_every": enn_every})
    return results


def stage_explain(task: Task, run_dir: Path, enn: ENN, seed: int = 0,
                  layer: str | None = None, tracker: Tracker | None = None,
                  prune: bool = False, draws: int | None = None) -> list[Path]:
    """Grad-CAM of the ENN over the training of a target network; optionally the prune check.

    Trains one target network with the ENN term (the actor's schedule, else
    strength 10), copies its weights at init, 25%, 50% and 100% of the budget,
    and writes ``gradcam/`` (see :func:`gradinstructor.explain.save_series`). With
    ``prune`` it also runs the lottery-ticket check on that network and its
    initialisation and writes ``prune.json`` and ``plots/prune.png``.

    Args:
        task: the task.
        run_dir: the run folder.
        enn: the ENN to explain; it is moved (in place) to the task's device.
        seed: initialisation and minibatch order of the explained network.
        layer: ENN layer for Grad-CAM; default its last convolution.
        tracker: gets each layer's image at each snapshot, the ENN score and the
            prune table.
        prune: run the lottery-ticket check (:func:`gradinstructor.prune.prune_check`).
        draws: random masks per criterion in the check (default 5, at least 2); up
            to 3 of them are also trained.

    Returns:
        The files written.

    Raises:
        ValueError: unknown ``layer`` (lists the valid ones) or, with ``prune``, fewer
            than 2 ``draws``; raised before any training.
    """
    from gradinstructor import prune as prune_mod
    from gradinstructor.agent import load_actor
    from gradinstructor.explain import (
        enn_scores,
        gradcam_series,
        layer_name,
        save_series,
        train_with_snapshots,
    )

    tracker = tracker or NullTracker()
    name = layer_name(enn, layer)  # fail before training on a bad layer name
    enn = enn.to(task.device)  # Grad-CAM and the prune check run where the task's networks do
    draws = prune_mod.DEFAULT_DRAWS if draws is None else draws
    if prune and (not isinstance(draws, int) or draws < 2):
        raise ValueError(f"draws must be an integer of at least 2 (mean and std need two), "
                         f"but got {draws!r}")
    # as many draws trained as the default, but never more than there are
    train_draws = min(prune_mod.DEFAULT_TRAIN_DRAWS, draws)
    start = time.perf_counter()
    init_model = task.build_model(seed=seed)
    model = task.build_model(seed=seed)
    strength = load_actor(enn) or 10.0
    snapshots, _ = train_with_snapshots(task, model, enn, seed, strength=strength)
    series = gradcam_series(enn, model, snapshots, layer=name)
    scores = enn_scores(enn, model, snapshots)
    out = run_dir / "gradcam"
    summary = save_series(series, snapshots, out, scores=scores, enn_layer=name,
                          task=task.name, seed=seed,
                          strength="actor" if hasattr(strength, "choose") else strength)
    paths = [out / layer_info["grid"] for layer_info in summary["layers"]]
    for snap in summary["snapshots"]:
        tracker.log({"explain/enn_score": snap["enn_score"], "explain/progress": snap["progress"]})
        for index, file in enumerate(snap["files"]):
            tracker.log_image(f"explain/gradcam/layer{index}", out / file,
                              caption=f"layer {index} at {snap['label']} (step {snap['step']})")
    logger.info("Grad-CAM over training in %.1f s", time.perf_counter() - start)
    record_run_info(run_dir, "explain", {"task": task.name, "device": str(task.device),
                                         "seed": seed, "layer": name, "prune": prune,
                                         "draws": draws})
    if not prune:
        return paths

    result = prune_mod.prune_check(task, enn, init_model, model, layer=name, seed=seed,
                                   draws=draws, train_draws=train_draws)
    result["explain_seconds"] = time.perf_counter() - start
    paths.append(write_json(run_dir / "prune.json", result))
    (run_dir / "plots").mkdir(exist_ok=True)
    paths.append(prune_mod.plot_prune(result, run_dir / "plots" / "prune.png"))
    tracker.log_table("explain/prune", prune_mod.TABLE_COLUMNS, prune_mod.table_rows(result))
    tracker.log_image("explain/prune_plot", paths[-1], caption="accuracy kept against sparsity")
    return paths


def stage_report(run_dir: Path, tracker: Tracker | None = None,
                 log_stage_outputs: bool = True) -> Path:
    """Write the dashboard ``report.html``; with a tracker, log its content there too.

    Args:
        run_dir: the run folder.
        tracker: also gets the mean curves as metrics and the plots as images.
        log_stage_outputs: also log what the stages log themselves (the comparison
            and prune tables, the Grad-CAM images); off when they already did.
    """
    from gradinstructor.report import log_dashboard, write_report

    path = write_report(run_dir)
    if tracker is not None:
        log_dashboard(run_dir, tracker, log_stage_outputs=log_stage_outputs)
    return path


@dataclasses.dataclass
class DemoBudget:
    """Budgets of ``demo`` (full) and ``demo --quick``."""

    timesteps: int
    seeds: int


# 1,200 RL segments: the whole demo takes under 3 minutes on 2 cores (README, Wall times).
DEMO_FULL = DemoBudget(timesteps=1200, seeds=5)
DEMO_QUICK = DemoBudget(timesteps=80, seeds=2)


def demo(run_dir: Path, quick: bool = False, task_name: str = "mnist5k", seed: int = 0,
         tracker_kind: str = "wandb", progress_bar: bool = True,
         echo=print, device: str | torch.device = "auto") -> dict:
    """Train an ENN by RL, compare the methods, explain the ENN, write the report.

    ``device`` (auto, cpu or cuda; auto is CUDA when available) is where every stage
    runs; one this machine cannot use raises ValueError before anything is written.
    """
    from gradinstructor.device import resolve_device
    from gradinstructor.tracking import make_tracker

    device = resolve_device(device)  # before the run folder is made
    budget = DEMO_QUICK if quick else DEMO_FULL
    start = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    task = load_task(task_name, device=device)
    if quick:
        task = shrink_task(task)
    tracker = make_tracker(tracker_kind, directory=run_dir, name=run_dir.name,
                           config={"task": task.name, "quick": quick, "seed": seed,
                                   "timesteps": budget.timesteps, "seeds": budget.seeds,
                                   "device": str(task.device)})
    try:
        echo(f"[1/4] training the ENN by RL on {task.name} ({budget.timesteps} segments)")
        enn = stage_train_enn(task, run_dir, timesteps=budget.timesteps, seed=seed,
                              tracker=tracker, progress_bar=progress_bar)
        echo(f"[2/4] comparing {', '.join(METHODS)} over {budget.seeds} seeds")
        results = stage_compare(task, run_dir, enn, seeds=list(range(budget.seeds)),
                                tracker=tracker, progress_bar=progress_bar)
        echo("[3/4] Grad-CAM on the ENN over training, and the lottery-ticket check")
        stage_explain(task, run_dir, enn, seed=seed, tracker=tracker, prune=True)
        echo("[4/4] writing the report")
        report = stage_report(run_dir, tracker=tracker, log_stage_outputs=False)
    finally:
        tracker.finish()
    echo(format_table(results))
    echo(f"report: {report}")
    echo(f"done in {time.perf_counter() - start:.0f} s")
    return results


def shrink_task(task: Task, train: int = 600, epochs: int = 3) -> Task:
    """A smaller copy of ``task`` for quick runs: fewer training examples and epochs."""
    data = dataclasses.replace(task.data, train_x=task.data.train_x[:train],
                               train_y=task.data.train_y[:train])
    config = dataclasses.replace(task.config, epochs=epochs, segments=min(task.config.segments, 4))
    return dataclasses.replace(task, config=config, data=data)  # keeps the task's device
