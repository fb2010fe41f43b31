"""Recovery: the decision whether PTQ needs training, and block-wise distillation of the fake-quant student."""
from qat.recovery.decision import RecoveryDecision, decide_recovery, fidelity_floor, rounding_only
from qat.recovery.train import LrChoice, TrainingSummary, recover
from qat.recovery.trainer import BEST_FILE, CHECKPOINT_DIR, StartingPoint, Trainer, check_loss_terms, resolve_resume

__all__ = [
    "BEST_FILE", "CHECKPOINT_DIR", "LrChoice", "RecoveryDecision", "StartingPoint", "Trainer", "TrainingSummary", "check_loss_terms",
    "decide_recovery", "fidelity_floor", "recover", "resolve_resume", "rounding_only",
]
