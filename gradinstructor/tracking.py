"""Tracking: one small interface, with wandb and no-op backends.

Metrics are grouped by stage: ``train/`` (target training), ``rl/`` (the agent),
``eval/`` (comparison), ``explain/`` (Grad-CAM). The wandb backend runs offline
unless the user is logged in (or sets ``WANDB_MODE``); it never needs a network.

Example:
    >>> tracker = make_tracker("none")
    >>> tracker.log({"train/loss": 0.5}, step=1)
    >>> tracker.finish()
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class Tracker(Protocol):
    """What the pipeline logs to."""

    def log(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None: ...

    def log_image(self, name: str, path: str | os.PathLike, step: int | None = None,
                  caption: str = "") -> None: ...

    def finish(self) -> None: ...


class NullTracker:
    """Records nothing; for tests and for ``--tracker none``."""

    run_dir: Path | None = None

    def log(self, metrics, step=None) -> None:
        pass

    def log_table(self, name, columns, rows) -> None:
        pass

    def log_image(self, name, path, step=None, caption="") -> None:
        pass

    def finish(self) -> None:
        pass


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class WandbTracker:
    """Logs to a wandb run: offline unless logged in or ``WANDB_MODE`` says otherwise.

    Args:
        project: wandb project name.
        directory: where wandb writes its files (``DIR/wandb/offline-run-*``).
        config: run settings, recorded with the run.
        name: run name.
        group: run group (a sweep's trials share one).
    """

    def __init__(self, project: str, directory: str | os.PathLike, config: dict | None = None,
                 name: str | None = None, group: str | None = None) -> None:
        import wandb

        self._wandb = wandb
        mode = os.environ.get("WANDB_MODE") or ("online" if _logged_in() else "offline")
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, dir=str(directory), config=config or {},
                              name=name, group=group, mode=mode, reinit="finish_previous",
                              settings=wandb.Settings(silent=True, console="off"))
        self.run_dir = Path(self.run.dir).parent if self.run is not None else None
        logger.info("wandb run in %s mode: %s", mode, self.run_dir)

    def log(self, metrics, step=None) -> None:
        self.run.log(dict(metrics), step=step)

    def log_table(self, name, columns, rows) -> None:
        table = self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])
        self.run.log({name: table})

    def log_image(self, name, path, step=None, caption="") -> None:
        self.run.log({name: self._wandb.Image(str(path), caption=caption)}, step=step)

    def finish(self) -> None:
        self.run.finish()


TRACKERS = ("wandb", "none")


def make_tracker(kind: str, project: str = "gradinstructor", directory: str | os.PathLike = ".",
                 config: dict | None = None, name: str | None = None,
                 group: str | None = None) -> Tracker:
    """A tracker by name: "wandb" or "none"."""
    if kind == "none":
        return NullTracker()
    if kind == "wandb":
        return WandbTracker(project, directory, config=config, name=name, group=group)
    raise ValueError(f"tracker must be one of {', '.join(TRACKERS)}, but got {kind!r}")
