"""Argument types shared by the benchmark scripts: one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer of at least 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, but got {text!r}")
    return value


def positive_ints(text: str) -> list[int]:
    """A comma-separated list of integers of at least 1 (argparse type)."""
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"must list positive integers, but got {text!r}")
    try:
        return [positive_int(v) for v in values]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must list positive integers separated by commas, but got {text!r}") from None


def strength_or_actor(text: str) -> float | str:
    """'actor', or a finite non-negative number (argparse type)."""
    if text == "actor":
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a finite non-negative number or 'actor', but got {text!r}")
    return value
