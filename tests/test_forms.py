"""The two forms of the ENN term (a loss term, a gradient added after backward) agree."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from gradinstructor import ENN, GradInstructor
from gradinstructor.render import layer_shapes
from gradinstructor.tasks import build_mlp


def _setup(seed: int = 0):
    model = build_mlp([16, 12, 4], seed=seed)
    torch.manual_seed(seed)
    enn = ENN(layer_shapes=layer_shapes(model))
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(8, 16, generator=gen), torch.randint(0, 4, (8,), generator=gen))
               for _ in range(6)]
    return model, enn, batches


def _run(model, enn, batches, form: str, strength, every: int = 1, clip: float | None = None,
         optim: str = "sgd"):
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if optim == "sgd"
           else torch.optim.Adam(model.parameters(), lr=0.01))
    gi = GradInstructor(model, enn, strength=strength, total_steps=len(batches), every=every,
                        optimizer=opt)
    strengths = []
    for x, y in batches:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if form == "loss":
            gi(loss).backward()
        else:
            loss.backward()
            gi.add_gradient()
        strengths.append(gi.last_strength)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    return model, strengths


@pytest.mark.parametrize("every,clip,optim", [(1, None, "sgd"), (3, 0.5, "adam"),
                                              (3, None, "sgd")])
def test_loss_form_and_gradient_form_give_the_same_weights(every, clip, optim):
    model, enn, batches = _setup()
    schedule = lambda progress: 5.0 * (1.0 - progress)  # noqa: E731
    a, sa = _run(copy.deepcopy(model), enn, batches, "loss", schedule, every, clip, optim)
    b, sb = _run(copy.deepcopy(model), enn, batches, "grad", schedule, every, clip, optim)
    plain, _ = _run(copy.deepcopy(model), enn, batches, "grad", 0.0, every, clip, optim)
    assert sa == sb and sa[0] == 5.0 and sa[-1] < 5.0
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    # and the term did something: the weights differ from training without it
    moved = max(float((pa - pp).detach().abs().max()) for pa, pp in zip(a.parameters(),
                                                                  plain.parameters()))
    assert moved > 1e-4


def test_add_gradient_adds_exactly_minus_strength_times_enn_gradient():
    model, enn, batches = _setup(1)
    x, y = batches[0]
    F.cross_entropy(model(x), y).backward()
    weights = [model[0].weight, model[2].weight]
    task_grads = [w.grad.clone() for w in weights]
    score = enn.score(model, 0.0)
    enn_grads = torch.autograd.grad(score, weights)
    gi = GradInstructor(model, enn, strength=2.5, total_steps=10, every=1)
    assert gi.add_gradient() == 2.5
    assert gi.step == 1 and abs(gi.last_score - float(score.detach())) < 1e-6
    for w, t, g in zip(weights, task_grads, enn_grads):
        torch.testing.assert_close(w.grad, t - 2.5 * g)
    # biases untouched
    bias_before = model[0].bias.grad.clone()
    gi.add_gradient()
    torch.testing.assert_close(model[0].bias.grad, bias_before)


def test_add_gradient_fills_missing_grad_and_scale_multiplies():
    model, enn, _ = _setup(2)
    gi = GradInstructor(model, enn, strength=1.0, total_steps=10, every=1)
    gi.add_gradient(scale=4.0)  # no backward before: .grad was None
    first = [model[0].weight.grad.clone(), model[2].weight.grad.clone()]
    model.zero_grad(set_to_none=True)
    gi.step = 0
    gi.add_gradient()
    for w, f in zip([model[0].weight, model[2].weight], first):
        torch.testing.assert_close(f, 4.0 * w.grad)
    assert float(first[0].abs().sum()) > 0
