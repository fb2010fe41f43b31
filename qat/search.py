"""`python -m qat.search`: calibration search with Optuna's TPE sampler.

Activation statistics are collected once (for the most batches any trial may use); a trial only recomputes the
ranges from them, simulates the recipe and scores it against fp32. The narrow space is searched first; the wide
one only if the narrow best misses `search.bound`. The best setting is written as a Hydra `calib` option that
`python -m qat.train --config-dir <run>/conf calib=searched` takes as is.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from qat.atomic import write_json, write_text
from qat.calibrate import calibration_batches
from qat.config import SearchConfig, SearchRunConfig, SpaceConfig
from qat.errors import QatError
from qat.evaluate import Metrics, higher_is_better
from qat.progress import interactive
from qat.quant.config import CalibConfig
from qat.run_folder import JobKind
from qat.session import open_session
from qat.trials import CalibrationTrials

log = logging.getLogger(__name__)
JOB = JobKind("search", finished_marker="search.json", resumable=False)
Objective = Callable[[dict[str, Any]], Metrics]
IPEX_DEFAULT = {"algorithm": "histogram", "bias_correction": False, "symmetric": False}
ALPHA_STEP = 0.05


def suggest(trial: Any, space: SpaceConfig, smoothquant: bool, equalize: bool = False) -> dict[str, Any]:
    """One point of the space; the percentile only exists for the percentile algorithm, alpha only with
    SmoothQuant on, equalize_alpha only with equalization on (both on a 0.05 grid: each alpha needs its own
    statistics)."""
    def number(name: str, bounds: list, kind: type, step: float | None = None) -> Any:
        if bounds[0] == bounds[-1]:
            return bounds[0]
        return trial.suggest_float(name, *bounds, step=step) if kind is float else trial.suggest_int(name, *bounds)

    params: dict[str, Any] = {"algorithm": trial.suggest_categorical("algorithm", space.algorithm)}
    if params["algorithm"] == "percentile":
        params["percentile"] = number("percentile", space.percentile, float)
    params["batches"] = number("batches", space.batches, int)
    params["bias_correction"] = trial.suggest_categorical("bias_correction", space.bias_correction)
    params["symmetric"] = trial.suggest_categorical("symmetric", space.symmetric)
    if smoothquant:
        params["alpha"] = round(number("alpha", space.alpha, float, step=ALPHA_STEP), 4)
    if equalize:
        params["equalize_alpha"] = round(number("equalize_alpha", space.equalize_alpha, float, step=ALPHA_STEP), 4)
    return params


def calib_setting(base: CalibConfig, params: dict[str, Any]) -> CalibConfig:
    """The CalibConfig a trial stands for (samples = its batches x batch size)."""
    return dataclasses.replace(base, algorithm=params["algorithm"], percentile=params.get("percentile", base.percentile),
                               samples=params["batches"] * base.batch_size, bias_correction=params["bias_correction"],
                               symmetric=params["symmetric"])


def optimize(objective: Objective, search: SearchConfig, seed: int, smoothquant: bool = False,
             equalize: bool = False) -> list[dict[str, Any]]:
    """Run the narrow stage, and the wide one if the bound is missed; every trial as a record."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    maximize = higher_is_better(search.objective)
    records: list[dict[str, Any]] = []
    measured: dict[tuple, Metrics] = {}

    def run(stage: str, space: SpaceConfig) -> None:
        study = optuna.create_study(direction="maximize" if maximize else "minimize",
                                    sampler=optuna.samplers.TPESampler(seed=seed))

        def trial_objective(trial: Any) -> float:
            params = suggest(trial, space, smoothquant, equalize)
            key = tuple(sorted(params.items()))
            repeated = key in measured  # TPE may propose a point again: the objective is deterministic
            if not repeated:
                measured[key] = objective(params)
            metrics = measured[key]
            records.append({"stage": stage, "trial": len(records), "params": params, "metrics": metrics,
                            "objective": metrics[search.objective], "repeated": repeated})
            log.info("%s trial %d: %s -> %s=%.6g", stage, len(records) - 1, params, search.objective,
                     metrics[search.objective])
            return metrics[search.objective]

        study.optimize(trial_objective, n_trials=search.trials, show_progress_bar=interactive())

    run("narrow", search.narrow)
    best = best_record(records, search.objective)
    if search.bound is None or not meets(best["objective"], search.bound, maximize):
        log.info("narrow best %s=%.6g misses the bound %s: widening", search.objective, best["objective"], search.bound)
        run("wide", search.wide)
    return records


def meets(value: float, bound: float, maximize: bool) -> bool:
    return value >= bound if maximize else value <= bound


def best_record(records: list[dict[str, Any]], objective: str) -> dict[str, Any]:
    key = (lambda r: -r["objective"]) if higher_is_better(objective) else (lambda r: r["objective"])
    return min(records, key=key)


def run_search(cfg: SearchRunConfig, run_dir: Path) -> dict[str, Any]:
    """Statistics once, the IPEX default recipe as the baseline, then the staged search; writes the results."""
    spaces = [cfg.search.narrow, cfg.search.wide]
    batches_needed = max(max(space.batches) for space in spaces)
    base = dataclasses.replace(cfg.calib, samples=batches_needed * cfg.calib.batch_size)
    session = open_session(cfg.model, cfg.data, cfg.eval, seed=cfg.seed, threads=cfg.threads,
                           metrics={"search.objective": cfg.search.objective}, only_tasks_of_metrics=True, recipe=cfg.quant)
    if len(session.calibration) < base.samples:
        raise QatError(f"the search space asks for {batches_needed} calibration batches of {cfg.calib.batch_size} "
                       f"({base.samples} texts) but the calibration set has {len(session.calibration)}; expected fewer "
                       "batches or more texts")
    trials = CalibrationTrials(session, calibration_batches(session.encoder, session.calibration, base), base,
                               cfg.quant, cfg.smoothquant, cfg.equalize)

    def objective(params: dict[str, Any]) -> Metrics:
        return trials.metrics(calib_setting(base, params), params.get("alpha"), params.get("equalize_alpha"))

    baseline_params = {**IPEX_DEFAULT, "batches": -(-cfg.calib.samples // cfg.calib.batch_size)}
    baseline = {"params": baseline_params, "metrics": objective(baseline_params)}
    records = optimize(objective, cfg.search, cfg.seed, cfg.smoothquant.enabled, cfg.equalize.enabled)
    best = best_record(records, cfg.search.objective)
    log.info("statistics collected %d time(s) for %d trials", trials.collections, len(records))

    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        for record in records:
            writer.add_scalar(f"search/{cfg.search.objective}", record["objective"], record["trial"])
    searched = calib_setting(base, best["params"])
    header = ("# Written by qat.search: python -m qat.train --config-dir <this run>/conf calib=searched "
              "smoothquant=searched equalize=searched\n")
    write_text(run_dir / "conf" / "calib" / "searched.yaml", header + OmegaConf.to_yaml(OmegaConf.structured(searched)))
    smoothquant = dataclasses.replace(cfg.smoothquant, alpha=best["params"].get("alpha", cfg.smoothquant.alpha))
    write_text(run_dir / "conf" / "smoothquant" / "searched.yaml", header + OmegaConf.to_yaml(OmegaConf.structured(smoothquant)))
    equalize = dataclasses.replace(cfg.equalize, alpha=best["params"].get("equalize_alpha", cfg.equalize.alpha))
    write_text(run_dir / "conf" / "equalize" / "searched.yaml", header + OmegaConf.to_yaml(OmegaConf.structured(equalize)))
    result = {"objective": cfg.search.objective, "baseline_ipex_default": baseline, "best": best, "trials": records,
              "statistics_collections": trials.collections, "calib": dataclasses.asdict(searched),
              "smoothquant": dataclasses.asdict(smoothquant), "equalize": dataclasses.asdict(equalize)}
    write_json(run_dir / "search.json", result)
    write_text(run_dir / "search.md", search_table(result))
    return result


def search_table(result: dict[str, Any]) -> str:
    objective = result["objective"]
    lines = [f"# Calibration search ({objective}, {len(result['trials'])} trials)", "",
             "| trial | stage | algorithm | percentile | batches | bias corr. | symmetric | SmoothQuant alpha | "
             "equalize alpha | " + objective + " | cosine_mean |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = [("IPEX default", "-", result["baseline_ipex_default"])] + [(r["trial"], r["stage"], r) for r in result["trials"]]
    for trial, stage, record in rows:
        p, m = record["params"], record["metrics"]
        lines.append(f"| {trial} | {stage} | {p['algorithm']} | {p.get('percentile', '')} | {p['batches']} | "
                     f"{p['bias_correction']} | {p['symmetric']} | {p.get('alpha', '')} | {p.get('equalize_alpha', '')} | "
                     f"{m[objective]:.6g} | "
                     f"{m['cosine_mean']:.5f} |")
    lines += ["", f"Best: trial {result['best']['trial']} {result['best']['params']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    from qat.entry import run_job

    result, run_dir = run_job(JOB, SearchRunConfig, run_search)
    print(search_table(result))
    print(f"best {result['objective']}={result['best']['objective']:.6g} "
          f"(IPEX default {result['baseline_ipex_default']['metrics'][result['objective']]:.6g}); "
          f"results: {run_dir / 'search.md'}; use: python -m qat.train --config-dir {run_dir / 'conf'} calib=searched "
          "smoothquant=searched")


if __name__ == "__main__":
    main()
