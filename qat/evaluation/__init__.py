"""Evaluation: fidelity and task metrics against fp32, differences with bootstrap intervals, and the session
every job sets up once (encoder, texts, dev data, fp32 reference)."""
from qat.evaluation.metrics import (
    EvalData,
    Forward,
    Measure,
    Metrics,
    ScoreBuckets,
    Stage,
    Table,
    Variant,
    embed,
    evaluate,
    score_buckets,
)
from qat.evaluation.session import Session, open_session, use_threads
from qat.evaluation.significance import Difference, compare_variants

__all__ = [
    "Difference", "EvalData", "Forward", "Measure", "Metrics", "ScoreBuckets", "Session", "Stage", "Table", "Variant",
    "compare_variants", "embed", "evaluate", "open_session", "score_buckets", "use_threads",
]
