"""Cost of the ENN term in a training step, and whether reusing its gradient keeps the effect.

On the ``mnist5k`` MLP (784-100-100-10, batch 64, SGD), in one process with one
torch thread, it times:

* a plain step (forward, cross-entropy, backward, SGD),
* the default augmented step: ``GradInstructor(model, enn)`` wrapping the loss
  (``gi(loss)``), which computes the ENN gradient g once every k =
  ``DEFAULT_ENN_EVERY`` steps and applies k steps' worth of it (``k * strength *
  g``) at that step, nothing in between (the lumped form),
* the same with each k of ``--ks``, the spread form at the default k
  (``spread=True``: ``strength * g`` at every step, g reused), and the gradient
  form (``gi.add_gradient()`` after backward) at the default k,

interleaved in rounds (plain, then each variant, over the same minibatches), so
that a change of machine load hits all of them alike; each time is the median
over rounds of the mean step time of a round, each ratio the median over rounds of
the variant's time over the plain time of the same round. Then it trains full target
networks on ``mnist5k`` over ``--seeds`` seeds plainly, with the ENN term at
every step (k = 1, the exact form), lumped at the default k and spread at the
default k, same strength, and reports the test accuracy of each: "same effect"
is measured, not assumed. Use a trained ENN (``--enn``) for that: an untrained
one pushes in an arbitrary direction.

    python benchmarks/enn_overhead.py                          # about 70 seconds
    python benchmarks/enn_overhead.py --enn runs/demo/enn.pt   # a trained ENN
    python benchmarks/enn_overhead.py --task mnist5k-cnn --enn RUN/enn.pt \
        --strength actor --init he --seeds 10                  # the CNN, its actor

The last line printed is JSON with ``plain_us``, ``augmented_us``, ``ratio``
(augmented / plain for the default form, the median over rounds of the ratio within
a round), the accuracies over seeds and the timing
of every variant.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from _args import positive_int, positive_ints, strength_or_actor

from gradinstructor.device import resolve_device
from gradinstructor.enn import ENN, ENNConfig
from gradinstructor.render import layer_shapes
from gradinstructor.tasks import Task, load_task
from gradinstructor.trainer import DEFAULT_ENN_EVERY, GradInstructor, batch_order, fit_target


def _enn(task: Task, path: str | None) -> ENN:
    if path:
        return ENN.load(path, map_location=task.device)
    torch.manual_seed(0)  # an untrained, seeded ENN: the cost does not depend on training
    config = ENNConfig(layer_shapes=layer_shapes(task.build_model(seed=0)))
    return ENN(config).to(task.device)


def _sync(task: Task) -> None:
    """Wait for the GPU's queued work, so that a timer reads finished steps."""
    if task.device.type == "cuda":
        torch.cuda.synchronize(task.device)


def _task_and_enn(parser: argparse.ArgumentParser, args) -> tuple[Task, ENN]:
    """The task (with --epochs) and the ENN; a bad name or checkpoint ends in parser.error."""
    from gradinstructor.config import SettingsError
    from gradinstructor.enn import CheckpointError

    try:
        task = load_task(args.task, device=args.device)
        if args.epochs is not None:
            import dataclasses

            config = dataclasses.replace(task.config, epochs=args.epochs)
            task = dataclasses.replace(task, config=config)
        enn = _enn(task, args.enn)
        enn.check_model(task.build_model(seed=0))
    except (SettingsError, CheckpointError) as err:
        parser.error(str(err))
    if args.strength == "actor" and enn.actor_payload is None:
        parser.error(f"--strength actor: {args.enn} holds no actor (it was not trained by RL); "
                     "give a number")
    return task, enn


# A variant: (k, form, spread); form is "loss" (gi(loss)) or "grad" (gi.add_gradient()).
Variant = tuple[int, str, bool]


def time_steps(task: Task, enn: ENN, variants: list[Variant], strength: float, rounds: int,
               steps: int) -> dict:
    """Step times (us) and ratios to the plain step, each the median over rounds.

    Returns ``(times, ratios)``: ``times[v]`` is the median over rounds of variant v's
    mean step time (plain: v = None); ``ratios[v]`` the median over rounds of v's time
    divided by the plain time of the same round. Pairing within a round cancels the
    drifts of a shared machine's speed between rounds.
    """
    data, cfg = task.data, task.config
    batches = list(batch_order(len(data.train_y), cfg.batch_size, 1, seed=0))
    batches = [b for b in batches if len(b) == cfg.batch_size][:steps]
    batches = (batches * (steps // max(1, len(batches)) + 1))[:steps]

    def run(variant: Variant | None) -> float:
        model = task.build_model(seed=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        gi, form = None, None
        if variant is not None:
            k, form, spread = variant
            gi = GradInstructor(model, enn, strength=strength, total_steps=task.total_steps,
                                every=k, spread=spread)
        _sync(task)
        start = time.perf_counter()
        for idx in batches:
            loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            if form == "loss":
                loss = gi(loss)
            optimizer.zero_grad()
            loss.backward()
            if form == "grad":
                gi.add_gradient()
            optimizer.step()
        _sync(task)
        return (time.perf_counter() - start) / len(batches) * 1e6

    everything = [None, *variants]
    for variant in everything:  # warm-up
        run(variant)
    times: dict = {variant: [] for variant in everything}
    for _ in range(rounds):
        for variant in everything:
            times[variant].append(run(variant))
    ratios = {variant: statistics.median(t / p for t, p in zip(v, times[None]))
              for variant, v in times.items()}
    return {variant: statistics.median(v) for variant, v in times.items()}, ratios


def accuracies(task: Task, enn: ENN, every: int, strength, seeds: int,
               init: str = "default") -> dict:
    """Test accuracy over seeds: plain, every step, lumped and spread at ``every``.

    ``strength`` is a number or the ENN's trained actor (a ScheduleActor).
    """
    kinds = {"plain": None, "every_1": (1, False), f"lumped_{every}": (every, False),
             f"spread_{every}": (every, True)}
    out: dict = {name: [] for name in kinds}
    for seed in range(seeds):
        for name, kind in kinds.items():
            model = task.build_model(seed=seed, init=init)
            gi = (GradInstructor(model, enn, strength=strength, total_steps=task.total_steps,
                                 segments=task.config.segments, every=kind[0],
                                 spread=kind[1]) if kind else None)
            out[name].append(fit_target(task, model, seed=seed, instructor=gi).test_acc)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist5k", help="task name or YAML (default: mnist5k)")
    parser.add_argument("--every", type=positive_int, default=DEFAULT_ENN_EVERY,
                        help=f"the k judged (default: DEFAULT_ENN_EVERY = {DEFAULT_ENN_EVERY})")
    parser.add_argument("--ks", type=positive_ints, default=[1, 5, 10, 25],
                        help="other k to time, comma-separated (default: 1,5,10,25)")
    parser.add_argument("--strength", type=strength_or_actor, default=10.0,
                        help="ENN strength: a number (default 10), or 'actor' for the schedule "
                             "the ENN's RL agent learned in the accuracy check (the timing "
                             "then uses 10)")
    parser.add_argument("--init", choices=["default", "he"], default="default",
                        help="initialisation of the accuracy check's networks (default: "
                             "PyTorch's)")
    parser.add_argument("--rounds", type=positive_int, default=11,
                        help="timing rounds (default: 11)")
    parser.add_argument("--steps", type=positive_int, default=200,
                        help="steps per variant per round (default: 200: four ENN gradients "
                             "at the default k)")
    parser.add_argument("--seeds", type=positive_int, default=5,
                        help="seeds of the accuracy check (default: 5)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="epochs of the accuracy check (default: the task's)")
    parser.add_argument("--enn", default=None, help="ENN checkpoint (default: untrained)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch intra-op threads (default: 1)")
    parser.add_argument("--device", default="cpu",
                        help="cpu (default), cuda (cuda:N) or auto: where the network, the "
                             "data and the ENN run")
    args = parser.parse_args(argv)
    try:
        resolve_device(args.device)
    except ValueError as err:
        parser.error(f"--device: {err}")
    if args.strength == "actor" and not args.enn:
        parser.error("--strength actor needs --enn with a checkpoint trained by RL (it holds "
                     "the actor's schedule)")
    torch.set_num_threads(args.threads)
    print(f"settings: {vars(args)}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()}", flush=True)
    start = time.perf_counter()
    task, enn = _task_and_enn(parser, args)
    k = args.every
    others = sorted(set(args.ks) - {k})
    default: Variant = (k, "loss", False)
    spread: Variant = (k, "loss", True)
    grad_form: Variant = (k, "grad", False)
    variants = [(o, "loss", False) for o in others] + [default, spread, grad_form]
    timing_strength = 10.0 if args.strength == "actor" else args.strength
    times, ratios = time_steps(task, enn, variants, timing_strength, args.rounds, args.steps)
    plain = times[None]
    for variant in variants:
        every, form, spread_it = variant
        call = "gi(loss)" if form == "loss" else "gi.add_gradient()"
        print(f"every={every:>3} {'spread' if spread_it else 'lumped'}: {times[variant]:8.1f} "
              f"us/step, {ratios[variant]:.3f} x plain ({plain:.1f} us), {call}",
              flush=True)
    if args.strength == "actor":
        from gradinstructor.agent import load_actor

        strength = load_actor(enn)
    else:
        strength = args.strength
    accs = accuracies(task, enn, k, strength, args.seeds, args.init)
    summary = {name: {"mean": statistics.mean(v),
                      "std": statistics.stdev(v) if len(v) > 1 else 0.0, "runs": v}
               for name, v in accs.items()}
    for name, s in summary.items():
        print(f"test accuracy {name:>9}: {100 * s['mean']:.2f} +- {100 * s['std']:.2f} "
              f"over {args.seeds} seeds", flush=True)

    def versus_every_1(name: str) -> dict:
        diffs = [a - b for a, b in zip(accs[name], accs["every_1"])]
        return {"mean": round(statistics.mean(diffs), 4),
                "max_abs": round(max(abs(d) for d in diffs), 4)}

    lumped_by_k = {str(o): round(ratios[(o, "loss", False)], 4) for o in others}
    lumped_by_k[str(k)] = round(ratios[default], 4)
    result = {
        "task": args.task, "device": str(task.device), "threads": torch.get_num_threads(),
        "every": k,
        "strength": args.strength, "init": args.init, "enn": args.enn or "untrained (seed 0)",
        "plain_us": round(plain, 1), "augmented_us": round(times[default], 1),
        "ratio": round(ratios[default], 4),
        "ratio_by_k": dict(sorted(lumped_by_k.items(), key=lambda kv: int(kv[0]))),
        "spread_us": round(times[spread], 1), "spread_ratio": round(ratios[spread], 4),
        "gradient_form_us": round(times[grad_form], 1),
        "gradient_form_ratio": round(ratios[grad_form], 4),
        "seeds": args.seeds,
        "acc_plain": round(summary["plain"]["mean"], 4),
        "acc_every_1": round(summary["every_1"]["mean"], 4),
        "acc_default": round(summary[f"lumped_{k}"]["mean"], 4),
        "acc_spread": round(summary[f"spread_{k}"]["mean"], 4),
        "acc_std": {name: round(s["std"], 4) for name, s in summary.items()},
        "acc_default_minus_every_1": versus_every_1(f"lumped_{k}"),
        "acc_spread_minus_every_1": versus_every_1(f"spread_{k}"),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
