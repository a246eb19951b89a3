"""Sweep files in W&B's format, validated before any work starts.

A sweep file is a W&B sweep configuration::

    method: random                 # grid, random or bayes
    metric: {name: gain, goal: maximize}
    run_cap: 6                     # default for --trials
    parameters:
      task: {value: digits}        # a constant
      enn_width: {values: [8, 16]} # a choice
      learning_rate: {distribution: log_uniform_values, min: 1.0e-4, max: 3.0e-3}

Every key is checked: an unknown top-level key, an unknown key inside a
parameter, a distribution without its bounds, or a parameter that a trial does
not know raises :class:`~gradinstructor.config.SettingsError` naming it, the
valid choices and the nearest one.

Optuna samples the distributions that have an Optuna counterpart (see
``DISTRIBUTIONS``); the others (normal, beta, ...) are W&B's only and are
refused with a pointer to ``--backend wandb``.

Example:
    >>> sweep = load_sweep("strength")                              # doctest: +SKIP
    >>> sweep.method, sorted(sweep.searched)                        # doctest: +SKIP
    ('grid', ['max_strength'])
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import logging
import math
from pathlib import Path
from typing import Any

from gradinstructor.config import SettingsError, read_yaml, settings_path

logger = logging.getLogger(__name__)

METHODS = ("grid", "random", "bayes")
GOALS = ("maximize", "minimize")
# What a trial reports; the sweep's metric must be one of them.
METRICS = ("gain", "enn_val_acc")
TOP_LEVEL_KEYS = ("method", "metric", "parameters", "name", "description", "run_cap",
                  "project", "entity", "program", "command", "early_terminate")
W_AND_B_ONLY_KEYS = ("program", "command", "early_terminate")  # kept for W&B, unused by Optuna
METRIC_KEYS = ("name", "goal", "target")
PARAMETER_KEYS = ("value", "values", "distribution", "min", "max", "q", "probabilities",
                  "mu", "sigma", "a", "b", "parameters")
# W&B distribution name -> how Optuna samples it.
DISTRIBUTIONS = {
    "constant": "constant",
    "categorical": "categorical",
    "int_uniform": "int",
    "uniform": "float",
    "q_uniform": "float",  # "int" when min, max and q are integers, as W&B's own mapping
    "log_uniform_values": "float",
    "log_uniform": "float",  # W&B: min and max are natural logs of the bounds
}
W_AND_B_ONLY_DISTRIBUTIONS = ("q_log_uniform", "q_log_uniform_values", "inv_log_uniform",
                              "inv_log_uniform_values", "normal", "q_normal", "log_normal",
                              "q_log_normal", "beta", "q_beta")


@dataclasses.dataclass
class Parameter:
    """One parameter of a sweep, in Optuna's terms.

    ``kind`` is "constant", "categorical", "int" or "float"; a float is
    log-scaled when ``log``; an int or a float is stepped by ``step`` when given.
    """

    name: str
    kind: str
    distribution: str
    value: Any = None
    values: list | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def suggest(self, trial) -> Any:
        """Draw this parameter for an Optuna ``trial`` (constants are not drawn)."""
        if self.kind == "constant":
            return self.value
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, self.values)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     step=int(self.step or 1))
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def grid(self, where: str) -> list:
        """The values of this parameter in a grid search.

        Raises:
            SettingsError: a continuous distribution, which a grid cannot enumerate.
        """
        if self.kind == "constant":
            return [self.value]
        if self.kind == "categorical":
            return list(self.values)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is not None and not self.log:
            count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
            return [round(self.low + i * self.step, 12) for i in range(count)]
        raise SettingsError(
            f"{where}: parameters.{self.name}: method grid cannot enumerate the continuous "
            f"distribution {self.distribution!r}; give `values`, use int_uniform or "
            "q_uniform, or use method random or bayes")

    def candidates(self) -> list:
        """Values that bound what this parameter can take, for checking them up front."""
        if self.kind == "constant":
            return [self.value]
        if self.kind == "categorical":
            return list(self.values)
        low, high = self.low, self.high
        return [int(low), int(high)] if self.kind == "int" else [float(low), float(high)]


@dataclasses.dataclass
class Sweep:
    """A validated sweep file."""

    # Search method: grid, random or bayes.
    method: str
    # Metric the study optimises: one of METRICS.
    metric: str
    # "maximize" or "minimize".
    goal: str
    # Stop the study once the best value reaches this (W&B's metric.target).
    target: float | None
    # Every parameter, constants included, by name.
    parameters: dict[str, Parameter]
    # The file's name key (default study name), or None.
    name: str | None
    # Default number of finished trials (W&B's run_cap), or None.
    run_cap: int | None
    # W&B project and entity, for the wandb backend and the trials' wandb runs.
    project: str | None
    entity: str | None
    # The file as read, for handing to W&B.
    raw: dict
    # Where the sweep came from, for messages.
    source: str

    @property
    def constants(self) -> dict[str, Any]:
        return {n: p.value for n, p in self.parameters.items() if p.kind == "constant"}

    @property
    def searched(self) -> dict[str, Parameter]:
        """Parameters that vary between trials."""
        return {n: p for n, p in self.parameters.items() if p.kind != "constant"}

    def grid_space(self) -> dict[str, list]:
        """Name -> values of the searched parameters, for a grid search."""
        return {n: p.grid(self.source) for n, p in self.searched.items()}

    def grid_points(self) -> list[dict[str, Any]]:
        """Every point of the grid, in file order."""
        space = self.grid_space()
        names = list(space)
        return [dict(zip(names, combo)) for combo in itertools.product(*space.values())]

    def with_constant(self, name: str, value: Any) -> Sweep:
        """A copy with ``name`` fixed to ``value`` (e.g. ``--seeds``), in ``raw`` too."""
        clone = copy.deepcopy(self)
        if name in clone.searched:
            logger.warning("%s: parameter %s is searched in the file; the command line fixes "
                           "it to %r", self.source, name, value)
        clone.parameters[name] = Parameter(name, "constant", "constant", value=value)
        clone.raw.setdefault("parameters", {})[name] = {"value": value}
        return clone


def load_sweep(name_or_path: str | Path, valid_parameters: list[str] | None = None,
               check_value=None) -> Sweep:
    """Read and validate a sweep file by name (``sweeps/NAME.yaml``) or path.

    Args:
        name_or_path: a shipped sweep's name or the path of a YAML file.
        valid_parameters: every parameter a trial knows
            (default: :func:`gradinstructor.search.trial.valid_parameters`).
        check_value: ``f(name, value, where)`` raising SettingsError for a value
            out of range (default: :func:`gradinstructor.search.trial.check_value`).

    Returns:
        The validated :class:`Sweep`.

    Raises:
        SettingsError: unknown sweep name, unknown key, missing bounds, a
            parameter the trial does not know, or a value out of range.

    Example:
        >>> load_sweep("enn-architecture").method                   # doctest: +SKIP
        'random'
    """
    path = settings_path("sweeps", str(name_or_path))
    return parse_sweep(read_yaml(path), str(path), valid_parameters, check_value)


def parse_sweep(data: dict, where: str = "sweep", valid_parameters: list[str] | None = None,
                check_value=None) -> Sweep:
    """Validate a sweep configuration already read into a dict (see :func:`load_sweep`)."""
    if valid_parameters is None or check_value is None:
        from gradinstructor.search import trial as trial_module

        valid_parameters = valid_parameters or trial_module.valid_parameters()
        check_value = check_value or trial_module.check_value
    if not isinstance(data, dict):
        raise SettingsError(f"{where}: a sweep must be a mapping, but got {type(data).__name__}")
    _check_keys(where, "sweep key", data, TOP_LEVEL_KEYS)
    for key in W_AND_B_ONLY_KEYS:
        if key in data:
            logger.warning("%s: %s is used by --backend wandb only; Optuna ignores it", where, key)

    method = data.get("method")
    if method not in METHODS:
        raise SettingsError(f"{where}: method must be one of {', '.join(METHODS)}, "
                            f"but got {method!r}{_suggest(str(method), list(METHODS))}")
    metric, goal, target = _parse_metric(where, data.get("metric"))
    run_cap = data.get("run_cap")
    if run_cap is not None and (isinstance(run_cap, bool) or not isinstance(run_cap, int)
                                or run_cap < 1):
        raise SettingsError(f"{where}: run_cap must be a positive integer, but got {run_cap!r}")
    params = _parse_parameters(where, data.get("parameters"), valid_parameters, check_value)

    sweep = Sweep(method=method, metric=metric, goal=goal, target=target, parameters=params,
                  name=data.get("name"), run_cap=run_cap, project=data.get("project"),
                  entity=data.get("entity"), raw=copy.deepcopy(data), source=where)
    if not sweep.searched:
        logger.warning("%s: every parameter is a constant; all trials run the same settings",
                       where)
    if method == "grid":
        sweep.grid_space()  # raises on a continuous distribution
    return sweep


def _parse_parameters(where: str, raw_params: Any, valid_parameters: list[str],
                      check_value) -> dict[str, Parameter]:
    if not isinstance(raw_params, dict) or not raw_params:
        raise SettingsError(f"{where}: parameters must be a non-empty mapping of name -> "
                            f"spec, but got {raw_params!r}")
    params = {}
    for name, spec in raw_params.items():
        if name not in valid_parameters:
            raise SettingsError(
                f"{where}: unknown parameter {name!r}{_suggest(str(name), valid_parameters)}"
                f"; a trial knows: {', '.join(valid_parameters)}")
        params[name] = _parse_parameter(where, name, spec)
        for value in params[name].candidates():
            try:
                check_value(name, value, f"{where}: parameters.{name}")
            except SettingsError as err:
                if params[name].kind == "float" and "must be an integer" in str(err):
                    raise SettingsError(f"{err}; for an integer setting give integer min and "
                                        "max (int_uniform) or `values`") from None
                raise
    return params


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(where: str, what: str, data: dict, valid: tuple[str, ...]) -> None:
    for key in data:
        if key not in valid:
            raise SettingsError(f"{where}: unknown {what} {key!r}{_suggest(str(key), list(valid))}"
                                f"; valid: {', '.join(valid)}")


def _parse_metric(where: str, metric: Any) -> tuple[str, str, float | None]:
    if metric is None:
        return "gain", "maximize", None
    if not isinstance(metric, dict):
        raise SettingsError(f"{where}: metric must be a mapping with name and goal, "
                            f"but got {metric!r}")
    _check_keys(where, "metric key", metric, METRIC_KEYS)
    name = metric.get("name", "gain")
    if name not in METRICS:
        raise SettingsError(f"{where}: metric.name must be one of {', '.join(METRICS)}, "
                            f"but got {name!r}{_suggest(str(name), list(METRICS))}")
    goal = metric.get("goal", "maximize")
    if goal not in GOALS:
        raise SettingsError(f"{where}: metric.goal must be one of {', '.join(GOALS)}, "
                            f"but got {goal!r}")
    if goal == "minimize":
        logger.warning("%s: metric %s with goal minimize searches for the ENN that helps "
                       "least; is that meant?", where, name)
    target = metric.get("target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))):
        raise SettingsError(f"{where}: metric.target must be a number, but got {target!r}")
    return name, goal, None if target is None else float(target)


def _number(where: str, name: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SettingsError(f"{where}: parameters.{name}.{key} must be a finite number, "
                            f"but got {value!r}")
    return value


def _parse_parameter(where: str, name: str, spec: Any) -> Parameter:
    """One parameter's spec -> :class:`Parameter`, inferring the distribution as W&B does."""
    here = f"{where}: parameters.{name}"
    if not isinstance(spec, dict):
        raise SettingsError(f"{here} must be a mapping such as {{value: ...}}, {{values: [...]}}"
                            f" or {{distribution: ..., min: ..., max: ...}}, but got {spec!r}")
    _check_keys(here, "parameter key", spec, PARAMETER_KEYS)
    if "parameters" in spec:
        raise SettingsError(f"{here}: nested parameters are not supported; give each setting "
                            "as a top-level parameter (e.g. enn_width, learning_rate)")
    distribution = spec.get("distribution") or _infer_distribution(here, spec)
    if distribution in W_AND_B_ONLY_DISTRIBUTIONS:
        raise SettingsError(f"{here}: distribution {distribution!r} has no Optuna counterpart; "
                            f"Optuna runs: {', '.join(DISTRIBUTIONS)} (or use --backend wandb)")
    if distribution not in DISTRIBUTIONS:
        valid = list(DISTRIBUTIONS) + list(W_AND_B_ONLY_DISTRIBUTIONS)
        raise SettingsError(f"{here}: unknown distribution {distribution!r}"
                            f"{_suggest(str(distribution), valid)}; valid: {', '.join(valid)}")

    if distribution == "constant":
        if "value" not in spec:
            raise SettingsError(f"{here}: distribution constant needs `value`")
        return Parameter(name, "constant", distribution, value=spec["value"])
    if distribution == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise SettingsError(f"{here}: distribution categorical needs a non-empty list "
                                f"`values`, but got {values!r}")
        if "probabilities" in spec:
            logger.warning("%s: probabilities are used by W&B only; Optuna draws the values "
                           "uniformly", here)
        if len(values) == 1:
            return Parameter(name, "constant", "constant", value=values[0])
        return Parameter(name, "categorical", distribution, values=list(values))
    return _parse_range(here, name, distribution, spec)


def _infer_distribution(here: str, spec: dict) -> str:
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical"
    if "min" in spec and "max" in spec:
        ints = all(isinstance(spec[k], int) and not isinstance(spec[k], bool)
                   for k in ("min", "max"))
        return "int_uniform" if ints else "uniform"
    raise SettingsError(f"{here}: give `value`, `values`, or a distribution with `min` and "
                        f"`max`, but got keys {', '.join(spec) or 'none'}")


def _parse_range(here: str, name: str, distribution: str, spec: dict) -> Parameter:
    missing = [k for k in ("min", "max") if k not in spec]
    if missing:
        raise SettingsError(f"{here}: distribution {distribution!r} needs bounds min and max; "
                            f"missing {' and '.join(missing)}")
    low = _number(here, name, "min", spec["min"])
    high = _number(here, name, "max", spec["max"])
    if low > high:
        raise SettingsError(f"{here}: min must not exceed max, but got min={low!r} max={high!r}")
    if distribution == "int_uniform":
        if not all(isinstance(v, int) for v in (low, high)):
            raise SettingsError(f"{here}: int_uniform needs integer bounds, but got "
                                f"min={low!r} max={high!r}")
        return Parameter(name, "int", distribution, low=low, high=high)
    if distribution == "log_uniform":  # W&B's bounds are exponents
        return Parameter(name, "float", distribution, low=math.exp(low), high=math.exp(high),
                         log=True)
    if distribution == "log_uniform_values":
        if low <= 0:
            raise SettingsError(f"{here}: log_uniform_values needs min > 0, but got {low!r}")
        return Parameter(name, "float", distribution, low=float(low), high=float(high), log=True)
    step = None
    if distribution == "q_uniform":
        step = _number(here, name, "q", spec.get("q", 1))
        if step <= 0:
            raise SettingsError(f"{here}: q must be positive, but got {step!r}")
        if all(isinstance(v, int) for v in (low, high, step)):  # integer values
            return Parameter(name, "int", distribution, low=low, high=high, step=step)
        step = float(step)
    return Parameter(name, "float", distribution, low=float(low), high=float(high), step=step)
