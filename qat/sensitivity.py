"""`python -m qat.sensitivity`: which op groups to leave in fp32, ranked by what quantizing them costs.

Groups follow the int8 graph: Q/K/V as one group, attention output, FFN in, FFN out, each residual add on its
own, each layer's attention matmuls, the embedding adds, and any head. A residual add is a group of its own, not
part of its module's Linear (which IPEX fuses it with), because the two fail for different reasons: the add's
input is the Linear's output, where an encoder's massive activations sit (all-MiniLM-L6-v2's layer-0 FFN output
reaches about 190 while most channels stay within 1, so one per-tensor int8 step swallows them), and leaving only
the add fp32 keeps the Linear int8 (Bondarenko et al., 2021, found the same in BERT's FFN residual sums).
Each group is measured both ways against fp32 on held-out texts (and dev task sets): only this group in int8,
and everything but this group in int8. The ranking is by how much the all-int8 loss falls
when the group stays fp32; the skip list is the top k groups, or the fewest top groups that bring the loss on
`recovery.metric` under `recovery.threshold`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from qat.atomic import atomic_path, write_json, write_text
from qat.calibrate import Statistics, apply_calibration, calibration_batches
from qat.config import RecoveryConfig, SensitivityConfig, SensitivityRunConfig
from qat.errors import QatError
from qat.evaluate import Metrics, relative_loss
from qat.progress import progress
from qat.quant.config import OP_KINDS, CalibConfig, QuantConfig
from qat.quant.qconf import Qconf
from qat.quant.simulate import simulate
from qat.run_folder import JobKind
from qat.session import Session, open_session
from qat.trials import observe_for_run

matplotlib.use("Agg")
from matplotlib import pyplot  # noqa: E402  (after choosing the non-interactive backend)

log = logging.getLogger(__name__)
JOB = JobKind("sensitivity", finished_marker="sensitivity.json", resumable=False)
QKV = re.compile(r"(.*\.attention\.self)\.(query|key|value)")
RESULT_FILE = "sensitivity.json"


@dataclass
class GroupMeasurement:
    """One group measured both ways against fp32."""

    group: str
    skip: list[str]                 # the op names the group stands for in a skip list
    only_this: Metrics              # only this group in int8
    all_but_this: Metrics           # every group but this one in int8
    damage_alone: float             # loss (rank_by) with only this group in int8
    gain_if_fp32: float             # how much the all-int8 loss (rank_by) falls when this group stays fp32


@dataclass
class SkipPrefix:
    """The recipe with the top `groups` ranked groups left fp32."""

    groups: int
    metrics: Metrics
    loss: float


@dataclass
class SensitivityResult:
    model: str
    recipe: list[str]
    user_skip: list[str]
    rank_by: str
    metric: str
    threshold: float
    fp32: Metrics
    all_int8: Metrics
    ranking: list[GroupMeasurement]
    prefixes: list[SkipPrefix]
    skip_groups: list[str]
    skip: list[str]
    reached_threshold: bool


def sensitivity_groups(qconf: Qconf) -> dict[str, list[str]]:
    """Group name -> the skip entries (op names) of the qconf's int8 ops in that group, in model order."""
    groups: dict[str, list[str]] = {}
    for op in (op for op in qconf.ops if op.kind in OP_KINDS and op.quantized):
        match = QKV.fullmatch(op.name)
        group = f"{match.group(1)}.qkv" if match else op.name
        entries = groups.setdefault(group, [])
        if op.name not in entries:
            entries.append(op.name)
    return groups


def analyse_sensitivity(session: Session, observed: Statistics, calib: CalibConfig, quant: QuantConfig,
                        sensitivity: SensitivityConfig, recovery: RecoveryConfig) -> SensitivityResult:
    """Measure every group of the calibrated recipe both ways, rank, and choose the skip list."""
    metric, rank_by = recovery.metric, sensitivity.metric
    dev = session.dev.for_metrics([metric, rank_by])
    fp32 = session.evaluate_dev(session.fp32(), dev)
    calibration = apply_calibration(observed, calib, quant)
    groups = sensitivity_groups(calibration.qconf)
    if not groups:
        raise QatError(f"quant.ops={quant.ops} with skip {quant.skip} puts no op in int8; expected a recipe to analyse")

    def measure(skip: list[str]) -> Metrics:
        """The recipe with these groups' ops left fp32 as well (the user's quant.skip always stays fp32)."""
        qconf = calibration.qconf.with_recipe(dataclasses.replace(quant, skip=quant.skip + skip))
        return session.evaluate_dev(simulate(calibration.model, qconf).eval(), dev)

    def loss(metrics: Metrics, name: str) -> float:
        return relative_loss(name, fp32[name], metrics[name])

    all_int8 = measure([])
    rows = []
    for group, entries in progress(groups.items(), desc="sensitivity groups", unit="group"):
        others = [e for g, es in groups.items() if g != group for e in es]
        only, all_but = measure(others), measure(entries)
        rows.append(GroupMeasurement(group, entries, only, all_but, loss(only, rank_by),
                                     loss(all_int8, rank_by) - loss(all_but, rank_by)))
        log.info("%s: alone %s loss %.5g; left fp32 the all-int8 loss falls by %.5g", group, rank_by,
                 rows[-1].damage_alone, rows[-1].gain_if_fp32)
    ranking = sorted(rows, key=lambda r: r.gain_if_fp32, reverse=True)

    prefixes = [SkipPrefix(0, all_int8, loss(all_int8, metric))]
    limit = sensitivity.top_k if sensitivity.top_k is not None else min(sensitivity.max_skip, len(ranking))
    while len(prefixes) <= limit and (sensitivity.top_k is not None or prefixes[-1].loss > recovery.threshold):
        count = len(prefixes)
        metrics = measure([e for r in ranking[:count] for e in r.skip])
        prefixes.append(SkipPrefix(count, metrics, loss(metrics, metric)))
        log.info("top %d groups fp32: %s loss %.5g", count, metric, prefixes[-1].loss)
    chosen = prefixes[-1]
    return SensitivityResult(
        session.encoder.source, sorted(quant.op_kinds()), quant.skip, rank_by, metric, recovery.threshold, fp32,
        all_int8, ranking, prefixes, [r.group for r in ranking[:chosen.groups]],
        [e for r in ranking[:chosen.groups] for e in r.skip], chosen.loss <= recovery.threshold)


def read_skip_list(out_dir: Path) -> list[str]:
    """The skip list a finished sensitivity stage wrote (a resumed run reuses it)."""
    return json.loads((out_dir / RESULT_FILE).read_text())["skip"]


def run_sensitivity(cfg: SensitivityRunConfig, run_dir: Path) -> SensitivityResult:
    """The `qat.sensitivity` job: statistics once, the analysis, and its outputs in `run_dir`."""
    session = open_session(cfg.model, cfg.data, cfg.eval, seed=cfg.seed, threads=cfg.threads,
                           metrics={"recovery.metric": cfg.recovery.metric, "sensitivity.metric": cfg.sensitivity.metric},
                           only_tasks_of_metrics=True, recipe=cfg.quant)
    observed = observe_for_run(session, calibration_batches(session.encoder, session.calibration, cfg.calib),
                               cfg.calib, cfg.quant, cfg.smoothquant, cfg.equalize)
    recovery = dataclasses.replace(cfg.recovery, metric=session.metrics["recovery.metric"])
    result = analyse_sensitivity(session, observed.statistics, cfg.calib, cfg.quant, cfg.sensitivity, recovery)
    write_outputs(result, cfg.quant, run_dir)
    return result


def write_outputs(result: SensitivityResult, quant: QuantConfig, run_dir: Path) -> None:
    write_json(run_dir / RESULT_FILE, dataclasses.asdict(result))
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


def main() -> None:
    from qat.entry import run_job

    result, run_dir = run_job(JOB, SensitivityRunConfig, run_sensitivity)
    print(sensitivity_table(result))
    print(f"skip {result.skip_groups}; results: {run_dir / 'sensitivity.md'}; "
          f"use: python -m qat.train --config-dir {run_dir / 'conf'} quant=sensitive")


if __name__ == "__main__":
    main()
