"""The job behind `python -m qat.sensitivity`: statistics once, the sensitivity analysis (qat.ptq.sensitivity),
and its outputs: the ranking as JSON, a table and a chart, and a Hydra `quant` option holding the skip list."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from qat import ptq
from qat.base.atomic import atomic_path, write_json, write_text
from qat.config import SensitivityRunConfig
from qat.evaluation import open_session
from qat.ptq import SensitivityResult
from qat.quant.config import QuantConfig
from qat.recovery import fidelity_floor

matplotlib.use("Agg")
from matplotlib import pyplot  # noqa: E402  (after choosing the non-interactive backend)

RESULT_FILE = "sensitivity.json"


def run_sensitivity(cfg: SensitivityRunConfig, run_dir: Path) -> SensitivityResult:
    """Statistics once (alphas chosen as in a run), the analysis, and its outputs in `run_dir`."""
    session = open_session(cfg.model, cfg.data, cfg.eval, seed=cfg.seed, threads=cfg.threads,
                           metrics={"recovery.metric": cfg.recovery.metric, "sensitivity.metric": cfg.sensitivity.metric},
                           only_tasks_of_metrics=True)
    ptq.check_recipe(session.encoder, session.calibration, cfg.quant)
    recovery = dataclasses.replace(cfg.recovery, metric=session.metrics["recovery.metric"])
    measure = session.measure([recovery.metric, cfg.sensitivity.metric])
    observed = ptq.observe_with_alphas(session.encoder.model,
                                       ptq.calibration_batches(session.encoder, session.calibration, cfg.calib),
                                       cfg.recipe, session.measure(list(ptq.ALPHA_OBJECTIVES)),
                                       fidelity_floor(cfg.recovery, session.encoder.pairs))
    result = ptq.analyse_sensitivity(observed.statistics, cfg.calib, cfg.quant, cfg.sensitivity, recovery, measure,
                                     measure(session.fp32()))
    write_outputs(result, session.encoder.source, cfg.quant, run_dir)
    return result


def write_outputs(result: SensitivityResult, model: str, quant: QuantConfig, run_dir: Path) -> None:
    """sensitivity.json / .md, the `quant=sensitive` option with the skip list, the ranking chart."""
    write_json(run_dir / RESULT_FILE, {"model": model, **dataclasses.asdict(result)})
    write_text(run_dir / "sensitivity.md", sensitivity_table(result))
    skipped = dataclasses.replace(quant, skip=list(dict.fromkeys(quant.skip + result.skip)))
    write_text(run_dir / "conf" / "quant" / "sensitive.yaml",
               "# Written by qat.sensitivity: python -m qat.train --config-dir <this run>/conf quant=sensitive\n"
               + OmegaConf.to_yaml(OmegaConf.structured(skipped)))
    figure = ranking_chart(result)
    with atomic_path(run_dir / "sensitivity.png") as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        writer.add_figure("sensitivity/ranking", figure)
    pyplot.close(figure)


def ranking_chart(result: SensitivityResult) -> pyplot.Figure:
    ranking = result.ranking
    labels = [r.group.removeprefix("encoder.layer.") for r in ranking]
    figure, axes = pyplot.subplots(1, 2, figsize=(12, 0.3 * len(ranking) + 1.5), sharey=True)
    axes[0].barh(labels, [r.gain_if_fp32 for r in ranking], color="tab:blue")
    axes[0].set_title(f"all-int8 {result.rank_by} loss removed\nwhen the group stays fp32")
    axes[1].barh(labels, [r.damage_alone for r in ranking], color="tab:orange")
    axes[1].set_title(f"{result.rank_by} loss with only\nthis group in int8")
    axes[0].invert_yaxis()
    figure.tight_layout()
    return figure


def sensitivity_table(result: SensitivityResult) -> str:
    rank_by, metric = result.rank_by, result.metric
    measures = dict.fromkeys([rank_by, metric])   # one entry when the ranking measure is recovery.metric
    all_int8 = ", ".join(f"{name} {result.all_int8[name]:.5g}" for name in measures)
    lines = [f"# Sensitivity ({', '.join(result.recipe)} in int8), ranked by {rank_by}", "",
             f"All int8: {all_int8} (fp32 {metric} {result.fp32[metric]:.5g}).", "",
             f"| rank | group | loss removed if fp32 | loss alone | {metric} all-but | {metric} only |", "|---|---|---|---|---|---|"]
    for rank, r in enumerate(result.ranking, start=1):
        lines.append(f"| {rank} | {r.group} | {r.gain_if_fp32:.5g} | {r.damage_alone:.5g} | "
                     f"{r.all_but_this[metric]:.5g} | {r.only_this[metric]:.5g} |")
    lines += ["", f"| top groups fp32 | {metric} | relative loss |", "|---|---|---|"]
    lines += [f"| {p.groups} | {p.metrics[metric]:.5g} | {p.loss:.5g} |" for p in result.prefixes]
    reached = "reaches" if result.reached_threshold else "does NOT reach"
    lines += ["", f"Skip list ({len(result.skip_groups)} groups, {reached} the threshold {result.threshold}): "
              f"{result.skip}"]
    return "\n".join(lines) + "\n"
