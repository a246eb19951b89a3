"""Settings as dataclasses, read from the YAML files in ``tasks/`` and ``agents/``.

Every field has a one-line docstring (the comment above it) and is validated
before any work starts: an unknown key, a wrong type or a value out of range
raises :class:`SettingsError` naming the key, the value and the valid choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class SettingsError(ValueError):
    """A settings file or option holds a key or value that is not valid."""


def _settings_dir(kind: str) -> Path:
    """The folder holding the shipped settings of ``kind`` (tasks, agents, sweeps).

    In a wheel they sit inside the package (``gradinstructor/_settings``); in a
    source checkout or an editable install, at the repository's top level.
    """
    packaged = Path(str(resources.files("gradinstructor"))) / "_settings" / kind
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / kind


def known_names(kind: str) -> list[str]:
    """Names of the shipped settings files of ``kind``, sorted."""
    folder = _settings_dir(kind)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def settings_path(kind: str, name: str) -> Path:
    """Path of the settings file called ``name`` (or ``name`` itself if it is a file).

    Raises:
        SettingsError: if no such settings exist; the message lists the known names.
    """
    as_path = Path(name)
    if as_path.suffix in {".yaml", ".yml"}:
        if as_path.is_file():
            return as_path
        problem = "is not a file" if as_path.exists() else "does not exist"
        raise SettingsError(f"{kind[:-1]} settings file {name!r} {problem}; known {kind}: "
                            f"{', '.join(known_names(kind))}")
    path = _settings_dir(kind) / f"{name}.yaml"
    if not path.is_file():
        known = known_names(kind)
        hint = _suggest(name, known)
        raise SettingsError(
            f"unknown {kind[:-1]} {name!r}{hint}; known {kind}: {', '.join(known)} "
            "(or pass the path of a .yaml file)"
        )
    return path


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a settings file with ``yaml.safe_load``; it must hold a mapping."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)  # plain data only: never builds Python objects
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SettingsError(f"{path}: not valid YAML settings{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SettingsError(f"{path}: cannot read the settings file ({err})") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _check_type(where: str, key: str, value: Any, hint: Any) -> Any:
    """Coerce ``value`` to the annotated type ``hint`` or raise SettingsError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _check_type(where, key, value, args[0])
    if origin in (list, tuple):
        (inner,) = typing.get_args(hint)[:1]
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"{where}: {key} must be a list, but got {value!r}")
        return [_check_type(where, f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if origin is dict or hint is dict:  # dict[str, int] or a bare dict
        if not isinstance(value, dict):
            raise SettingsError(f"{where}: {key} must be a mapping, but got {value!r}")
        return dict(value)
    return _check_scalar(where, key, value, hint)


def _check_scalar(where: str, key: str, value: Any, hint: Any) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise SettingsError(f"{where}: {key} must be true or false, but got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"{where}: {key} must be an integer, but got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{where}: {key} must be a number, but got {value!r}")
        if not math.isfinite(value):
            raise SettingsError(f"{where}: {key} must be a finite number, but got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise SettingsError(f"{where}: {key} must be a string, but got {value!r}")
        return value
    return value


T = typing.TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build the settings dataclass ``cls`` from ``data``, validating every key.

    Args:
        cls: a dataclass whose fields are the valid keys.
        data: the raw mapping (from YAML or the CLI).
        where: what to name in error messages (a file path or "--option").

    Raises:
        SettingsError: unknown key (with the nearest valid one), wrong type, or a
            value that the class's ``validate`` rejects.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise SettingsError(
                f"{where}: unknown key {key!r}{_suggest(str(key), names)}; "
                f"valid keys: {', '.join(names)}"
            )
        kwargs[key] = _check_type(where, key, value, hints[key])
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in kwargs]
    if missing:
        raise SettingsError(f"{where}: missing key {missing[0]!r}; required keys: "
                            f"{', '.join(required)}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(where)
    return obj


def require(where: str, key: str, ok: bool, value: Any, valid: str) -> None:
    """Raise SettingsError naming key, value and the valid range unless ``ok``."""
    if not ok:
        raise SettingsError(f"{where}: {key} must be {valid}, but got {value!r}")


@dataclasses.dataclass
class AgentConfig:
    """Settings of the RL agent that trains the ENN (one file in ``agents/``)."""

    # Name of these settings.
    name: str
    # The stable-baselines3 algorithm: "ppo" or "a2c".
    algorithm: str = "ppo"
    # Target networks trained side by side (one environment each).
    n_envs: int = 4
    # Segments per environment in one rollout.
    n_steps: int = 10
    # Minibatch size of a PPO update (PPO only).
    batch_size: int = 40
    # Passes over a rollout per PPO update (PPO only).
    n_epochs: int = 10
    # Learning rate of actor and critic.
    learning_rate: float = 3e-4
    # Discount; 1 makes the value the expected final accuracy.
    gamma: float = 1.0
    # GAE lambda; 1 makes the critic's target the Monte-Carlo return.
    gae_lambda: float = 1.0
    # Entropy bonus.
    ent_coef: float = 0.0
    # Weight of the value loss.
    vf_coef: float = 1.0
    # The action in [-1, 1] maps linearly to an ENN strength in [0, max_strength].
    max_strength: float = 30.0

    def validate(self, where: str) -> None:
        require(where, "algorithm", self.algorithm in ("ppo", "a2c"), self.algorithm,
                "one of: ppo, a2c")
        for key in ("n_envs", "n_steps", "batch_size", "n_epochs"):
            require(where, key, getattr(self, key) >= 1, getattr(self, key), "at least 1")
        if self.algorithm == "ppo":  # PPO normalises advantages per minibatch: 1 gives NaN
            rollout = self.n_envs * self.n_steps
            require(where, "batch_size", self.batch_size >= 2, self.batch_size,
                    "at least 2 for ppo (advantages are normalised per minibatch)")
            require(where, "n_steps", rollout >= 2, self.n_steps,
                    f"such that n_envs * n_steps is at least 2 for ppo (n_envs is {self.n_envs})")
            require(where, "batch_size", rollout % self.batch_size != 1, self.batch_size,
                    f"a size that leaves no minibatch of one from the n_envs * n_steps = "
                    f"{rollout} segments of a rollout (e.g. a divisor of {rollout})")
        require(where, "learning_rate", self.learning_rate > 0, self.learning_rate, "positive")
        require(where, "gamma", 0 < self.gamma <= 1, self.gamma, "in (0, 1]")
        require(where, "gae_lambda", 0 <= self.gae_lambda <= 1, self.gae_lambda, "in [0, 1]")
        require(where, "ent_coef", self.ent_coef >= 0, self.ent_coef, "non-negative")
        require(where, "vf_coef", self.vf_coef > 0, self.vf_coef, "positive")
        require(where, "max_strength", self.max_strength >= 0, self.max_strength,
                "non-negative")


def load_agent_config(name: str, **overrides: Any) -> AgentConfig:
    """Read agent settings by name (``agents/NAME.yaml``) or path, with overrides."""
    path = settings_path("agents", name)
    data = read_yaml(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(AgentConfig, data, str(path))
