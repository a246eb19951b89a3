"""Search (AutoML): sweeps over ENN and RL settings that find the ENN that helps most.

One sweep file format, W&B's (``method``, ``metric``, ``parameters``), run by
Optuna on one machine or many (a shared storage URL), or handed to W&B's
sweep server. The modules, in the order of a sweep:

    sweepfile      read and validate a sweep file
    trial          one trial: train an ENN by RL, measure its downstream gain
    diagnostics    cheap diagnostics of each trial's ENN
    study          Optuna: storage, resuming, many workers, the trial count
    analyze        predict the best ENN from the diagnostics
    wandb_backend  the same file through wandb.sweep / wandb.agent

Example:
    >>> from gradinstructor.search import load_sweep, run_sweep, analyze_study
    >>> study = run_sweep(load_sweep("strength"), trials=6)        # doctest: +SKIP
    >>> print(format_analysis(analyze_study(study)))               # doctest: +SKIP
"""

from gradinstructor.search.analyze import analyze_study, format_analysis
from gradinstructor.search.study import (
    StorageError,
    SweepError,
    open_storage,
    prepare_sweep,
    redact,
    run_sweep,
)
from gradinstructor.search.sweepfile import Sweep, load_sweep, parse_sweep
from gradinstructor.search.trial import TrialSettings, plan_trial, run_trial, valid_parameters
from gradinstructor.search.wandb_backend import run_wandb_sweep, to_wandb_sweep

__all__ = [
    "StorageError", "Sweep", "SweepError", "TrialSettings", "analyze_study", "format_analysis",
    "load_sweep", "open_storage", "parse_sweep", "plan_trial", "prepare_sweep", "redact",
    "run_sweep", "run_trial", "run_wandb_sweep", "to_wandb_sweep", "valid_parameters",
]
