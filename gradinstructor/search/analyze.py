"""Predicting the best ENN: a small model from each trial's diagnostics to its downstream gain.

The diagnostics (:mod:`.diagnostics`) are cheap next to the downstream
comparison, so a model that ranks trials from them shortens the search. How
well it ranks is measured on trials it did not see: each trial's gain is
predicted by a model fitted on all the others (leave-one-out), and the
Spearman correlation of those predictions with the measured gains is
reported. The predicted best ENN is the trial the model fitted on all trials
ranks first. Parameter importances come from :mod:`optuna.importance`.

Example:
    >>> analysis = analyze_study(study)                          # doctest: +SKIP
    >>> print(format_analysis(analysis))                         # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import optuna
from optuna.trial import TrialState

from gradinstructor.search.diagnostics import DIAGNOSTICS

logger = logging.getLogger(__name__)

MODELS = ("ridge", "gbr")
SHORT = {"critic_ev": "crit_ev", "critic_mse": "crit_mse", "zoo_tau": "zoo_tau",
         "zoo_mse": "zoo_mse", "grad_ratio": "grad_r", "push_ratio": "push_r",
         "rl_val_acc": "rl_acc", "rl_strength": "rl_str"}


def make_model(kind: str = "ridge", seed: int = 0):
    """A small regressor from diagnostics to gain: "ridge" (standardised) or "gbr".

    Missing diagnostics (None) are imputed with the median of the trials seen.
    """
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, but got {kind!r}")
    impute = SimpleImputer(strategy="median", keep_empty_features=True)
    if kind == "ridge":
        return make_pipeline(impute, StandardScaler(), Ridge(alpha=1.0))
    return make_pipeline(impute, GradientBoostingRegressor(n_estimators=100, max_depth=2,
                                                           random_state=seed))


def features(trials: list) -> np.ndarray:
    """(n_trials, len(DIAGNOSTICS)) matrix of diagnostics; NaN where one is missing."""
    rows = [[_float(t.user_attrs.get(name)) for name in DIAGNOSTICS] for t in trials]
    return np.array(rows, dtype=float).reshape(len(trials), len(DIAGNOSTICS))


def _float(value) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def leave_one_out(x: np.ndarray, y: np.ndarray, kind: str = "ridge") -> np.ndarray:
    """Each row's prediction by a model fitted on all the other rows."""
    predictions = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        predictions[i] = make_model(kind).fit(x[keep], y[keep]).predict(x[i:i + 1])[0]
    return predictions


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation, or None where it is undefined (constant input)."""
    from scipy.stats import spearmanr

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def importances(study: optuna.Study) -> tuple[dict[str, float], str | None]:
    """Optuna's parameter importances, or an empty dict and the reason they are missing."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study)), None
    except (ValueError, RuntimeError, ZeroDivisionError) as err:
        return {}, str(err).splitlines()[0] if str(err) else type(err).__name__


def analyze_study(study: optuna.Study, model: str = "ridge") -> dict:
    """Fit diagnostics -> metric on the complete trials; LOO Spearman; predicted best ENN.

    Args:
        study: a study run by :func:`~gradinstructor.search.run_sweep`.
        model: "ridge" or "gbr" (see :func:`make_model`).

    Returns:
        A dict: ``metric``, ``goal``, ``rows`` (one per complete trial: number, value,
        loo prediction, diagnostics, params), ``loo_spearman`` (None with fewer than
        3 trials), ``predicted_best`` and ``measured_best`` (number, params, value,
        prediction, checkpoint), ``importances``, ``failed`` (number, error).

    Raises:
        ValueError: the study has no complete trial, or ``model`` is unknown.

    Example:
        >>> analysis = analyze_study(study, model="ridge")       # doctest: +SKIP
        >>> analysis["predicted_best"]["number"]                 # doctest: +SKIP
        3
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, but got {model!r}")
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not trials:
        raise ValueError(f"study {study.study_name!r} has no complete trial to analyze yet; "
                         "run `gradinstructor sweep FILE` first")
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    x, y = features(trials), np.array([t.value for t in trials], dtype=float)

    loo = leave_one_out(x, y, model) if len(trials) >= 3 else np.full(len(y), np.nan)
    fitted = make_model(model).fit(x, y).predict(x) if len(trials) >= 2 else y.copy()
    pick = int(np.argmax(fitted) if maximize else np.argmin(fitted))
    best = int(np.argmax(y) if maximize else np.argmin(y))
    ranks, reason = importances(study)

    rows = [{"number": t.number, "value": float(t.value), "loo": _nan_none(p),
             "diagnostics": {n: t.user_attrs.get(n) for n in DIAGNOSTICS},
             "params": dict(t.params)} for t, p in zip(trials, loo)]
    failed = [{"number": t.number, "state": t.state.name,
               "error": t.user_attrs.get("error") or _heartbeat_note(t)}
              for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))]
    return {
        "study": study.study_name, "metric": study.user_attrs.get("metric", "value"),
        "goal": "maximize" if maximize else "minimize", "model": model, "rows": rows,
        "loo_spearman": spearman(loo, y) if len(trials) >= 3 else None,
        "predicted_best": _describe(trials[pick], float(fitted[pick])),
        "measured_best": _describe(trials[best], float(fitted[best])),
        "importances": ranks, "importances_note": reason, "failed": failed,
        "skipped": len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))),
    }


def _heartbeat_note(trial) -> str:
    return "its worker stopped beating (died); see the storage's heartbeat"


def _nan_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _describe(trial, prediction: float) -> dict:
    return {"number": trial.number, "value": float(trial.value), "prediction": prediction,
            "params": dict(trial.params), "checkpoint": trial.user_attrs.get("enn_path")}


def _cell(value, width: int = 8) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return f"{'-':>{width}}"
    return f"{value:>{width}.3f}"


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in params.items()) or "(no searched parameters)"


def format_analysis(analysis: dict) -> str:
    """The analysis as a fixed-width text table with a summary below it."""
    metric = analysis["metric"]
    head = f"{'trial':>5} {metric:>8} {'LOO-pred':>8} " + " ".join(
        f"{SHORT[n]:>8}" for n in DIAGNOSTICS)
    lines = [f"study {analysis['study']}: {len(analysis['rows'])} complete, "
             f"{len(analysis['failed'])} failed, {analysis['skipped']} skipped; "
             f"model {analysis['model']} on {len(DIAGNOSTICS)} diagnostics -> {metric} "
             f"({analysis['goal']})", head]
    for row in analysis["rows"]:
        cells = " ".join(_cell(row["diagnostics"][n]) for n in DIAGNOSTICS)
        lines.append(f"{row['number']:>5} {row['value']:>8.2f} {_cell(row['loo'])} {cells}")

    rho = analysis["loo_spearman"]
    lines.append("leave-one-out Spearman (prediction vs measured, trials unseen by the model): "
                 + ("n/a (needs 3 complete trials with varied values)" if rho is None
                    else f"{rho:+.3f}"))
    for key, label in (("predicted_best", "predicted best ENN"),
                       ("measured_best", "measured best ENN")):
        best = analysis[key]
        lines.append(f"{label}: trial {best['number']} (predicted {best['prediction']:+.2f}, "
                     f"measured {best['value']:+.2f}): {_params_text(best['params'])}"
                     + (f"; checkpoint {best['checkpoint']}" if best["checkpoint"] else ""))
    if analysis["importances"]:
        lines.append("parameter importances (optuna): " + ", ".join(
            f"{k} {v:.2f}" for k, v in analysis["importances"].items()))
    else:
        lines.append(f"parameter importances: n/a ({analysis['importances_note']})")
    for fail in analysis["failed"]:
        lines.append(f"failed trial {fail['number']}: {fail['error']}")
    return "\n".join(lines)
