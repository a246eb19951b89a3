"""A PyTorch Lightning callback that adds the ENN term to a LightningModule's training.

Install with ``pip install gradinstructor[lightning]``. The callback uses the
gradient form of :class:`~gradinstructor.trainer.GradInstructor`: after Lightning's
backward pass (and after AMP unscaling), before gradient clipping and the optimiser
step, it adds ``-strength * dENN/dw`` to each weight's ``.grad``. Nothing in the
module's ``training_step`` changes. The strength and the ENN score are logged through
the module's logger as ``gi/strength`` and ``gi/enn_score``.

Example:
    >>> import lightning as L
    >>> from gradinstructor import ENN
    >>> from gradinstructor.lightning import GradInstructorCallback
    >>> enn = ENN.load("runs/latest/enn.pt")                       # doctest: +SKIP
    >>> trainer = L.Trainer(max_epochs=5, callbacks=[GradInstructorCallback(enn, 10.0)])
    ...                                                           # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "gradinstructor.lightning needs PyTorch Lightning; install it with "
        "`pip install gradinstructor[lightning]`"
    ) from err

import torch
from torch import nn

from gradinstructor.enn import ENN
from gradinstructor.trainer import DEFAULT_ENN_EVERY, GradInstructor, Strength


class GradInstructorCallback(pl.Callback):
    """Adds ``-strength * dENN/dw`` to the gradients of a LightningModule's weights.

    Args:
        enn: a trained :class:`~gradinstructor.enn.ENN`.
        strength: a constant, a callable ``progress -> strength`` or a
            :class:`~gradinstructor.agent.ScheduleActor` (see :class:`GradInstructor`).
        total_steps: optimiser steps of the whole run, for the progress the ENN reads
            (default: Lightning's ``trainer.estimated_stepping_batches``).
        submodule: name of the attribute of the LightningModule holding the target
            network (default: the whole module, whose Linear and convolution weights
            must then be exactly the ones the ENN was trained on).
        every: compute the ENN gradient once every ``every`` optimiser steps
            (default :data:`~gradinstructor.trainer.DEFAULT_ENN_EVERY`).
        spread: as for :class:`GradInstructor`; None (the default) chooses from the
            trainer's optimisers at the start of fit: lumped if they are all
            ``torch.optim.SGD``, spread otherwise (Adam and other adaptive ones).
        log: log ``gi/strength`` and ``gi/enn_score`` through the module's logger.

    Raises:
        CheckpointError: at the start of fit, if the network has other layer shapes
            than the ENN was trained on.
    """

    def __init__(self, enn: ENN, strength: Strength = 1.0, total_steps: int | None = None,
                 submodule: str | None = None, every: int = DEFAULT_ENN_EVERY,
                 spread: bool | None = None, log: bool = True) -> None:
        super().__init__()
        self.enn = enn
        self.strength = strength
        self.total_steps = total_steps
        self.submodule = submodule
        self.every = every
        self.spread = spread
        self.log = log
        self.instructor: GradInstructor | None = None
        self._saved: dict[str, Any] | None = None  # from a checkpoint, for on_fit_start

    def _target(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.submodule is None:
            return pl_module
        target = getattr(pl_module, self.submodule, None)
        if not isinstance(target, nn.Module):
            raise AttributeError(
                f"GradInstructorCallback(submodule={self.submodule!r}): "
                f"{type(pl_module).__name__} has no submodule of that name")
        return target

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = self.total_steps
        if total is None:
            estimated = trainer.estimated_stepping_batches
            total = int(estimated) if estimated != float("inf") else 1
        self.enn.to(pl_module.device)
        spread = self.spread
        if spread is None:
            optimizers = list(getattr(trainer, "optimizers", None) or [])
            spread = not optimizers or not all(isinstance(o, torch.optim.SGD)
                                               for o in optimizers)
        self.instructor = GradInstructor(self._target(pl_module), self.enn,
                                         strength=self.strength, total_steps=max(1, total),
                                         every=self.every, spread=spread)
        # a fit resumed from a checkpoint goes on where it was: the step (so the progress
        # the ENN reads and the schedule continue), the window's g and summed strength
        saved, self._saved = self._saved, None
        if saved:
            self.instructor.load_state_dict(saved)
        else:
            self.instructor.step = int(trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        """The instructor's progress, saved in Lightning checkpoints (CPU tensors)."""
        return {} if self.instructor is None else self.instructor.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's state for the instructor made at the start of the fit."""
        self._saved = dict(state_dict) if state_dict else None

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: Any) -> None:
        if self.instructor is None:  # pragma: no cover - Lightning calls on_fit_start first
            return
        strength = self.instructor.add_gradient()
        if self.log:
            pl_module.log("gi/strength", float(strength), on_step=True, on_epoch=False)
            score = self.instructor.last_score
            if score == score:  # not NaN: the ENN was evaluated at least once
                pl_module.log("gi/enn_score", float(score), on_step=True, on_epoch=False)
