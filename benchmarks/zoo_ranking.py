"""ENN ranking quality on a held-out zoo, against a weight-statistics baseline.

Generates a zoo of trained target networks (varied seeds, init schemes and
scales, learning rates, checkpoints; seeds disjoint from RL), splits it into a
training and a held-out part, and reports Kendall's tau between each ranker's
score and the members' final test accuracy on the held-out part:

* enn_tau: the ENN trained by RL (never saw the zoo),
* supervised_enn_tau: the same ENN architecture regressed on the training part,
* stats_tau: per-layer weight statistics + gradient-boosted regressor, trained
  on the training part.

The last line printed is JSON with enn_tau and stats_tau (and the rest).

    python benchmarks/zoo_ranking.py                        # mnist5k, zoo of 120
    python benchmarks/zoo_ranking.py --enn runs/demo/enn.pt # rank with an existing ENN
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from gradinstructor.config import load_agent_config
from gradinstructor.enn import ENN
from gradinstructor.pipeline import seed_everything, shrink_task, write_json
from gradinstructor.tasks import load_task
from gradinstructor.zoo import make_zoo, rank_zoo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist5k")
    parser.add_argument("--size", type=int, default=120, help="zoo size (default 120)")
    parser.add_argument("--enn", type=Path, default=None,
                        help="an RL-trained ENN checkpoint (default: train one here)")
    parser.add_argument("--timesteps", type=int, default=1600,
                        help="RL segments if no --enn is given (default 1600)")
    parser.add_argument("--quick", action="store_true", help="shrunk task, smoke test only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1, as the CLI)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"settings: {vars(args)}", file=sys.stderr)
    start = time.perf_counter()
    seed_everything(args.seed)
    task = load_task(args.task)
    if args.quick:
        task = shrink_task(task)

    if args.enn is not None:
        rl_enn = ENN.load(args.enn)
    else:
        from gradinstructor.agent import train_enn

        rl_enn = train_enn(task, load_agent_config("ppo"), total_timesteps=args.timesteps,
                           seed=args.seed, progress_bar=False).enn
    zoo = make_zoo(task, size=args.size, seed=args.seed, progress_bar=True)
    result = rank_zoo(task, zoo, rl_enn, seed=args.seed)
    result["seconds"] = round(time.perf_counter() - start, 1)
    if not args.quick:
        write_json(args.out / "zoo_ranking.json", result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
