"""``gradinstructor sweep FILE`` and ``gradinstructor sweep analyze``: the command line.

Kept apart from :mod:`gradinstructor.cli` so that building the parser imports
nothing heavy (Optuna, torch) and the sweep's options live in one place.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# the CLI builds this parser: one parser of N >= 1, one --device for every command
from gradinstructor.cli import _device_option, _positive_int

logger = logging.getLogger(__name__)

USAGE = """gradinstructor sweep FILE [--storage URL] [--trials N] [--study NAME]
                           [--backend optuna|wandb] [--seeds K] [--device auto|cpu|cuda]
                           [options]
       gradinstructor sweep analyze [FILE] [--study NAME] [--storage URL] [--model ridge|gbr]"""


def add_sweep_parser(sub) -> argparse.ArgumentParser:
    """Add the ``sweep`` command to the CLI's subparsers."""
    p = sub.add_parser(
        "sweep", usage=USAGE, help="search ENN and RL settings with a sweep file (Optuna or W&B)",
        description="Run a sweep file (W&B's format) as an Optuna study: each trial trains an "
                    "ENN by RL and measures its downstream gain on validation data over "
                    "seeds. Running the same command again resumes the study; workers that "
                    "share a --storage URL share the study. `sweep analyze` predicts the best "
                    "ENN from the trials' diagnostics.")
    p.add_argument("file", metavar="FILE",
                   help="sweep name (sweeps/NAME.yaml) or path, or `analyze`")
    p.add_argument("analyze_file", nargs="?", metavar="ANALYZE_FILE", default=None,
                   help="with `analyze`: the sweep file whose study to analyze")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (sqlite:///x.db, postgresql://user:pw@host/db) or "
                        "journal file path (default: OUT/optuna.journal)")
    p.add_argument("--trials", type=_positive_int, default=None,
                   help="complete trials the study should hold in total (default: the file's "
                        "run_cap, else the grid size or 10)")
    p.add_argument("--study", default=None,
                   help="study name (default: the file's name, else its stem)")
    p.add_argument("--backend", choices=["optuna", "wandb"], default="optuna",
                   help="optuna (local or shared storage; default) or wandb (W&B's sweep "
                        "server; needs `wandb login`)")
    p.add_argument("--seeds", type=_positive_int, default=None,
                   help="downstream seeds per trial (default: the file's seeds, else 3)")
    p.add_argument("--out", type=Path, default=None,
                   help="run folder (default: runs/sweeps/STUDY)")
    p.add_argument("--seed", type=int, default=None,
                   help="seeds the sampler (default: drawn, so that workers differ)")
    p.add_argument("--tracker", choices=["wandb", "none"], default="wandb",
                   help="one wandb run per trial, offline unless logged in (default), or none")
    p.add_argument("--threads", type=_positive_int, default=1,
                   help="torch threads per worker (default: 1; the networks are tiny and extra "
                        "threads slow a busy machine down; to use more cores, start more "
                        "workers with the same --storage and --out). OMP_NUM_THREADS wins")
    _device_option(p, "this worker's trials (target networks, agent, ENN)",
                   "; workers sharing a --storage may use different devices")
    p.add_argument("--model", choices=["ridge", "gbr"], default="ridge",
                   help="with `analyze`: diagnostics -> gain model (default: ridge)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _study_and_out(args, sweep=None) -> tuple[str, Path]:
    from gradinstructor.search.study import default_study_name

    name = args.study or (default_study_name(sweep) if sweep is not None else None)
    if name is None:
        raise ValueError("sweep analyze: name the study with --study NAME or give the sweep "
                         "FILE (`gradinstructor sweep analyze FILE`)")
    out = args.out if args.out is not None else Path("runs") / "sweeps" / name
    return name, out


def _analyze(args) -> int:
    import optuna

    from gradinstructor.search import analyze_study, format_analysis, load_sweep, open_storage
    from gradinstructor.search.study import STORAGE_FILE, StorageError, redact

    sweep = load_sweep(args.analyze_file) if args.analyze_file else None
    name, out = _study_and_out(args, sweep)
    if args.storage is None and not (out / STORAGE_FILE).is_file():
        raise StorageError(f"no study storage at {out / STORAGE_FILE}; pass --storage URL "
                           "(the one the sweep ran with) or --out RUN")
    if args.storage is not None and "://" not in args.storage and not Path(args.storage).is_file():
        raise StorageError(f"--storage {args.storage}: no such journal file; pass the --storage "
                           "the sweep ran with (a journal file path or a database URL)")
    storage = open_storage(args.storage, out / STORAGE_FILE)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        where = redact(args.storage) if args.storage else out / STORAGE_FILE
        raise ValueError(f"no study {name!r} in {where}; studies there: "
                         f"{', '.join(names) or 'none'}") from None
    print(format_analysis(analyze_study(study, model=args.model)))
    return 0


def run_command(args) -> int:
    """Run ``gradinstructor sweep ...`` from parsed arguments; returns the exit status."""
    from gradinstructor.search.study import SweepError

    try:
        if args.file == "analyze":
            return _analyze(args)
        return _sweep(args)
    except SweepError as err:
        print(f"gradinstructor sweep: error: {err}", file=sys.stderr)
        return 1


def _sweep(args) -> int:
    from gradinstructor.search import load_sweep
    from gradinstructor.search.analyze import analyze_study, format_analysis
    from gradinstructor.search.study import count_trials, prepare_sweep, target_count

    if args.analyze_file is not None:
        raise ValueError(f"sweep takes one FILE, but got a second: {args.analyze_file!r} "
                         "(did you mean `sweep analyze FILE`?)")
    sweep = load_sweep(args.file)
    name, out = _study_and_out(args, sweep)
    if args.backend == "wandb":
        from gradinstructor.search.wandb_backend import run_wandb_sweep

        sweep_id = run_wandb_sweep(sweep, trials=args.trials, name=name, out=out,
                                   seeds=args.seeds, threads=args.threads, device=args.device)
        print(f"W&B sweep: {sweep_id}")
        return 0
    n_trials = target_count(sweep, args.trials)
    print(f"sweep {name}: {n_trials} complete trials wanted; storage "
          f"{_shown_storage(args.storage, out)}")
    runner = prepare_sweep(sweep, trials=args.trials, storage=args.storage, study_name=name,
                           out=out, seeds=args.seeds, tracker=args.tracker,
                           progress_bar=not args.no_progress, seed=args.seed,
                           threads=args.threads, device=args.device)
    ran = runner.run()
    study = runner.study
    complete, running = count_trials(study)
    print(f"this worker completed {len(ran)} trial(s)"
          + (f": {', '.join(map(str, ran))}" if ran else "")
          + f"; the study holds {complete} of {runner.n_trials} complete"
          + (f", {running} running in other workers" if running else ""))
    try:
        print(format_analysis(analyze_study(study, model=args.model)))
    except ValueError as err:  # e.g. every trial ran in other workers and none finished yet
        print(f"no analysis yet: {err}")
    return 0


def _shown_storage(storage: str | None, out: Path) -> str:
    from gradinstructor.search.study import STORAGE_FILE, redact

    return redact(storage) if storage and "://" in storage else str(storage or out / STORAGE_FILE)
