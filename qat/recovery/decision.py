"""The recovery decision: does the PTQ model need training?"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from qat.config import RecoveryConfig
from qat.evaluation.metrics import Metrics, relative_loss

log = logging.getLogger(__name__)


@dataclass
class RecoveryDecision:
    """PTQ's loss on the dev metric against fp32, and whether the run trains."""

    metric: str
    fp32: float
    ptq: float
    ptq_loss: float
    threshold: float
    force: bool
    train: bool


def decide_recovery(recovery: RecoveryConfig, train_enabled: bool, fp32: Metrics, ptq: Metrics) -> RecoveryDecision:
    """Train only if PTQ loses more than recovery.threshold on the dev metric (or if forced)."""
    metric = recovery.metric
    loss = relative_loss(metric, fp32[metric], ptq[metric])
    decision = RecoveryDecision(metric, fp32[metric], ptq[metric], loss, recovery.threshold, recovery.force,
                                train_enabled and (recovery.force or loss > recovery.threshold))
    log.info("PTQ loss on dev %s: %.4f (threshold %.4f): %s", metric, loss, recovery.threshold,
             "training" if decision.train else "no training needed" if train_enabled else "training disabled")
    return decision
