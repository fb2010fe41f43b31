"""The calibration search space and its optimizer: Optuna's TPE over calibration settings, the narrow space first,
the wide one only if the narrow best misses the bound. The objective is a callable (a trial on shared statistics)."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from qat.base.progress import interactive
from qat.config import SearchConfig, SpaceConfig
from qat.evaluation.metrics import Metrics, higher_is_better
from qat.quant.config import CalibConfig

log = logging.getLogger(__name__)
ALPHA_STEP = 0.05


@dataclass(frozen=True)
class TrialParams:
    """One point of the space: `percentile` only for the percentile algorithm, `alpha` only with SmoothQuant on,
    `equalize_alpha` only with equalization on."""

    algorithm: str
    batches: int
    bias_correction: bool = False
    symmetric: bool = False
    percentile: float | None = None
    alpha: float | None = None
    equalize_alpha: float | None = None


IPEX_DEFAULT = TrialParams("histogram", batches=0)   # IPEX's default recipe; batches: those of calib.samples


@dataclass
class SearchTrial:
    stage: str          # 'narrow' or 'wide'
    trial: int
    params: TrialParams
    metrics: Metrics
    objective: float
    repeated: bool      # TPE proposed a point again: the deterministic objective was not measured twice


Objective = Callable[[TrialParams], Metrics]


def suggest(trial: Any, space: SpaceConfig, smoothquant: bool, equalize: bool = False) -> TrialParams:
    """One point of the space (alphas on a 0.05 grid: each alpha needs its own statistics)."""
    def number(name: str, bounds: list, kind: type, step: float | None = None) -> Any:
        if bounds[0] == bounds[-1]:
            return bounds[0]
        return trial.suggest_float(name, *bounds, step=step) if kind is float else trial.suggest_int(name, *bounds)

    algorithm = trial.suggest_categorical("algorithm", space.algorithm)
    percentile = number("percentile", space.percentile, float) if algorithm == "percentile" else None
    batches = number("batches", space.batches, int)
    return TrialParams(
        algorithm, batches, trial.suggest_categorical("bias_correction", space.bias_correction),
        trial.suggest_categorical("symmetric", space.symmetric), percentile,
        round(number("alpha", space.alpha, float, step=ALPHA_STEP), 4) if smoothquant else None,
        round(number("equalize_alpha", space.equalize_alpha, float, step=ALPHA_STEP), 4) if equalize else None)


def calib_setting(base: CalibConfig, params: TrialParams) -> CalibConfig:
    """The CalibConfig a trial stands for (samples = its batches x batch size)."""
    return dataclasses.replace(base, algorithm=params.algorithm,
                               percentile=params.percentile if params.percentile is not None else base.percentile,
                               samples=params.batches * base.batch_size, bias_correction=params.bias_correction,
                               symmetric=params.symmetric)


def optimize(objective: Objective, search: SearchConfig, seed: int, smoothquant: bool = False,
             equalize: bool = False) -> list[SearchTrial]:
    """Run the narrow stage, and the wide one if the bound is missed; every trial as a record."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    maximize = higher_is_better(search.objective)
    records: list[SearchTrial] = []
    measured: dict[TrialParams, Metrics] = {}

    def run(stage: str, space: SpaceConfig) -> None:
        study = optuna.create_study(direction="maximize" if maximize else "minimize",
                                    sampler=optuna.samplers.TPESampler(seed=seed))

        def trial_objective(trial: Any) -> float:
            params = suggest(trial, space, smoothquant, equalize)
            repeated = params in measured
            if not repeated:
                measured[params] = objective(params)
            metrics = measured[params]
            records.append(SearchTrial(stage, len(records), params, metrics, metrics[search.objective], repeated))
            log.info("%s trial %d: %s -> %s=%.6g", stage, len(records) - 1, params, search.objective,
                     metrics[search.objective])
            return metrics[search.objective]

        study.optimize(trial_objective, n_trials=search.trials, show_progress_bar=interactive())

    run("narrow", search.narrow)
    best = best_trial(records, search.objective)
    if search.bound is None or not meets(best.objective, search.bound, maximize):
        log.info("narrow best %s=%.6g misses the bound %s: widening", search.objective, best.objective, search.bound)
        run("wide", search.wide)
    return records


def meets(value: float, bound: float, maximize: bool) -> bool:
    return value >= bound if maximize else value <= bound


def best_trial(records: list[SearchTrial], objective: str) -> SearchTrial:
    return (max if higher_is_better(objective) else min)(records, key=lambda r: r.objective)
