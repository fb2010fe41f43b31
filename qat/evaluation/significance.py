"""How sure a difference between two models on a task set is: the difference with a 95% paired bootstrap interval
over the set's items (its pairs for Spearman, its queries for MAP, MRR, NDCG and recall), the test that IR and
MT evaluation use for paired systems (Koehn, 2004; Sakai, 2006). Why: a test set of a few hundred queries moves
by tenths of a point between two int8 executions of one model, so a difference whose interval spans 0 is not
evidence either way, and a report that prints only the point estimate invites choosing by noise."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import bootstrap

from qat.data import PairSet, RerankSet
from qat.evaluation.metrics import (RERANK_METRICS, RETRIEVAL_METRICS, EvalData, Table, Variant, pair_scores, rerank_per_query,
                          retrieval_per_query, sts_spearman)

RESAMPLES = 1000
CONFIDENCE = 0.95
# The comparisons a report shows, (baseline, model) by label, where it has both models: a recovery run's, and
# qat.evaluation.metrics's.
RUN_COMPARISONS = {"PTQ - fp32": (Variant.FP32, Variant.PTQ_INT8), "QAT - fp32": (Variant.FP32, Variant.QAT_INT8),
                   "QAT - PTQ": (Variant.PTQ_INT8, Variant.QAT_INT8)}
EVALUATE_COMPARISONS = {"int8 - fp32": (Variant.FP32, Variant.INT8), "int8 - baseline": (Variant.BASELINE, Variant.INT8)}


@dataclass
class Difference:
    """A model's metric minus its baseline's on one task set (x100, as the metric is reported)."""

    value: float
    low: float      # the paired bootstrap interval (percentile) at CONFIDENCE
    high: float
    items: int      # the pairs or queries resampled


def _interval(samples: tuple[np.ndarray, ...], statistic: Callable[..., float], vectorized: bool,
              seed: int) -> Difference:
    value = float(statistic(*samples))
    result = bootstrap(samples, statistic, paired=True, vectorized=vectorized, n_resamples=RESAMPLES,
                       confidence_level=CONFIDENCE, method="percentile", rng=np.random.default_rng(seed))
    interval = result.confidence_interval
    return Difference(value, float(interval.low), float(interval.high), len(samples[0]))


def task_differences(baseline: Table, model: Table, data: EvalData, seed: int = 0) -> dict[str, Difference]:
    """`model` minus `baseline` on every task set's metrics ('<set>/<metric>'), each with its interval. Sets of
    fewer than two items have no interval and are left out."""
    differences = {}
    for name, task in data.tasks.items():
        if isinstance(task, PairSet):
            if len(task.scores) < 2:
                continue
            samples = (pair_scores(baseline, task.pairs(), data.scoring), pair_scores(model, task.pairs(), data.scoring),
                       np.asarray(task.scores))
            differences[f"{name}/spearman"] = _interval(
                samples, lambda a, b, gold: sts_spearman(b, gold) - sts_spearman(a, gold), vectorized=False, seed=seed)
            continue
        metrics, per_query = ((RERANK_METRICS, lambda table: rerank_per_query(table, task, data.scoring))
                              if isinstance(task, RerankSet) else
                              (RETRIEVAL_METRICS, lambda table: retrieval_per_query(table, task)))
        delta = 100.0 * (per_query(model) - per_query(baseline))
        if len(delta) < 2:
            continue
        for column, metric in enumerate(metrics):
            differences[f"{name}/{metric}"] = _interval((delta[:, column],), np.mean, vectorized=True, seed=seed)
    return differences


def compare_variants(tables: dict[Variant, Table], data: EvalData,
                     comparisons: dict[str, tuple[Variant, Variant]] = RUN_COMPARISONS,
                     seed: int = 0) -> dict[str, dict[str, Difference]]:
    """Each comparison whose two models were evaluated (in `tables`), by label."""
    return {label: task_differences(tables[baseline], tables[model], data, seed)
            for label, (baseline, model) in comparisons.items() if baseline in tables and model in tables}
