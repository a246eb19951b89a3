"""Cost of the ENN term in a training step, and whether reusing its gradient keeps the effect.

On the ``mnist5k`` MLP (784-100-100-10, batch 64, SGD), in one process with one
torch thread, it times:

* a plain step (forward, cross-entropy, backward, SGD), and
* an augmented step: the same with ``GradInstructor(..., every=k)`` wrapping the
  loss (``gi(loss)``), for the default k (``DEFAULT_ENN_EVERY``) and for each k of
  ``--ks``, and with the gradient form (``gi.add_gradient()`` after backward) at
  the default k,

interleaved in rounds (plain, then each k, over the same minibatches), so that
a change of machine load hits all of them alike; each figure is the median over
rounds of the mean step time of a round. Then it trains full target networks on
``mnist5k`` over ``--seeds`` seeds plainly, with the ENN term at every step
(k = 1) and at the default k, same strength, and reports the test accuracy of
each: "same effect" is measured, not assumed.

The strength is not rescaled with k: the reused gradient is applied at every
step (GradInstructor adds ``strength * g`` to each step's gradient, g refreshed
every k steps), so the total push over k steps is the same as with k = 1; only
its direction lags by up to k - 1 steps.

    python benchmarks/enn_overhead.py                     # about 1 minute
    python benchmarks/enn_overhead.py --enn RUN/enn.pt    # a trained ENN

The last line printed is JSON with ``plain_us``, ``augmented_us``, ``ratio``
(augmented / plain at the default k), the accuracies over seeds and the timing
of every k.
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

from gradinstructor.enn import ENN, ENNConfig
from gradinstructor.pipeline import DEFAULT_ENN_EVERY
from gradinstructor.render import layer_shapes
from gradinstructor.tasks import Task, load_task
from gradinstructor.trainer import GradInstructor, batch_order, fit_target


def _enn(task: Task, path: str | None) -> ENN:
    if path:
        return ENN.load(path)
    torch.manual_seed(0)  # an untrained, seeded ENN: the cost does not depend on training
    return ENN(ENNConfig(layer_shapes=layer_shapes(task.build_model(seed=0))))


def time_steps(task: Task, enn: ENN, ks: list[int], strength: float, rounds: int,
               steps: int) -> dict:
    """Median over rounds of the mean step time (us), plain and for each k."""
    data, cfg = task.data, task.config
    batches = list(batch_order(len(data.train_y), cfg.batch_size, 1, seed=0))
    batches = [b for b in batches if len(b) == cfg.batch_size][:steps]
    batches = (batches * (steps // max(1, len(batches)) + 1))[:steps]

    def run(variant) -> float:
        k, form = (variant, "loss") if not isinstance(variant, tuple) else variant
        model = task.build_model(seed=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        gi = (GradInstructor(model, enn, strength=strength, total_steps=task.total_steps,
                             every=k) if k else None)
        start = time.perf_counter()
        for idx in batches:
            loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            if gi is not None and form == "loss":
                loss = gi(loss)
            optimizer.zero_grad()
            loss.backward()
            if gi is not None and form == "grad":
                gi.add_gradient()
            optimizer.step()
        return (time.perf_counter() - start) / len(batches) * 1e6

    # the loss form gi(loss) for every k; the gradient form gi.add_gradient() at the
    # default k (``every`` is the last of ks' caller's list: see main)
    variants = [None, *ks, (ks[-1], "grad")]
    for k in variants:  # warm-up
        run(k)
    times: dict = {k: [] for k in variants}
    for _ in range(rounds):
        for k in variants:
            times[k].append(run(k))
    return {k: statistics.median(v) for k, v in times.items()}


def accuracies(task: Task, enn: ENN, every: int, strength: float, seeds: int) -> dict:
    """Test accuracy over seeds: plain, the ENN term every step, every ``every`` steps."""
    out: dict = {"plain": [], "every_1": [], f"every_{every}": []}
    for seed in range(seeds):
        for name, k in (("plain", None), ("every_1", 1), (f"every_{every}", every)):
            model = task.build_model(seed=seed)
            gi = (GradInstructor(model, enn, strength=strength, total_steps=task.total_steps,
                                 every=k) if k else None)
            out[name].append(fit_target(task, model, seed=seed, instructor=gi).test_acc)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist5k")
    parser.add_argument("--every", type=int, default=DEFAULT_ENN_EVERY,
                        help=f"the k judged (default: DEFAULT_ENN_EVERY = {DEFAULT_ENN_EVERY})")
    parser.add_argument("--ks", default="1,5,10,25",
                        help="other k to time, comma-separated (default: 1,5,10,25)")
    parser.add_argument("--strength", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds (default: 7)")
    parser.add_argument("--steps", type=int, default=100,
                        help="steps per variant per round (default: 100)")
    parser.add_argument("--seeds", type=int, default=5,
                        help="seeds of the accuracy check (default: 5)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of the accuracy check (default: the task's)")
    parser.add_argument("--enn", default=None, help="ENN checkpoint (default: untrained)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"settings: {vars(args)}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()}", flush=True)
    start = time.perf_counter()
    task = load_task(args.task)
    if args.epochs is not None:
        import dataclasses

        task = Task(config=dataclasses.replace(task.config, epochs=args.epochs), data=task.data)
    enn = _enn(task, args.enn)
    ks = sorted({int(k) for k in args.ks.split(",") if k} - {args.every}) + [args.every]
    times = time_steps(task, enn, ks, args.strength, args.rounds, args.steps)
    plain = times[None]
    grad_form = times[(args.every, "grad")]
    for k in ks:
        print(f"every={k:>3}: {times[k]:8.1f} us/step, {times[k] / plain:.3f} x plain "
              f"({plain:.1f} us), gi(loss)", flush=True)
    print(f"every={args.every:>3}: {grad_form:8.1f} us/step, {grad_form / plain:.3f} x plain, "
          "gi.add_gradient()", flush=True)
    accs = accuracies(task, enn, args.every, args.strength, args.seeds)
    summary = {name: {"mean": statistics.mean(v),
                      "std": statistics.stdev(v) if len(v) > 1 else 0.0, "runs": v}
               for name, v in accs.items()}
    for name, s in summary.items():
        print(f"test accuracy {name:>9}: {100 * s['mean']:.2f} +- {100 * s['std']:.2f} "
              f"over {args.seeds} seeds", flush=True)
    default = f"every_{args.every}"
    diffs = [a - b for a, b in zip(accs[default], accs["every_1"])]
    result = {
        "task": args.task, "threads": torch.get_num_threads(), "every": args.every,
        "strength": args.strength, "enn": args.enn or "untrained (seed 0)",
        "plain_us": round(plain, 1), "augmented_us": round(times[args.every], 1),
        "ratio": round(times[args.every] / plain, 4),
        "ratio_by_k": {str(k): round(times[k] / plain, 4) for k in sorted(ks)},
        "gradient_form_us": round(grad_form, 1),
        "gradient_form_ratio": round(grad_form / plain, 4),
        "us_by_k": {str(k): round(times[k], 1) for k in sorted(ks)},
        "seeds": args.seeds,
        "acc_plain": round(summary["plain"]["mean"], 4),
        "acc_every_1": round(summary["every_1"]["mean"], 4),
        "acc_default": round(summary[default]["mean"], 4),
        "acc_std": {k: round(s["std"], 4) for k, s in summary.items()},
        "acc_default_minus_every_1_mean": round(statistics.mean(diffs), 4),
        "acc_default_minus_every_1_max_abs": round(max(abs(d) for d in diffs), 4),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
