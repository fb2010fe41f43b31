"""The recovery decision: does the PTQ model need training? Two gates, either of which trains: the task gate (PTQ
loses more than a threshold on the dev task measure) and the fidelity gate (PTQ's outputs on the held-out texts or
the guard are further from fp32 than a floor). Why both: a dev task measure can stay level while the model drifts
(all-mpnet-base-v2's default PTQ: STS-B dev +0.04, held-out cosine 0.93, STS-B test -1.70)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from qat.config import AUTO, RecoveryConfig
from qat.evaluation.metrics import GUARD, FidelityFloor, Metrics, fidelity_metric, higher_is_better, relative_loss

log = logging.getLogger(__name__)


@dataclass
class FidelityGate:
    """PTQ's fidelity to fp32 on the held-out texts and the guard against the floor (None: the gate is off)."""

    metric: str               # cosine_mean (embeddings: at least the floor) or score_diff_mean (scores: at most)
    heldout: float
    guard: float | None
    floor: float | None

    def values(self) -> Metrics:
        return {self.metric: self.heldout, **({} if self.guard is None else {f"{GUARD}/{self.metric}": self.guard})}

    def past_floor(self) -> list[str]:
        """The sets ('held-out', 'guard') whose fidelity is past the floor."""
        return FidelityFloor(self.metric, self.floor).past(self.values())


@dataclass
class RecoveryDecision:
    """PTQ's loss on the dev task measure against fp32, its fidelity, which gates ask for training, and whether the
    run trains."""

    metric: str
    fp32: float
    ptq: float
    ptq_loss: float           # relative for a quality measure, absolute for a distance
    threshold: float
    fidelity: FidelityGate
    force: bool
    train: bool
    gates: list[str]          # 'task', 'fidelity' (those that ask for training), 'force'

    def describe(self) -> str:
        """One sentence naming each gate with its numbers and the one that decided."""
        loss = (f"{100 * self.ptq_loss:.2f}% below fp32 (threshold {100 * self.threshold:.2f}%)"
                if higher_is_better(self.metric) else f"{self.ptq_loss:.4f} from fp32 (threshold {self.threshold:.4f})")
        gate = self.fidelity
        decided = ("trained by " + " and ".join(f"the {g} gate" for g in self.gates) if self.train and self.gates
                   else "training is off (train=none)" if self.gates else "both gates pass")
        return (f"Task gate: dev {self.metric} {self.ptq:.4f} against fp32 {self.fp32:.4f}, {loss}. "
                f"Fidelity gate: {FidelityFloor(gate.metric, gate.floor).describe(gate.values())}. Decision: {decided}.")


def rounding_only(setting: bool | str, decision: RecoveryDecision) -> bool:
    """train.rounding_only: auto keeps each weight inside its PTQ quantization step where the fidelity gate alone
    trains. PTQ kept the task measure there, so training only has fidelity to win back, and re-rounding cannot
    drift where the training text does not reach; where PTQ lost on the task measure (or training is forced) the
    weights get room to win it back. Measured on the full-operator STS-B recovery: docs/RESULTS.md."""
    if setting != AUTO:
        return bool(setting)
    return decision.gates == ["fidelity"]


def fidelity_floor(recovery: RecoveryConfig, pairs: bool) -> FidelityFloor:
    """The floor the fidelity gate reads for this kind of model (recovery.min_cosine or recovery.max_score_diff)."""
    return FidelityFloor(fidelity_metric(pairs), recovery.max_score_diff if pairs else recovery.min_cosine)


def decide_recovery(recovery: RecoveryConfig, train_enabled: bool, fp32: Metrics, ptq: Metrics,
                    pairs: bool) -> RecoveryDecision:
    """Train if PTQ loses more than recovery.threshold on the dev task measure, or if its held-out or guard
    fidelity is past the floor (recovery.min_cosine for embeddings, recovery.max_score_diff for score models),
    or if forced; `train_enabled` false (train=none) only records what the gates said."""
    metric, floor = recovery.metric, fidelity_floor(recovery, pairs)
    loss = relative_loss(metric, fp32[metric], ptq[metric])
    gate = FidelityGate(floor.metric, ptq[floor.metric], ptq.get(f"{GUARD}/{floor.metric}"), floor.floor)
    gates = (["task"] if loss > recovery.threshold else []) + (["fidelity"] if gate.past_floor() else []) \
        + (["force"] if recovery.force else [])
    decision = RecoveryDecision(metric, fp32[metric], ptq[metric], loss, recovery.threshold, gate, recovery.force,
                                train_enabled and bool(gates), gates)
    log.info(decision.describe())
    return decision
