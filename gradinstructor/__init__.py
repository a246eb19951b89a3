"""Grad-Instructor: train neural networks with an evaluator network (ENN) learned by RL.

The pipeline, one module per stage:

    tasks     data + target architecture
    env       a gymnasium environment that trains target networks
    agent     stable-baselines3 actor-critic whose critic is the ENN
    enn       the Evaluation Neural Network and its checkpoints
    trainer   GradInstructor: the ENN term inside any training loop
    compare   plain / L1 / He / ENN / He+ENN over seeds
    explain   Grad-CAM on the ENN
    report    local HTML dashboard; tracking logs to wandb

Example:
    >>> from gradinstructor import GradInstructor, ENN
"""

__version__ = "0.1.0"

from gradinstructor.enn import ENN, ENNConfig  # noqa: E402
from gradinstructor.render import render_weights  # noqa: E402
from gradinstructor.trainer import GradInstructor  # noqa: E402

__all__ = ["ENN", "ENNConfig", "GradInstructor", "render_weights", "__version__"]
