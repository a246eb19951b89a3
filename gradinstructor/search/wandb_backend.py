"""``--backend wandb``: the same sweep file, run by W&B's sweep server and agents.

The file is already in W&B's format; the translation fills in what W&B needs
and keeps the rest: the metric becomes the key a trial logs (``eval/gain``),
the study name becomes the sweep's name, ``--trials`` its ``run_cap`` and
``--seeds`` a constant parameter. Each W&B run then executes the same trial
function as an Optuna trial (:func:`~gradinstructor.search.trial.run_trial`).

Example:
    >>> config = to_wandb_sweep(load_sweep("strength"), trials=6)    # doctest: +SKIP
    >>> config["metric"]                                             # doctest: +SKIP
    {'name': 'eval/gain', 'goal': 'maximize'}
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from pathlib import Path

from gradinstructor.config import SettingsError
from gradinstructor.search.sweepfile import Sweep

logger = logging.getLogger(__name__)


def to_wandb_sweep(sweep: Sweep, trials: int | None = None, name: str | None = None) -> dict:
    """The configuration handed to ``wandb.sweep`` for ``sweep``.

    Args:
        sweep: a validated sweep.
        trials: total runs (W&B's ``run_cap``); default: the file's.
        name: the sweep's name; default: the file's, else its stem.

    Returns:
        A new dict; ``sweep`` is not changed.
    """
    config = copy.deepcopy(sweep.raw)
    config["method"] = sweep.method
    metric = {"name": f"eval/{sweep.metric}", "goal": sweep.goal}
    if sweep.target is not None:
        metric["target"] = sweep.target
    config["metric"] = metric
    config["name"] = name or sweep.name or Path(sweep.source).stem
    if trials is not None:
        config["run_cap"] = trials
    return config


def wandb_trial(sweep: Sweep, out: Path, group: str, device="auto") -> None:
    """One W&B run: read the parameters W&B drew, run the trial (on ``device``), log its
    results."""
    from gradinstructor.search.trial import plan_trial, run_trial, valid_parameters
    from gradinstructor.tracking import WandbTracker

    tracker = WandbTracker(sweep.project or "gradinstructor", out, group=group)
    try:
        drawn = {k: v for k, v in dict(tracker.run.config).items() if k in valid_parameters()}
        plan = plan_trial({**sweep.constants, **drawn}, where=f"wandb run {tracker.run.id}")
        result = run_trial(plan, out / "trials" / str(tracker.run.id), tracker, device=device)
        tracker.run.summary.update({k: v for k, v in result.info.items()})
    finally:
        tracker.finish()


def run_wandb_sweep(sweep: Sweep, trials: int | None = None, name: str | None = None,
                    out: str | os.PathLike | None = None, seeds: int | None = None,
                    threads: int | None = 1, device="auto") -> str:
    """Create a W&B sweep from ``sweep`` and run an agent on it in this process.

    Args:
        sweep: a validated sweep.
        trials: runs for this agent and the sweep's ``run_cap``.
        name: the sweep's name (and the runs' group).
        out: folder for the wandb files and checkpoints (default: ``runs/sweeps/NAME``).
        seeds: downstream seeds per trial; overrides the file's ``seeds``.
        threads: torch intra-op threads while trials run (see
            :func:`~gradinstructor.search.study.torch_threads`).
        device: where the trials run: auto (the default: CUDA when available), cpu or cuda.

    Returns:
        The W&B sweep id.

    Raises:
        ValueError: a ``device`` this machine cannot use.
        SettingsError: not logged in to W&B, or ``WANDB_MODE`` is offline or disabled.

    Example:
        >>> run_wandb_sweep(load_sweep("agent"), trials=6)            # doctest: +SKIP
    """
    import wandb

    from gradinstructor.device import resolve_device
    from gradinstructor.search.study import torch_threads
    from gradinstructor.tracking import _logged_in

    device = resolve_device(device)  # before a sweep is created on the server
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun") or not _logged_in():
        raise SettingsError(
            "--backend wandb needs W&B's server: log in with `wandb login` and unset "
            f"WANDB_MODE (now {mode or 'unset'}); without an account use --backend optuna, "
            "which runs the same file locally")
    if seeds is not None:
        sweep = sweep.with_constant("seeds", seeds)
    config = to_wandb_sweep(sweep, trials=trials, name=name)
    out = Path(out) if out is not None else Path("runs") / "sweeps" / config["name"]
    out.mkdir(parents=True, exist_ok=True)
    sweep_id = wandb.sweep(sweep=config, project=sweep.project or "gradinstructor",
                           entity=sweep.entity)
    logger.info("W&B sweep %s created", sweep_id)
    with torch_threads(threads):
        wandb.agent(sweep_id, function=functools.partial(wandb_trial, sweep, out, config["name"],
                                                         device),
                    count=trials, project=sweep.project or "gradinstructor",
                    entity=sweep.entity)
    return sweep_id
