"""The Lightning callback: a real lightning.Trainer fits a small model with the ENN term."""

from __future__ import annotations

import copy
import csv

import pytest
import torch
import torch.nn.functional as F

L = pytest.importorskip("lightning", reason="the [lightning] extra is not installed")

from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from gradinstructor import ENN, GradInstructor  # noqa: E402
from gradinstructor.enn import CheckpointError  # noqa: E402
from gradinstructor.lightning import GradInstructorCallback  # noqa: E402
from gradinstructor.render import layer_shapes  # noqa: E402
from gradinstructor.tasks import build_mlp  # noqa: E402

STEPS = 6


class Classifier(L.LightningModule):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def _data():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8 * STEPS, 16, generator=gen), torch.randint(0, 4, (8 * STEPS,),
                                                                    generator=gen)
    return x, y


def _fit(net, callbacks, tmp_path, clip=None):
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path),
                        log_every_n_steps=1, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        gradient_clip_val=clip, callbacks=callbacks)
    module = Classifier(net)
    trainer.fit(module, loader)
    return module, trainer


def _manual(net, enn, schedule, clip=None):
    x, y = _data()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    gi = GradInstructor(net, enn, strength=schedule, total_steps=STEPS)
    for xb, yb in zip(x.split(8), y.split(8)):
        opt.zero_grad()
        gi(F.cross_entropy(net(xb), yb)).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
    return net


@pytest.mark.parametrize("clip", [None, 0.5])
def test_callback_matches_the_loss_form_and_logs_strength_and_score(tmp_path, clip):
    net = build_mlp([16, 12, 4], seed=0)
    torch.manual_seed(0)
    enn = ENN(layer_shapes=layer_shapes(net))
    schedule = lambda progress: 8.0 * (1.0 - progress)  # noqa: E731
    callback = GradInstructorCallback(enn, schedule)
    module, trainer = _fit(copy.deepcopy(net), [callback], tmp_path, clip)
    expected = _manual(copy.deepcopy(net), enn, schedule, clip)
    plain = _manual(copy.deepcopy(net), enn, 0.0, clip)
    for got, want in zip(module.net.parameters(), expected.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert any(float((w - b).detach().abs().max()) > 1e-4
               for w, b in zip(expected.parameters(), plain.parameters()))
    assert callback.instructor.step == STEPS

    with open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("gi/strength")]
    strengths = [float(r["gi/strength"]) for r in rows]
    scores = [float(r["gi/enn_score"]) for r in rows]
    assert strengths == pytest.approx([8.0 * (1 - s / STEPS) for s in range(STEPS)])
    assert len(scores) == STEPS and all(0.0 < s < 1.0 for s in scores)


def test_callback_on_a_submodule(tmp_path):
    """The callback trains the module given by ``submodule`` and leaves biases alone."""
    net = build_mlp([16, 12, 4], seed=1)
    enn = ENN(layer_shapes=layer_shapes(net))
    module, _ = _fit(copy.deepcopy(net), [GradInstructorCallback(enn, 3.0, submodule="net")],
                     tmp_path)
    expected = _manual(copy.deepcopy(net), enn, 3.0)
    for got, want in zip(module.net.parameters(), expected.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_callback_refuses_another_architecture(tmp_path):
    enn = ENN(layer_shapes=[(12, 16), (4, 12)])
    with pytest.raises(CheckpointError, match=r"\(12, 16\).*\(20, 16\)"):
        _fit(build_mlp([16, 20, 4]), [GradInstructorCallback(enn, 1.0)], tmp_path)


class _Recording(GradInstructorCallback):
    """Records, per step, the coefficients of what the instructor adds (and their g)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        super().on_fit_start(trainer, pl_module)
        gi, contribution = self.instructor, self.instructor._contribution
        self.added: list[tuple[int, list[float], list]] = []

        def record(strength: float):
            out = contribution(strength)
            parts = [] if out is None else [out]
            self.added.append((gi.step, [c for c, _ in parts], [g for _, g in parts]))
            return out

        gi._contribution = record


def test_a_resumed_fit_continues_the_instructor_where_the_checkpoint_left_it(tmp_path):
    """Fit 3 steps, save a checkpoint, resume to 6: the instructor goes on mid-window.

    Lumped windows of 4 steps at strength 2: the first window [0, 4) must add 4 x 2 at
    step 3 with the g computed at step 0, before the interruption; without the
    callback's state in the checkpoint it would add 2 with a new g. (The weights
    themselves are not compared: Lightning's resume of a plain DataLoader and
    optimiser is not bit-exact even without the ENN term.)
    """
    net = build_mlp([16, 12, 4], seed=2)
    torch.manual_seed(0)
    enn = ENN(layer_shapes=layer_shapes(net))
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)

    def trainer(steps: int, callback) -> L.Trainer:
        return L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                         enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=[callback])

    first = _Recording(enn, 2.0, total_steps=STEPS, every=4, log=False)
    t = trainer(3, first)
    t.fit(Classifier(copy.deepcopy(net)), loader)
    assert [(step, c) for step, c, _ in first.added] == [(0, []), (1, []), (2, [])]
    saved_g = [g.clone() for g in first.instructor._enn_grads]
    t.save_checkpoint(tmp_path / "part.ckpt")

    second = _Recording(enn, 2.0, total_steps=STEPS, every=4, log=False)
    trainer(STEPS, second).fit(Classifier(copy.deepcopy(net)), loader,
                               ckpt_path=tmp_path / "part.ckpt")
    assert [(step, c) for step, c, _ in second.added] == [(3, [8.0]), (4, []), (5, [4.0])]
    for got, want in zip(second.added[0][2][0], saved_g, strict=True):
        torch.testing.assert_close(got, want)
    assert second.instructor.step == STEPS and second.instructor.progress == 1.0
