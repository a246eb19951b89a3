"""Universal backpropagation: the ENN as an extra term in any PyTorch training loop.

For a target network with weights theta, a frozen ENN E and a strength lambda_t:

    loss_total = loss_task(theta) - lambda_t * E(render(theta), progress)

Only theta is updated; the ENN stays frozen. Two added lines wrap an existing loop:

Example:
    >>> import torch, torch.nn.functional as F
    >>> from gradinstructor import ENN, GradInstructor
    >>> from gradinstructor.tasks import build_mlp
    >>> model = build_mlp([64, 32, 10])
    >>> enn = ENN(layer_shapes=[(32, 64), (10, 32)])
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.05)
    >>> gi = GradInstructor(model, enn, strength=10.0, total_steps=100)   # added line 1
    >>> x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    >>> loss = F.cross_entropy(model(x), y)
    >>> loss = gi(loss)                                                    # added line 2
    >>> opt.zero_grad(); loss.backward(); opt.step()

The gradient form gives the same update without touching the loss: after your own
``loss.backward()``, ``gi.add_gradient()`` adds ``-strength * dENN/dw`` to each
weight's ``.grad``, where any optimiser, gradient clipping or AMP scaler sees it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Union

import torch
import torch.nn.functional as F
from torch import nn

from gradinstructor.enn import ENN
from gradinstructor.render import weight_parameters

if TYPE_CHECKING:
    from gradinstructor.agent import ScheduleActor
    from gradinstructor.tasks import Task

# Steps between two computations of the ENN gradient, by default: about an epoch of
# mnist5k (47 steps). benchmarks/enn_overhead.py measures its cost and its accuracy.
DEFAULT_ENN_EVERY = 50

Strength = Union[float, Callable[[float], float], "ScheduleActor"]


class _LinearTerm(torch.autograd.Function):
    """``sum(s * g . w)`` over the weights as one autograd node (s * g given, detached).

    Its gradient in each weight is ``s * g`` times the incoming gradient; when that
    is -1 (``loss - term``, the usual case) the backward hands back the cached
    ``-s * g`` without computing anything, so a reused ENN gradient costs one dot
    product per weight matrix in the forward pass and nothing more in the backward
    (autograd copies a tensor it did not create before accumulating into it).
    """

    @staticmethod
    def forward(ctx, scaled, negated, *weights):
        ctx.scaled, ctx.negated = scaled, negated
        return sum(torch.dot(s.reshape(-1), w.reshape(-1)) for s, w in zip(scaled, weights))

    @staticmethod
    def backward(ctx, grad_out):
        if grad_out.device.type == "cpu" and float(grad_out) == -1.0:
            return (None, None, *ctx.negated)
        return (None, None, *[s * grad_out for s in ctx.scaled])


class GradInstructor:
    """Adds ``-strength * ENN(weights, progress)`` to the task loss of ``model``.

    Args:
        model: the target network; its 2-D weight matrices are what the ENN reads.
        enn: a trained :class:`ENN`; it is frozen (no gradient reaches its parameters).
        strength: a constant, a callable ``progress -> strength``, or a trained
            :class:`~gradinstructor.agent.ScheduleActor`, which picks the strength
            from the weights once per segment as it did in RL.
        total_steps: optimiser steps in the whole run, so that progress = step / total.
        segments: for an actor, how many times over the run it chooses a strength.
        ratio: rendering ratio; must match the ENN's (default: the ENN's).
        every: compute the ENN gradient g = dENN/dw once every ``every`` steps
            (default :data:`DEFAULT_ENN_EVERY`, 50; the weights move little from one
            step to the next). With 1 the added gradient is exactly
            ``-strength * dENN/dw`` at every step.
        spread: how a g computed once every k = ``every`` steps is applied. False
            (lumped): each window of k steps gets its g at its first step (with a
            non-zero strength) and, at its last step, the sum of its steps'
            strengths times g; the other steps cost exactly a plain step. For SGD,
            with or without momentum, the total push over a window is exactly the
            spread form's, only later in the window. True (spread): ``strength * g``
            at every step, reusing g; needed with optimisers that normalise each
            step's gradient (Adam, RMSprop, Adagrad): they would shrink a k-fold
            pulse to one ordinary step and, with their running second moment
            inflated by it, slow the steps after it. With ``every=1`` both are the
            exact term at every step. A run stopped before ``total_steps`` loses the
            push of its unfinished window.
            None (the default): spread unless ``optimizer`` is a
            ``torch.optim.SGD``; lumped when no optimizer is given. Measured: on the
            mnist5k MLP and the mnist5k-cnn CNN both give the every-step accuracy
            (``benchmarks/results/mnist5k-cnn.md``, README "Speed").
            ``benchmarks/enn_overhead.py`` measures the cost and the accuracy of both.
        optimizer: the optimiser of the loop, only to choose ``spread``. Pass it
            whenever it is not plain SGD (or pass ``spread=True``).

    The term is added as a linear surrogate ``sum(g * w)`` with g = dENN/dw
    (detached), so its gradient is exactly ``strength * g`` whichever step g
    was computed at.

    Raises:
        CheckpointError: the ENN was trained on other layer shapes or another ratio.
        ValueError: a negative or non-finite constant strength, or a ``total_steps``,
            ``segments`` or ``every`` that is not a positive integer.
        TypeError: a ``strength``, ``spread`` or ``optimizer`` of the wrong kind.
    """

    def __init__(self, model: nn.Module, enn: ENN, strength: Strength = 1.0,
                 total_steps: int = 1, segments: int = 10,
                 ratio: float | None = None, every: int = DEFAULT_ENN_EVERY,
                 spread: bool | None = None,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer, but got {total_steps!r}")
        if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
            raise ValueError(f"segments must be a positive integer, but got {segments!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, but got {every!r}")
        if spread is None:
            spread = optimizer is not None and not isinstance(optimizer, torch.optim.SGD)
        if not isinstance(spread, bool):
            raise TypeError(f"spread must be True, False or None, but got {spread!r}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer (or None), but got "
                            f"{optimizer!r} ({type(optimizer).__name__})")
        if isinstance(strength, bool) or not (isinstance(strength, (int, float))
                                              or callable(strength)
                                              or hasattr(strength, "choose")):
            raise TypeError(f"strength must be a number, a callable progress -> strength or a "
                            f"ScheduleActor, but got {strength!r} ({type(strength).__name__})")
        if isinstance(strength, (int, float)) and not 0 <= strength < math.inf:
            raise ValueError(
                f"strength must be a finite non-negative number (it scales gradient ascent on "
                f"the ENN score), but got {strength!r}"
            )
        enn.check_model(model, ratio)  # also a clear error if the model has no weights
        self.model = model
        self._weights = weight_parameters(model)
        # the ENN follows the target network to its device (a no-op when they agree)
        self.enn = enn.to(self._weights[0].device).eval().requires_grad_(False)
        self.strength = strength
        self.total_steps = total_steps
        self.segments = segments
        self.every = every
        self.spread = spread
        self.step = 0
        self.last_score = float("nan")
        self.last_strength = 0.0
        self._segment_strength: float | None = None
        self._enn_grads: list[torch.Tensor] | None = None  # dENN/dw, reused for `every` steps
        self._pending = 0.0  # lumped: the strengths summed over the window so far
        # strength * g and -strength * g for the linear term, and the g and strength of them
        self._scaled: list[torch.Tensor] = []
        self._negated: list[torch.Tensor] = []
        self._scaled_for: list[torch.Tensor] | None = None
        self._scaled_strength = 0.0

    @property
    def progress(self) -> float:
        """Fraction of the training budget used, in [0, 1]."""
        return min(1.0, self.step / self.total_steps)

    def current_strength(self) -> float:
        """The strength for the current step.

        Raises:
            ValueError: a schedule returned a negative or non-finite strength.
        """
        strength = self.strength
        if isinstance(strength, (int, float)):
            return float(strength)
        if hasattr(strength, "choose"):  # a ScheduleActor: one choice per segment
            steps_per_segment = max(1, self.total_steps // self.segments)
            if self._segment_strength is None or self.step % steps_per_segment == 0:
                self._segment_strength = strength.choose(self.model, self.progress)
            return self._segment_strength
        value = float(strength(self.progress))
        if not 0 <= value < math.inf:
            raise ValueError(f"strength: the schedule returned {value!r} at progress "
                             f"{self.progress:.4g} (step {self.step}); it must return a "
                             "finite non-negative number")
        return value

    def enn_gradient(self) -> list[torch.Tensor]:
        """dENN/dw for each weight parameter at the current weights and progress."""
        with torch.enable_grad():
            score = self.enn.score(self.model, self.progress)
            grads = torch.autograd.grad(score, self._weights)
        self.last_score = float(score.detach())
        return [g.detach() for g in grads]

    def _due(self) -> bool:
        """Whether this step computes a new ENN gradient (the spread form)."""
        return self._enn_grads is None or self.step % self.every == 0

    def _current_grads(self) -> list[torch.Tensor]:
        """dENN/dw for this step: recomputed every ``every`` steps, reused in between."""
        if self._due():
            self._enn_grads = self.enn_gradient()
        return self._enn_grads

    def _contribution(self, strength: float) -> tuple[float, list[torch.Tensor]] | None:
        """What this step adds to the gradient: (coefficient, g) for coefficient * g, or None.

        Spread: ``(strength, g)``, g recomputed every ``every`` steps. Lumped: steps
        ``[j * every, (j + 1) * every)`` form a window; its g is computed at its first
        step with a non-zero strength, the strengths of its steps are summed, and the
        sum times g is added at its last step (or at the run's last step, where a
        window is cut short), so that the total over a window is exactly the spread
        form's, whatever the strength does.
        """
        if self.spread:
            return (strength, self._current_grads()) if strength != 0.0 else None
        if self.step % self.every == 0:  # a new window
            self._enn_grads, self._pending = None, 0.0
        if strength != 0.0:
            if self._enn_grads is None:
                self._enn_grads = self.enn_gradient()
            self._pending += strength
        closes = (self.step + 1) % self.every == 0 or self.step + 1 == self.total_steps
        if closes and self._pending != 0.0:
            pending, self._pending = self._pending, 0.0
            return pending, self._enn_grads
        return None

    def enn_term(self) -> torch.Tensor:
        """A 0-d tensor whose gradient in the weights is what this step adds (see spread)."""
        strength = self.current_strength()
        self.last_strength = strength
        part = self._contribution(strength)
        if part is None:
            return torch.zeros((), device=self._weights[0].device)
        coefficient, grads = part
        if self._scaled_for is not grads or self._scaled_strength != coefficient:
            # cached until g or the coefficient changes: a reused g costs no new tensor
            self._scaled = [g * coefficient for g in grads]
            self._negated = [-s for s in self._scaled]
            self._scaled_for, self._scaled_strength = grads, coefficient
        return _LinearTerm.apply(self._scaled, self._negated, *self._weights)

    def add_gradient(self, scale: float | torch.Tensor = 1.0) -> float:
        """The gradient form: add ``-strength * dENN/dw`` to each weight's ``.grad``.

        Call it after your own ``loss.backward()`` and before the optimiser step (and
        before any gradient clipping), instead of wrapping the loss with ``gi(loss)``;
        the update is the same. It advances the step counter like ``gi(loss)`` does.

        Args:
            scale: multiplies the added gradient. With an AMP ``GradScaler`` either call
                this after ``scaler.unscale_(optimizer)`` (scale 1), or before it with
                ``scale=scaler.get_scale()`` so the term is scaled like the loss's.

        Returns:
            The strength used at this step.
        """
        strength = self.current_strength()
        self.last_strength = strength
        part = self._contribution(strength)
        if part is not None:
            coefficient, grads = part
            for g, w in zip(grads, self._weights):
                term = g.to(device=w.device, dtype=w.dtype) * (-coefficient * scale)
                if w.grad is None:
                    w.grad = term.clone()
                else:
                    w.grad.add_(term)
        self.step += 1
        return strength

    def state_dict(self) -> dict:
        """The progress of the run (step, the current window's g and summed strength, the
        actor's current choice, the last score and strength), with CPU tensors."""
        grads = self._enn_grads
        return {"step": self.step, "pending": self._pending,
                "segment_strength": self._segment_strength, "last_score": self.last_score,
                "last_strength": self.last_strength,
                "enn_grads": None if grads is None else [g.detach().cpu() for g in grads]}

    def load_state_dict(self, state: dict) -> None:
        """Go on from a :meth:`state_dict`; its tensors move to the weights' device."""
        self.step, self._pending = int(state["step"]), float(state["pending"])
        self._segment_strength = state["segment_strength"]
        self.last_score, self.last_strength = state["last_score"], state["last_strength"]
        grads, device = state["enn_grads"], self._weights[0].device
        self._enn_grads = None if grads is None else [g.to(device) for g in grads]

    def __call__(self, loss: torch.Tensor) -> torch.Tensor:
        """Return ``loss - strength * ENN(weights)`` and advance the step counter.

        At the steps where the lumped form applies nothing, ``loss`` itself.
        """
        term = self.enn_term()
        self.step += 1
        if term.grad_fn is None:  # nothing to add at this step: no extra graph node
            return loss
        return loss - term.to(loss.device)


# --------------------------------------------------------------------------- target training


@dataclasses.dataclass
class TrainResult:
    """Outcome of training one target network."""

    train_acc: float
    val_acc: float
    test_acc: float
    # Per epoch: train and validation accuracy, ENN strength and score, gradient norms.
    curve: list[dict]
    diverged: bool = False

    @property
    def gap(self) -> float:
        """Train minus test accuracy, in points of accuracy (fraction x 100)."""
        return 100.0 * (self.train_acc - self.test_acc)


class DivergenceError(RuntimeError):
    """Target training produced a non-finite loss or non-finite weights."""


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y`` (one full-batch pass)."""
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def batch_order(n: int, batch_size: int, epochs: int, seed: int) -> Iterator[torch.Tensor]:
    """Index minibatches for ``epochs`` passes over n examples, shuffled from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        yield from order.split(batch_size)


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of |w| over the weight matrices (biases excluded)."""
    return sum(w.abs().sum() for w in weight_parameters(model))


def fit_target(task: Task, model: nn.Module, seed: int, instructor: GradInstructor | None = None,
               l1: float = 0.0, method: str = "plain", lr: float | None = None) -> TrainResult:
    """Train ``model`` on ``task`` for its epoch budget, optionally with the ENN term.

    Args:
        task: data, optimiser, batch size and epochs.
        model: a freshly initialised target network.
        seed: seeds the minibatch order (the initialisation was seeded by the caller).
        instructor: adds the ENN term when given.
        l1: coefficient of an L1 penalty on the weight matrices.
        method: named in the error if training diverges.
        lr: overrides the task's learning rate.

    Raises:
        DivergenceError: the loss or the weights became non-finite; names the step,
            the method and the last finite loss.
    """
    data, cfg = task.data, task.config
    optimizer = task.make_optimizer(model, lr)
    steps_per_epoch = task.steps_per_epoch
    curve: list[dict] = []
    last_finite = float("nan")
    task_norm = enn_norm = 0.0
    step = 0
    for step, idx in enumerate(batch_order(len(data.train_y), cfg.batch_size, cfg.epochs, seed)):
        loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
        if l1:
            loss = loss + l1 * l1_penalty(model)
        if instructor is not None and (step % steps_per_epoch) == 0:
            # once per epoch: measure the size of the ENN gradient against the task's
            task_norm, enn_norm = gradient_norms(model, loss, instructor)
        total = instructor(loss) if instructor is not None else loss

        if not torch.isfinite(total):
            before = (f"last finite loss {last_finite:.4g} (step {step - 1})" if step else
                      "the first loss was not finite either")
            raise DivergenceError(
                f"{method}: loss became {float(total.detach())} at step {step} "
                f"(epoch {step // steps_per_epoch}); {before}. "
                "Lower the learning rate or the ENN strength"
            )
        last_finite = float(total.detach())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()

        if (step + 1) % steps_per_epoch == 0:
            curve.append({
                "epoch": (step + 1) // steps_per_epoch,
                "loss": last_finite,
                "train_acc": accuracy(model, data.train_x, data.train_y),
                "val_acc": accuracy(model, data.val_x, data.val_y),
                "strength": instructor.last_strength if instructor else 0.0,
                "enn_score": instructor.last_score if instructor else float("nan"),
                "task_grad_norm": task_norm,
                "enn_grad_norm": enn_norm,
            })
    _check_finite_weights(model, method, step, last_finite)
    return TrainResult(
        train_acc=accuracy(model, data.train_x, data.train_y),
        val_acc=accuracy(model, data.val_x, data.val_y),
        test_acc=accuracy(model, data.test_x, data.test_y),
        curve=curve,
    )


def gradient_norms(model: nn.Module, task_loss: torch.Tensor,
                   instructor: GradInstructor) -> tuple[float, float]:
    """L2 norms of the task gradient and of the ENN term's gradient over the weights."""
    task_grads = torch.autograd.grad(task_loss, weight_parameters(model), retain_graph=True)
    strength = instructor.current_strength()
    if strength == 0.0:
        return _norm(task_grads), 0.0
    return _norm(task_grads), strength * _norm(instructor.enn_gradient())


def _norm(grads) -> float:
    return float(torch.sqrt(sum((g.detach() ** 2).sum() for g in grads)))


def _check_finite_weights(model: nn.Module, method: str, step: int,
                          last_finite: float) -> None:
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise DivergenceError(
                f"{method}: parameter {name} became non-finite at step {step} (the last); "
                f"last finite loss {last_finite:.4g}. Lower the learning rate or the ENN strength"
            )
