"""Command line: ``gradinstructor train-enn | compare | explain | zoo | info | report | demo |
sweep``.

Run ``gradinstructor COMMAND --help`` for each command's options. Every command that trains
or evaluates networks (train-enn, compare, explain, zoo, demo, sweep) takes ``--device
auto|cpu|cuda`` (default auto: CUDA when available, as in stable-baselines3).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from pathlib import Path

from gradinstructor import __version__
from gradinstructor.compare import METHODS

logger = logging.getLogger("gradinstructor")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, but got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, but got {text!r}")
    return value


def _methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise argparse.ArgumentTypeError(
            f"unknown method {bad[0] if bad else text!r}; valid methods: {', '.join(METHODS)}")
    return methods


def _strength(text: str):
    if text == "actor":
        return "actor"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be 'actor' or a non-negative number, but got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be 'actor' or a non-negative number, but got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(
            f"must be an integer from 0 to {2**32 - 1}, but got {text!r}")
    return value


def _device(text: str) -> str:
    """--device: auto, cpu or cuda[:N]; refused at once if this machine cannot use it."""
    from gradinstructor.device import resolve_device

    try:
        resolve_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _device_option(p: argparse.ArgumentParser,
                   what: str = "the target networks, the ENN and the agent",
                   note: str = "") -> None:
    """Add ``--device`` to a command that trains or evaluates networks (checked at parse)."""
    p.add_argument("--device", type=_device, default="auto",
                   help=f"where {what} run: auto (CUDA when available, else the CPU, as in "
                        "stable-baselines3; default), cpu or cuda (cuda:N for one GPU of "
                        f"several); refused at once if this machine cannot use it{note}")


def _common(p: argparse.ArgumentParser, task: bool = True) -> None:
    if task:
        p.add_argument("--task", default="mnist5k",
                       help="task name (tasks/NAME.yaml) or path of a task file "
                            "(default: mnist5k)")
        p.add_argument("--data-dir", default=None,
                       help="where torchvision data sets are stored (mnist, fashion-mnist)")
    p.add_argument("--out", type=Path, default=Path("runs/latest"),
                   help="run folder to write into (default: runs/latest)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    p.add_argument("--tracker", choices=["wandb", "none"], default="none",
                   help="where to log metrics; wandb runs offline unless logged in")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradinstructor",
        description="Grad-Instructor: train an Evaluation Neural Network (ENN) by RL and use "
                    "it as an extra term in the backpropagation of target networks.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--threads", type=_positive_int, default=1,
                        help="torch intra-op threads (default: 1; the target networks are "
                             "small, and more threads mostly add synchronisation overhead: "
                             "see benchmarks/threads.py)")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log messages (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train-enn", help="train an ENN by reinforcement learning",
                       description="Train an ENN (the critic of a PPO/A2C agent) and a strength "
                                   "schedule (its actor); writes RUN/enn.pt.")
    _common(p)
    # unset options are filled in by _resolve_train_enn: the saved run's with --resume
    p.set_defaults(task=None, seed=None)
    p.add_argument("--agent", default=None,
                   help="agent settings name (agents/NAME.yaml) or path (default: ppo)")
    p.add_argument("--timesteps", type=_positive_int, default=None,
                   help="segments to play, over all environments (default: 2000)")
    p.add_argument("--enn-every", type=_positive_int, default=None,
                   help="recompute the ENN gradient every K minibatch steps (default: 50)")
    p.add_argument("--save-every", type=_positive_int, default=1,
                   help="save the agent's state to RUN/agent.pt every N rollouts (default: 1; "
                        "it is also saved on Ctrl-C and at the end)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in RUN/agent.pt to its total of timesteps, "
                        "with its settings (options given must match them)")
    _device_option(p)

    p = sub.add_parser("compare", help="compare plain, L1, He, ENN and He+ENN over seeds",
                       description="Train target networks with each method over seeds; writes "
                                   "RUN/results.json and prints the table.")
    _common(p)
    p.add_argument("--enn", type=Path, default=None,
                   help="ENN checkpoint (default: RUN/enn.pt if it exists)")
    p.add_argument("--seeds", type=_positive_int, default=5, help="number of seeds (default: 5)")
    p.add_argument("--methods", type=_methods, default=list(METHODS),
                   help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--strength", type=_strength, default="actor",
                   help="ENN strength: 'actor' (the trained schedule) or a number")
    p.add_argument("--enn-every", type=_positive_int, default=50,
                   help="recompute the ENN gradient every K minibatch steps (default: 50)")
    _device_option(p)

    p = sub.add_parser("explain", help="Grad-CAM of the ENN on a target network",
                       description="Train a target network with the ENN term and save Grad-CAM "
                                   "maps of the ENN beside its weights at init, 25%, 50% and "
                                   "100% of the budget in RUN/gradcam/. With --prune, also "
                                   "the lottery-ticket check (RUN/prune.json).")
    _common(p)
    p.add_argument("--enn", type=Path, default=None,
                   help="ENN checkpoint (default: RUN/enn.pt)")
    p.add_argument("--layer", default=None,
                   help="ENN layer for Grad-CAM (default: its last convolution)")
    p.add_argument("--prune", action="store_true",
                   help="also keep the top 50/20/10/5%% of weights by Grad-CAM relevance, by "
                        "magnitude and at random, on the trained network and on its "
                        "initialisation, and report the accuracy each subnetwork keeps")
    p.add_argument("--draws", type=_positive_int, default=5,
                   help="random masks per criterion in the --prune check, at least 2; up "
                        "to 3 of them are also trained (default: 5)")
    _device_option(p, "the target network, the ENN, Grad-CAM and the --prune check")

    p = sub.add_parser("zoo", help="train a zoo of target networks and rank them",
                       description="Train target networks with drawn seeds, init schemes and "
                                   "scales, learning rates and checkpoints (held out from RL), "
                                   "write RUN/zoo.pt, and print Kendall's tau with the final "
                                   "test accuracy on its held-out half for the ENN (if one is "
                                   "given or RUN/enn.pt exists), a supervised ENN and a "
                                   "weight-statistics regressor.")
    _common(p)
    p.add_argument("--size", type=_positive_int, default=60,
                   help="networks in the zoo (default: 60)")
    p.add_argument("--enn", type=Path, default=None,
                   help="ENN checkpoint to rank with (default: RUN/enn.pt if it exists)")
    p.add_argument("--reuse", action="store_true",
                   help="rank the zoo already in RUN/zoo.pt instead of training a new one")
    _device_option(p, "the zoo's networks and the ENNs that rank them",
                   "; RUN/zoo.pt is saved on the CPU and loads on any device")

    p = sub.add_parser("info", help="what an ENN checkpoint was trained on",
                       description="Print an ENN checkpoint's task, layer shapes, ratio, "
                                   "version, training steps and diagnostics.")
    p.add_argument("checkpoint", type=Path, help="ENN checkpoint (e.g. runs/latest/enn.pt)")

    p = sub.add_parser("report", help="write the HTML dashboard of a run folder")
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--tracker", choices=["wandb", "none"], default="none",
                   help="also log the dashboard's tables, curves and images to a wandb run "
                        "in the run folder (offline unless logged in)")

    p = sub.add_parser("demo", help="train-enn, compare, explain and report on mnist5k",
                       description="The whole pipeline on the embedded MNIST digits: prints the "
                                   "comparison table and the path of the HTML report.")
    p.add_argument("--quick", action="store_true", help="tiny budgets (about 30 s)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"),
                   help="run folder (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--tracker", choices=["wandb", "none"], default="wandb",
                   help="wandb (offline unless logged in; default) or none")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _device_option(p, "all stages (target networks, ENN, agent, Grad-CAM)")

    from gradinstructor.search.command import add_sweep_parser

    add_sweep_parser(sub)  # sweep FILE ... and sweep analyze ...
    return parser


def _load_enn(args, device) -> object:
    """The ENN of ``--enn`` (default RUN/enn.pt), on ``device`` (the task's)."""
    from gradinstructor.enn import ENN

    path = args.enn or args.out / "enn.pt"
    return ENN.load(path, map_location=device)


def _zoo(args, task, progress: bool) -> None:
    import json

    from gradinstructor.enn import ENN
    from gradinstructor.pipeline import seed_everything, write_json
    from gradinstructor.zoo import Zoo, make_zoo, rank_zoo

    path = args.out / "zoo.pt"
    enn_path = args.enn or (args.out / "enn.pt" if (args.out / "enn.pt").is_file() else None)
    # fail before training on a bad checkpoint; the ENN goes to the task's device
    enn = ENN.load(enn_path, map_location=task.device) if enn_path else None
    if enn is not None:
        enn.check_model(task.build_model(seed=0))
    seed_everything(args.seed)
    if args.reuse:
        zoo = Zoo.load(path)
    else:
        zoo = make_zoo(task, size=args.size, seed=args.seed, progress_bar=progress)
        zoo.save(path)
    result = rank_zoo(task, zoo, enn, seed=args.seed)
    write_json(args.out / "zoo_ranking.json", result)
    print(f"zoo: {path}")
    print(json.dumps(result))


TRAIN_ENN_DEFAULTS = {"task": "mnist5k", "seed": 0, "agent": "ppo", "timesteps": 2000,
                      "enn_every": 50}


def _resolve_train_enn(args) -> None:
    """Fill train-enn's unset options: with --resume the saved run's, else the defaults."""
    saved: dict = {}
    if args.resume:
        from gradinstructor.pipeline import read_saved_settings

        settings = read_saved_settings(args.out)
        saved = {"task": settings.get("task_spec", settings["task"]),
                 "seed": settings["seed"], "agent": settings.get("agent_spec"),
                 "timesteps": settings["total_timesteps"], "enn_every": settings["enn_every"]}
    for key, default in TRAIN_ENN_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, saved.get(key) if saved.get(key) is not None else default)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While inside, SIGTERM (a batch system stopping the job) raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt("(SIGTERM)")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_run_options(args) -> None:
    """Checks before any work: --out is a folder; train-enn's options are complete."""
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {str(args.out)!r} is a file, not a run folder; "
                         "pass a folder (it is created if missing)")
    if args.command == "train-enn":
        _resolve_train_enn(args)


def _info(args) -> int:
    from gradinstructor.info import describe_checkpoint

    print(describe_checkpoint(args.checkpoint))
    return 0


def _run(args) -> int:
    from gradinstructor import pipeline
    from gradinstructor.tracking import make_tracker

    if args.command == "sweep":
        from gradinstructor.search.command import run_command

        return run_command(args)
    progress = not getattr(args, "no_progress", False)  # `report` has no bars
    if args.command == "report":
        tracker = None
        if args.tracker != "none":
            if not args.run.is_dir():
                raise FileNotFoundError(f"run folder {str(args.run)!r} does not exist")
            tracker = make_tracker(args.tracker, directory=args.run, name="report")
        try:
            print(pipeline.stage_report(args.run, tracker=tracker))
        finally:
            if tracker is not None:
                tracker.finish()
        return 0
    if args.command == "demo":
        pipeline.demo(args.out, quick=args.quick, seed=args.seed, tracker_kind=args.tracker,
                      progress_bar=progress, device=args.device)
        return 0

    from gradinstructor.tasks import load_task

    _check_run_options(args)
    # train-enn, compare, explain, zoo: every one has --device (default auto)
    task = load_task(args.task, data_dir=args.data_dir, device=args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    tracker = make_tracker(args.tracker, directory=args.out, name=args.command,
                           config={k: str(v) for k, v in vars(args).items()})
    try:
        if args.command == "train-enn":
            with _sigterm_as_interrupt():  # a killed job saves its state like Ctrl-C
                pipeline.stage_train_enn(task, args.out, agent=args.agent,
                                         timesteps=args.timesteps, seed=args.seed,
                                         enn_every=args.enn_every, tracker=tracker,
                                         progress_bar=progress, save_every=args.save_every,
                                         resume=args.resume, task_spec=args.task)
            print(f"ENN checkpoint: {args.out / 'enn.pt'}")
        elif args.command == "compare":
            from gradinstructor.compare import ENN_METHODS, format_table

            needs_enn = any(m in ENN_METHODS for m in args.methods)
            enn = _load_enn(args, task.device) if needs_enn else None
            strength = None if args.strength == "actor" else args.strength
            results = pipeline.stage_compare(task, args.out, enn, seeds=list(range(args.seeds)),
                                             methods=args.methods, strength=strength,
                                             enn_every=args.enn_every, tracker=tracker,
                                             progress_bar=progress)
            print(format_table(results))
            print(f"results: {args.out / 'results.json'}")
        elif args.command == "zoo":
            _zoo(args, task, progress)
        elif args.command == "explain":
            paths = pipeline.stage_explain(task, args.out, _load_enn(args, task.device),
                                           seed=args.seed,
                                           layer=args.layer, tracker=tracker,
                                           prune=args.prune, draws=args.draws)
            if args.prune:
                import json

                from gradinstructor.prune import format_prune_table

                result = json.loads((args.out / "prune.json").read_text())
                print(format_prune_table(result))
                print("\n".join(f"- {line}" for line in result["findings"]))
            print("\n".join(str(p) for p in paths))
    finally:
        tracker.finish()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    import torch

    torch.set_num_threads(args.threads)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")

    from gradinstructor.config import SettingsError
    from gradinstructor.enn import CheckpointError
    from gradinstructor.tasks import DatasetUnavailableError
    from gradinstructor.trainer import DivergenceError

    try:
        return _info(args) if args.command == "info" else _run(args)
    except (SettingsError, CheckpointError, DatasetUnavailableError, DivergenceError,
            ValueError, OSError) as err:
        print(f"gradinstructor {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # train-enn says where it saved the agent's state
        detail = f" {err}" if str(err) else ""
        print(f"gradinstructor {args.command}: interrupted{detail}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
