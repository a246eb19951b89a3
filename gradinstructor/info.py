"""``gradinstructor info CHECKPOINT``: what an ENN checkpoint was trained on.

Example:
    >>> print(describe_checkpoint("runs/latest/enn.pt"))  # doctest: +SKIP
    ENN checkpoint runs/latest/enn.pt
      task:            mnist5k
      ...
"""

from __future__ import annotations

import os
from typing import Any

from gradinstructor.enn import ENN, load_payload

# metadata keys shown in their own lines, in this order; the rest go under diagnostics
_TRAINING = (("agent", "agent"), ("algorithm", "algorithm"), ("seed", "seed"),
             ("total_timesteps", "timesteps asked"), ("num_timesteps", "timesteps played"),
             ("episodes", "episodes"), ("seconds", "seconds"), ("resumed_at", "resumed at"))


def checkpoint_info(path: str | os.PathLike) -> dict[str, Any]:
    """The facts of an ENN checkpoint as plain data.

    Raises:
        CheckpointError: missing, damaged or not an ENN checkpoint (one line).
    """
    payload = load_payload(path, "gradinstructor-enn")
    enn = ENN.load(path)  # checks the config and the weights, not just the header
    config = enn.config
    meta = dict(enn.metadata)
    shown = {"task"} | {key for key, _ in _TRAINING}
    return {
        "path": str(path),
        "task": meta.get("task"),
        "layer_shapes": [list(s) for s in config.layer_shapes],
        "layer_kinds": config.layer_kinds,
        "any_width": config.any_width,
        "ratio": config.ratio,
        "enn": {"width": config.width, "embed": config.embed, "hidden": config.hidden,
                "parameters": sum(p.numel() for p in enn.parameters())},
        "version": payload.get("version"),
        "format_version": payload.get("format_version"),
        "training": {key: meta[key] for key, _ in _TRAINING if key in meta},
        "strength_schedule": enn.actor_payload is not None,
        "diagnostics": {k: v for k, v in meta.items() if k not in shown},
    }


def describe_checkpoint(path: str | os.PathLike) -> str:
    """A readable summary of :func:`checkpoint_info`."""
    info = checkpoint_info(path)
    shapes = ", ".join(f"{r}x{c}" for r, c in info["layer_shapes"])
    kinds = f" ({', '.join(info['layer_kinds'])})" if info["layer_kinds"] else ""
    widths = "; any width of this depth" if info["any_width"] else ""
    enn = info["enn"]
    lines = [
        f"ENN checkpoint {info['path']}",
        f"  task:              {info['task'] or 'unknown (not recorded)'}",
        f"  layer shapes:      {shapes}{kinds}{widths}",
        f"  ratio:             {info['ratio']}",
        f"  ENN:               trunk width {enn['width']}, embedding {enn['embed']}, "
        f"head {enn['hidden']}; {enn['parameters']:,} parameters",
        f"  written by:        gradinstructor {info['version']} "
        f"(format version {info['format_version']})",
        f"  strength schedule: {'yes (trained actor)' if info['strength_schedule'] else 'no'}",
    ]
    training = info["training"]
    if training:
        lines.append("  training:")
        lines += [f"    {label + ':':<17} {training[key]}" for key, label in _TRAINING
                  if key in training]
    else:
        lines.append("  training:          not recorded (not trained by train-enn)")
    if info["diagnostics"]:
        lines.append("  diagnostics:")
        lines += [f"    {key + ':':<17} {_fmt(value)}"
                  for key, value in sorted(info["diagnostics"].items())]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
