"""The job behind `python -m qat.search`: statistics once (for the most batches any trial may use), the IPEX
default recipe as the baseline, the staged search (qat.ptq.search_space), and the best setting written as Hydra
options (`calib=searched`, `smoothquant=searched`, `equalize=searched`)."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from qat import ptq
from qat.base.atomic import write_json, write_text
from qat.base.errors import QatError
from qat.config import SearchRunConfig
from qat.evaluation import Metrics, open_session
from qat.ptq.search_space import IPEX_DEFAULT, SearchTrial, TrialParams, best_trial, calib_setting, optimize
from qat.quant.config import CalibConfig, EqualizeConfig, SmoothQuantConfig

log = logging.getLogger(__name__)


@dataclass
class Baseline:
    params: TrialParams
    metrics: Metrics


@dataclass
class SearchResult:
    objective: str
    baseline_ipex_default: Baseline
    best: SearchTrial
    trials: list[SearchTrial]
    statistics_collections: int
    calib: CalibConfig
    smoothquant: SmoothQuantConfig
    equalize: EqualizeConfig


def run_search(cfg: SearchRunConfig, run_dir: Path) -> SearchResult:
    spaces = [cfg.search.narrow, cfg.search.wide]
    batches_needed = max(max(space.batches) for space in spaces)
    base = dataclasses.replace(cfg.calib, samples=batches_needed * cfg.calib.batch_size)
    session = open_session(cfg.model, cfg.data, cfg.eval, seed=cfg.seed, threads=cfg.threads,
                           metrics={"search.objective": cfg.search.objective}, only_tasks_of_metrics=True)
    ptq.check_recipe(session.encoder, session.calibration, cfg.quant)
    if len(session.calibration) < base.samples:
        raise QatError(f"the search space asks for {batches_needed} calibration batches of {cfg.calib.batch_size} "
                       f"({base.samples} texts) but the calibration set has {len(session.calibration)}; expected fewer "
                       "batches or more texts")
    trials = ptq.CalibrationTrials(session.encoder.model,
                                   ptq.calibration_batches(session.encoder, session.calibration, base), base,
                                   cfg.quant, cfg.smoothquant, cfg.equalize, session.measure([cfg.search.objective]))

    def objective(params: TrialParams) -> Metrics:
        return trials.metrics(calib_setting(base, params), params.alpha, params.equalize_alpha)

    baseline_params = dataclasses.replace(IPEX_DEFAULT, batches=-(-cfg.calib.samples // cfg.calib.batch_size))
    baseline = Baseline(baseline_params, objective(baseline_params))
    records = optimize(objective, cfg.search, cfg.seed, cfg.smoothquant.enabled, cfg.equalize.enabled)
    best = best_trial(records, cfg.search.objective)
    log.info("statistics collected %d time(s) for %d trials", trials.collections, len(records))

    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        for record in records:
            writer.add_scalar(f"search/{cfg.search.objective}", record.objective, record.trial)
    searched = calib_setting(base, best.params)
    smoothquant = dataclasses.replace(cfg.smoothquant, alpha=best.params.alpha if best.params.alpha is not None
                                      else cfg.smoothquant.alpha)
    equalize = dataclasses.replace(cfg.equalize, alpha=best.params.equalize_alpha
                                   if best.params.equalize_alpha is not None else cfg.equalize.alpha)
    header = ("# Written by qat.search: python -m qat.train --config-dir <this run>/conf calib=searched "
              "smoothquant=searched equalize=searched\n")
    for group, setting in (("calib", searched), ("smoothquant", smoothquant), ("equalize", equalize)):
        write_text(run_dir / "conf" / group / "searched.yaml", header + OmegaConf.to_yaml(OmegaConf.structured(setting)))
    result = SearchResult(cfg.search.objective, baseline, best, records, trials.collections, searched, smoothquant,
                          equalize)
    write_json(run_dir / "search.json", dataclasses.asdict(result))
    write_text(run_dir / "search.md", search_table(result))
    return result


def search_table(result: SearchResult) -> str:
    objective = result.objective
    lines = [f"# Calibration search ({objective}, {len(result.trials)} trials)", "",
             "| trial | stage | algorithm | percentile | batches | bias corr. | symmetric | SmoothQuant alpha | "
             "equalize alpha | " + objective + " | cosine_mean |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = [("IPEX default", "-", result.baseline_ipex_default)] + [(r.trial, r.stage, r) for r in result.trials]

    def cell(value: object) -> str:
        return "" if value is None else str(value)

    for trial, stage, record in rows:
        p, m = record.params, record.metrics
        lines.append(f"| {trial} | {stage} | {p.algorithm} | {cell(p.percentile)} | {p.batches} | "
                     f"{p.bias_correction} | {p.symmetric} | {cell(p.alpha)} | {cell(p.equalize_alpha)} | "
                     f"{m[objective]:.6g} | {m['cosine_mean']:.5f} |")
    lines += ["", f"Best: trial {result.best.trial} {result.best.params}."]
    return "\n".join(lines) + "\n"
