"""GradInstructor: the added gradient is exactly -strength * dENN/dw; schedules; bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradinstructor.agent import ScheduleActor
from gradinstructor.enn import ENN
from gradinstructor.render import weight_parameters
from gradinstructor.tasks import build_mlp
from gradinstructor.trainer import (
    DivergenceError,
    GradInstructor,
    accuracy,
    batch_order,
    fit_target,
)

LR = 0.5  # large, so the weights move visibly between steps


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(16, 6, generator=generator), torch.randint(0, 3, (16,),
                                                                  generator=generator)


def _task_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x.to(next(model.parameters()).dtype)), y)


def _enn_grad(enn: ENN, model: nn.Module, progress: float) -> list[torch.Tensor]:
    """dENN/dw computed directly, independently of the wrapper."""
    return list(torch.autograd.grad(enn.score(model, progress), weight_parameters(model)))


def _wrapped_step(model: nn.Module, instructor: GradInstructor, batch):
    """One wrapped step: the gradients with and without the ENN term, then an SGD update."""
    params = list(model.parameters())
    loss = _task_loss(model, batch)
    plain = torch.autograd.grad(loss, params, retain_graph=True)
    total = instructor(loss)
    wrapped = torch.autograd.grad(total, params)
    with torch.no_grad():
        for p, g in zip(params, wrapped):
            p.sub_(LR * g)
    return plain, wrapped


def _weight_diffs(model, plain, wrapped) -> list[torch.Tensor]:
    """Wrapped minus plain gradient of each weight matrix; biases must be untouched."""
    weight_ids = {id(w) for w in weight_parameters(model)}
    diffs = []
    for p, a, b in zip(model.parameters(), plain, wrapped):
        if id(p) in weight_ids:
            diffs.append(b - a)
        else:
            assert torch.equal(a, b), "the ENN term changed a bias gradient"
    return diffs


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_every_step_adds_exactly_minus_strength_times_the_enn_gradient(tiny_mlp, tiny_enn,
                                                                       batch, dtype, tol):
    model = tiny_mlp.to(dtype)
    strength, total_steps = 2.5, 4
    instructor = GradInstructor(model, tiny_enn, strength=strength, total_steps=total_steps,
                                every=1)

    for step in range(total_steps):
        expected = _enn_grad(tiny_enn, model, progress=step / total_steps)
        plain, wrapped = _wrapped_step(model, instructor, batch)

        for diff, g in zip(_weight_diffs(model, plain, wrapped), expected, strict=True):
            assert g.abs().max() > 0
            torch.testing.assert_close(diff, -strength * g, rtol=tol, atol=tol)
    assert instructor.step == total_steps and instructor.progress == 1.0


def test_every_k_reuses_the_gradient_of_the_step_it_was_computed_at(tiny_mlp, tiny_enn, batch):
    model = tiny_mlp.double()
    strength, every, total_steps = 3.0, 3, 7
    instructor = GradInstructor(model, tiny_enn, strength=strength, total_steps=total_steps,
                                every=every, spread=True)

    reused = None
    for step in range(total_steps):
        fresh = _enn_grad(tiny_enn, model, progress=step / total_steps)
        if step % every == 0:
            reused = fresh
        plain, wrapped = _wrapped_step(model, instructor, batch)

        for diff, g_reused, g_fresh in zip(_weight_diffs(model, plain, wrapped), reused, fresh,
                                           strict=True):
            torch.testing.assert_close(diff, -strength * g_reused, rtol=1e-12, atol=1e-12)
            if step % every:  # the weights have moved: the fresh gradient is another one
                assert not torch.allclose(g_reused, g_fresh, rtol=1e-6, atol=1e-9)


def test_lumped_every_k_adds_a_windows_push_at_its_last_step_and_nothing_else(
        tiny_mlp, tiny_enn, batch):
    model = tiny_mlp.double()
    every, total_steps = 3, 7
    schedule = lambda progress: 1.0 + 4.0 * progress  # noqa: E731
    instructor = GradInstructor(model, tiny_enn, strength=schedule, total_steps=total_steps,
                                every=every)  # spread=None, no optimizer: lumped
    assert instructor.spread is False
    # windows [0, 3), [3, 6) and [6, 7) (cut short by the run's end): g at each window's
    # first step, the sum of the window's strengths times g at its last step
    window_g, window_sum = None, 0.0
    for step in range(total_steps):
        if step % every == 0:
            window_g, window_sum = _enn_grad(tiny_enn, model, progress=step / total_steps), 0.0
        window_sum += schedule(step / total_steps)
        plain, wrapped = _wrapped_step(model, instructor, batch)
        closes = step in (2, 5, 6)
        for diff, g in zip(_weight_diffs(model, plain, wrapped), window_g, strict=True):
            expected = -window_sum * g if closes else torch.zeros_like(g)
            torch.testing.assert_close(diff, expected, rtol=1e-12, atol=1e-12)
        assert instructor.last_strength == schedule(step / total_steps)


@pytest.mark.parametrize("strength", [2.0, lambda p: 1.0 + 10.0 * p, lambda p: float(p < 0.3)])
def test_lumped_and_spread_move_plain_sgd_weights_equally_over_windows(tiny_mlp, tiny_enn,
                                                                         strength):
    """With only the ENN term (no task loss) both reach the same weights at each window's end.

    Both compute g at a window's first step from the same weights; spread adds
    strength_t * g at each step, lumped the sum at the window's last step: the same
    total, whatever the schedule (constant, rising, switched off mid-window).
    """
    import copy

    every, total = 4, 10
    weights_at: dict[bool, list] = {}
    for spread in (False, True):
        model = copy.deepcopy(tiny_mlp).double()
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        gi = GradInstructor(model, tiny_enn, strength=strength, total_steps=total,
                            every=every, spread=spread)
        weights_at[spread] = []
        for step in range(total):
            optimizer.zero_grad()
            gi(sum(0.0 * p.sum() for p in model.parameters())).backward()
            optimizer.step()
            if step in (3, 7, 9):  # the windows' last steps
                weights_at[spread].append([w.detach().clone() for w in weight_parameters(model)])
    for lumped, spread in zip(weights_at[False], weights_at[True], strict=True):
        for a, b in zip(lumped, spread, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    moved = max(float((a - w.detach()).abs().max())
                for a, w in zip(weights_at[False][-1], weight_parameters(tiny_mlp)))
    assert moved > 1e-6


def test_spread_is_chosen_from_the_optimizer(tiny_mlp, tiny_enn):
    params = tiny_mlp.parameters

    def spread(**kwargs) -> bool:
        return GradInstructor(tiny_mlp, tiny_enn, total_steps=10, **kwargs).spread

    assert spread() is False
    assert spread(optimizer=torch.optim.SGD(params(), lr=0.1, momentum=0.9)) is False
    assert spread(optimizer=torch.optim.Adam(params())) is True
    assert spread(optimizer=torch.optim.RMSprop(params())) is True
    assert spread(optimizer=torch.optim.Adam(params()), spread=False) is False
    with pytest.raises(TypeError, match="spread must be True, False or None, but got 'yes'"):
        spread(spread="yes")
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        spread(optimizer="adam")
    with pytest.raises(ValueError, match="every must be a positive integer, but got True"):
        spread(every=True)


def test_strength_zero_changes_nothing(tiny_mlp, tiny_enn, batch):
    instructor = GradInstructor(tiny_mlp, tiny_enn, strength=0.0, total_steps=3)

    for _ in range(3):
        plain, wrapped = _wrapped_step(tiny_mlp, instructor, batch)
        assert all(torch.equal(a, b) for a, b in zip(plain, wrapped))
    loss = _task_loss(tiny_mlp, batch)
    assert torch.equal(instructor(loss), loss)


def test_a_callable_schedule_gets_the_progress_of_each_step(tiny_mlp, tiny_enn, batch):
    seen = []

    def schedule(progress: float) -> float:
        seen.append(progress)
        return 1.0 + 4.0 * progress

    instructor = GradInstructor(tiny_mlp, tiny_enn, strength=schedule, total_steps=4, every=1)
    model = tiny_mlp.double()

    for step in range(4):
        expected = _enn_grad(tiny_enn, model, progress=step / 4)
        plain, wrapped = _wrapped_step(model, instructor, batch)
        for diff, g in zip(_weight_diffs(model, plain, wrapped), expected):
            torch.testing.assert_close(diff, -(1.0 + step) * g, rtol=1e-12, atol=1e-12)

    assert seen == [0.0, 0.25, 0.5, 0.75]
    assert instructor.last_strength == 4.0
    instructor(_task_loss(model, batch))  # past the budget, progress stays at 1
    assert seen[-1] == 1.0 and instructor.progress == 1.0


class _RecordingActor(ScheduleActor):
    """A real ScheduleActor that also records when it was asked."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(n_layers=2, hidden=4, max_strength=10.0, ratio=0.15)
        self.asked: list[float] = []

    def choose(self, model, progress):
        self.asked.append(progress)
        return super().choose(model, progress)


def test_an_actor_chooses_the_strength_once_per_segment(tiny_mlp, tiny_enn, batch):
    actor = _RecordingActor()
    instructor = GradInstructor(tiny_mlp, tiny_enn, strength=actor, total_steps=8, segments=4)

    strengths = []
    for _ in range(8):
        _wrapped_step(tiny_mlp, instructor, batch)
        strengths.append(instructor.last_strength)

    assert actor.asked == [0.0, 0.25, 0.5, 0.75]
    assert all(0.0 <= s <= 10.0 for s in strengths)
    assert strengths[0] == strengths[1] and strengths[2] == strengths[3]


def test_the_enn_stays_frozen_in_a_plain_loop(tiny_mlp, tiny_enn, batch):
    before = {k: v.clone() for k, v in tiny_enn.state_dict().items()}
    optimizer = torch.optim.SGD(tiny_mlp.parameters(), lr=0.1)
    instructor = GradInstructor(tiny_mlp, tiny_enn, strength=10.0, total_steps=5)

    for _ in range(5):
        loss = instructor(_task_loss(tiny_mlp, batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    assert all(p.grad is None and not p.requires_grad for p in tiny_enn.parameters())
    assert all(torch.equal(v, before[k]) for k, v in tiny_enn.state_dict().items())
    assert 0.0 <= instructor.last_score <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"strength": -1.0}, "strength"), ({"strength": float("nan")}, "strength"),
     ({"total_steps": 0}, "total_steps"), ({"total_steps": -3}, "total_steps"),
     ({"total_steps": 2.5}, "total_steps"), ({"every": 0}, "every"), ({"every": -2}, "every"),
     ({"strength": float("inf")}, "strength"), ({"total_steps": True}, "total_steps"),
     ({"segments": 0}, "segments")],
)
def test_bad_arguments_are_refused_naming_the_argument(tiny_mlp, tiny_enn, kwargs, name):
    arguments = {"strength": 1.0, "total_steps": 10, "every": 1, **kwargs}
    with pytest.raises(ValueError, match=f"^{name} must be .*but got {kwargs[name]!r}"):
        GradInstructor(tiny_mlp, tiny_enn, **arguments)


@pytest.mark.parametrize("strength", ["abc", torch.tensor(2.0), True])
def test_a_strength_of_the_wrong_kind_is_refused_naming_it(tiny_mlp, tiny_enn, strength):
    with pytest.raises(TypeError, match="^strength must be a number, a callable"):
        GradInstructor(tiny_mlp, tiny_enn, strength=strength, total_steps=10)


def test_a_schedule_returning_a_negative_strength_is_named(tiny_mlp, tiny_enn, batch):
    gi = GradInstructor(tiny_mlp, tiny_enn, strength=lambda p: 1.0 - 2.0 * p, total_steps=4)
    for _ in range(3):  # progress 0, 0.25, 0.5: strengths 1, 0.5, 0
        gi(_task_loss(tiny_mlp, batch))
    with pytest.raises(ValueError, match=r"strength: the schedule returned -0.5 at progress "
                                         r"0.75 \(step 3\)"):
        gi(_task_loss(tiny_mlp, batch))


def test_a_model_without_weight_matrices_is_refused(tiny_enn):
    with pytest.raises(ValueError, match="no 2-D weight matrix"):
        GradInstructor(nn.Sequential(nn.ReLU(), nn.LayerNorm(4)), tiny_enn, total_steps=5)


def test_batch_order_visits_every_example_once_per_epoch():
    batches = list(batch_order(10, 4, epochs=2, seed=3))

    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    assert sorted(torch.cat(batches[:3]).tolist()) == list(range(10))
    assert sorted(torch.cat(batches[3:]).tolist()) == list(range(10))
    assert all(torch.equal(a, b) for a, b in zip(batches, batch_order(10, 4, 2, seed=3)))


def test_accuracy_by_hand():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    assert accuracy(model, x, torch.tensor([0, 1, 1, 1])) == 0.75


def test_divergence_is_reported_with_the_method(small_digits):
    model = build_mlp(small_digits.layer_sizes, seed=0)
    with pytest.raises(DivergenceError, match="^plain: .*Lower the learning rate"):
        fit_target(small_digits, model, seed=0, method="plain", lr=1e12)
