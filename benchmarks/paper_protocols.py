"""Reproduce the paper's claims on fixed protocols P1 (mnist5k) and P2 (digits).

For each protocol: train an ENN by RL, then train target MLPs with plain
backprop, L1 (coefficient chosen on validation), He init, the ENN term and
He + the ENN term over the same seeds; report mean, std, 95% CI, Welch's
t-test of each ENN method against each baseline, the train-test gap and wall
time per method, and check the issue's targets. Writes JSON and a Markdown
table to --out.

    python benchmarks/paper_protocols.py                 # the full run (< 30 min, 2 cores)
    python benchmarks/paper_protocols.py --seeds 2 --timesteps 80 --quick   # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from gradinstructor.compare import ENN_METHODS, compare, gradient_by_stage
from gradinstructor.config import load_agent_config
from gradinstructor.pipeline import seed_everything, shrink_task, write_json
from gradinstructor.tasks import load_task

PROTOCOLS = {
    "P1": {"task": "mnist5k", "timesteps": 2400},
    "P2": {"task": "digits", "timesteps": 2400},
}
PAPER = {"enn_mean": 93.02, "gain_over_plain": 2.8}


def check_targets(results: dict) -> dict:
    """The issue's targets, each True or False, from the measured numbers."""
    m, tests = results["methods"], results["tests"]
    mean = {k: v["summary"]["test_mean"] for k, v in m.items()}
    gap = {k: v["summary"]["gap_mean"] for k, v in m.items()}

    def beats(a: str, b: str, margin: float) -> bool:
        t = tests.get(f"{a} vs {b}")
        return bool(t and t["diff_points"] >= margin and t["p"] < 0.05 and t["t"] > 0)

    return {
        "enn beats plain by >= 2.8 points, p < 0.05": beats("enn", "plain", 2.8),
        "enn beats l1 by >= 2.8 points, p < 0.05": beats("enn", "l1", 2.8),
        "enn at least equal to he (mean)": mean["enn"] >= mean["he"],
        "he+enn beats he (p < 0.05)": beats("he+enn", "he", 0.0),
        "enn train-test gap below plain's": gap["enn"] < gap["plain"],
    }


def markdown(all_results: dict) -> str:
    lines = ["# Paper protocols", ""]
    for name, res in all_results.items():
        lines += [f"## {name}: {res['task']} ({res['seeds_count']} seeds, RL "
                  f"{res['rl']['timesteps']} segments of agent {res['rl']['agent']} in "
                  f"{res['rl']['seconds']:.0f} s)", "",
                  "| method | test acc % (mean +- std) | 95% CI +- | train-test gap | s/run |",
                  "|---|---|---|---|---|"]
        for method, entry in res["methods"].items():
            s = entry["summary"]
            lines.append(f"| {method} | {s['test_mean']:.2f} +- {s['test_std']:.2f} | "
                         f"{s['test_ci95']:.2f} | {s['gap_mean']:.2f} | {s['seconds_mean']:.2f} |")
        lines += ["", "| Welch test | diff (points) | p |", "|---|---|---|"]
        for test, t in res["tests"].items():
            lines.append(f"| {test} | {t['diff_points']:+.2f} | {t['p']:.3g} |")
        lines += ["", "ENN gradient / task gradient (L2 norms, first step of each epoch, "
                  "mean over seeds):", "",
                  "| method | " + " | ".join(f"ep {e}" for e in
                                          res["gradient_by_stage"]["enn"]["epochs"])
                  + " | Spearman rho (p) | first vs last epoch p |",
                  "|---|" + "---|" * (len(res["gradient_by_stage"]["enn"]["epochs"]) + 2)]
        for method, g in res["gradient_by_stage"].items():
            lines.append(f"| {method} | " + " | ".join(f"{r:.3g}" for r in g["ratio_mean"])
                         + f" | {g['spearman_rho']:+.2f} ({g['spearman_p']:.2g}) | "
                         f"{g['first_vs_last_p']:.2g} |")
        lines += ["", "| target | met |", "|---|---|"]
        for target, ok in res["targets"].items():
            lines.append(f"| {target} | {'yes' if ok else 'no'} |")
        lines.append("")
    return "\n".join(lines)


def run_protocol(name: str, seeds: int, timesteps: int | None, quick: bool,
                 agent: str) -> dict:
    from gradinstructor.agent import train_enn

    spec = PROTOCOLS[name]
    task = load_task(spec["task"])
    if quick:
        task = shrink_task(task)
    steps = timesteps or spec["timesteps"]
    seed_everything(0)
    start = time.perf_counter()
    trained = train_enn(task, load_agent_config(agent), total_timesteps=steps, seed=0,
                        progress_bar=False)
    rl_seconds = time.perf_counter() - start
    print(f"{name}: RL {steps} segments in {rl_seconds:.0f} s", file=sys.stderr)
    results = compare(task, trained.enn, seeds=range(seeds))
    results["gradient_by_stage"] = {m: gradient_by_stage(results["methods"][m]["runs"])
                                    for m in ENN_METHODS}
    for entry in results["methods"].values():
        for run in entry["runs"]:
            run.pop("curve")  # keep the JSON small; the demo's report has curves
    results.update(seeds_count=seeds, rl={"timesteps": steps, "seconds": rl_seconds,
                                         "agent": agent})
    results["targets"] = check_targets(results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocols", default="P1,P2", help="comma-separated: P1,P2")
    parser.add_argument("--seeds", type=int, default=10, help="seeds per method (default 10)")
    parser.add_argument("--timesteps", type=int, default=None,
                        help="RL segments per protocol (default: the protocol's)")
    parser.add_argument("--agent", default="ppo", help="agent settings (default ppo)")
    parser.add_argument("--quick", action="store_true",
                        help="shrunk tasks, for a smoke test only")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="where to write paper_protocols.{json,md}")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1, as the CLI)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [p.strip() for p in args.protocols.split(",") if p.strip()]
    for n in names:
        if n not in PROTOCOLS:
            parser.error(f"unknown protocol {n!r}; valid: {', '.join(PROTOCOLS)}")
    if args.seeds < 2:
        parser.error(f"--seeds must be at least 2 for a t-test, but got {args.seeds}")
    print(f"settings: {vars(args)}", file=sys.stderr)
    start = time.perf_counter()
    all_results = {n: run_protocol(n, args.seeds, args.timesteps, args.quick, args.agent)
                   for n in names}
    stem = "paper_protocols" + ("" if args.agent == "ppo" else f"_{Path(args.agent).stem}")
    stem += "_quick" if args.quick else ""
    write_json(args.out / f"{stem}.json", all_results)
    (args.out / f"{stem}.md").write_text(markdown(all_results))
    print(markdown(all_results))
    summary = {n: {m: round(e["summary"]["test_mean"], 2) for m, e in r["methods"].items()}
               for n, r in all_results.items()}
    summary["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
