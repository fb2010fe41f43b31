"""Sensitivity analysis: which op groups to leave in fp32, ranked by what quantizing them costs.

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
import logging
import re
from dataclasses import dataclass

from qat.ptq.calibration import Statistics, apply_calibration
from qat.config import RecoveryConfig, SensitivityConfig
from qat.base.errors import QatError
from qat.evaluation.metrics import Measure, Metrics, relative_loss
from qat.base.progress import progress
from qat.quant.config import OP_KINDS, CalibConfig, QuantConfig
from qat.quant.qconf import Qconf
from qat.quant.simulate import simulate

log = logging.getLogger(__name__)
QKV = re.compile(r"(.*\.attention\.self)\.(query|key|value)")


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


def analyse_sensitivity(observed: Statistics, calib: CalibConfig, quant: QuantConfig, sensitivity: SensitivityConfig,
                        recovery: RecoveryConfig, measure: Measure, fp32: Metrics) -> SensitivityResult:
    """Measure every group of the calibrated recipe both ways, rank, and choose the skip list. `measure` scores a
    model on dev data that holds recovery.metric and sensitivity.metric; `fp32` is the fp32 model's score there."""
    metric, rank_by = recovery.metric, sensitivity.metric
    calibration = apply_calibration(observed, calib, quant)
    groups = sensitivity_groups(calibration.qconf)
    if not groups:
        raise QatError(f"quant.ops={quant.ops} with skip {quant.skip} puts no op in int8; expected a recipe to analyse")

    def skipping(skip: list[str]) -> Metrics:
        """The recipe with these groups' ops left fp32 as well (the user's quant.skip always stays fp32)."""
        qconf = calibration.qconf.with_recipe(dataclasses.replace(quant, skip=quant.skip + skip))
        return measure(simulate(calibration.model, qconf).eval())

    def loss(metrics: Metrics, name: str) -> float:
        return relative_loss(name, fp32[name], metrics[name])

    all_int8 = skipping([])
    rows = []
    for group, entries in progress(groups.items(), desc="sensitivity groups", unit="group"):
        others = [e for g, es in groups.items() if g != group for e in es]
        only, all_but = skipping(others), skipping(entries)
        rows.append(GroupMeasurement(group, entries, only, all_but, loss(only, rank_by),
                                     loss(all_int8, rank_by) - loss(all_but, rank_by)))
        log.info("%s: alone %s loss %.5g; left fp32 the all-int8 loss falls by %.5g", group, rank_by,
                 rows[-1].damage_alone, rows[-1].gain_if_fp32)
    ranking = sorted(rows, key=lambda r: r.gain_if_fp32, reverse=True)

    prefixes = [SkipPrefix(0, all_int8, loss(all_int8, metric))]
    limit = sensitivity.top_k if sensitivity.top_k is not None else min(sensitivity.max_skip, len(ranking))
    while len(prefixes) <= limit and (sensitivity.top_k is not None or prefixes[-1].loss > recovery.threshold):
        count = len(prefixes)
        metrics = skipping([e for r in ranking[:count] for e in r.skip])
        prefixes.append(SkipPrefix(count, metrics, loss(metrics, metric)))
        log.info("top %d groups fp32: %s loss %.5g", count, metric, prefixes[-1].loss)
    chosen = prefixes[-1]
    return SensitivityResult(
        sorted(quant.op_kinds()), quant.skip, rank_by, metric, recovery.threshold, fp32,
        all_int8, ranking, prefixes, [r.group for r in ranking[:chosen.groups]],
        [e for r in ranking[:chosen.groups] for e in r.skip], chosen.loss <= recovery.threshold)
