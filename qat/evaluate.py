"""Fidelity to fp32 (cosine, EMD of similarity scores) and task metrics (STS Spearman, reranking MAP)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import torch
from scipy.stats import spearmanr, wasserstein_distance

from qat.config import DataConfig, is_test_split
from qat.data import PairSet, RerankSet, load_task, load_texts
from qat.load import Encoder, batches, pool
from qat.progress import progress
from qat.quant.qconf import Qconf
from qat.quant.simulate import simulate

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Table = dict[str, torch.Tensor]      # text -> pooled, normalised embedding
Metrics = dict[str, float]           # metric name ('cosine_mean', '<task>/spearman', ...) -> value


class Variant(StrEnum):
    """The models a run evaluates side by side; the value is the key in report.json."""

    FP32 = "fp32"
    PTQ_FAKEQUANT = "ptq_fakequant"
    PTQ_INT8 = "ptq_int8"
    QAT_FAKEQUANT = "qat_fakequant"
    QAT_INT8 = "qat_int8"
    INT8 = "int8"                     # an int8 model evaluated on its own (python -m qat.evaluate)

    @property
    def title(self) -> str:
        return VARIANT_TITLES[self]


VARIANT_TITLES = {
    Variant.FP32: "fp32", Variant.PTQ_FAKEQUANT: "PTQ int8 (fake-quant)", Variant.PTQ_INT8: "PTQ int8 (exported IPEX)",
    Variant.QAT_FAKEQUANT: "QAT int8 (fake-quant)", Variant.QAT_INT8: "QAT int8 (exported IPEX)",
    Variant.INT8: "int8 (exported IPEX)",
}
# The two forms of each int8 model: its fake-quant simulation and its IPEX export.
MODEL_VARIANTS = {"ptq": (Variant.PTQ_FAKEQUANT, Variant.PTQ_INT8), "qat": (Variant.QAT_FAKEQUANT, Variant.QAT_INT8)}


@dataclass
class EvalData:
    """Held-out texts for fidelity, and labelled task sets by name."""

    heldout: list[str]
    tasks: dict[str, PairSet | RerankSet] = field(default_factory=dict)

    def for_metrics(self, metrics: list[str]) -> EvalData:
        """Only the task sets these metrics read ('<task>/<metric>'): a search or sensitivity trial embeds no more."""
        return EvalData(self.heldout, {n: t for n, t in self.tasks.items() if any(m.startswith(n + "/") for m in metrics)})

    def texts(self) -> list[str]:
        texts = list(self.heldout)
        for task in self.tasks.values():
            if isinstance(task, PairSet):
                texts += task.sentence1 + task.sentence2
            else:
                texts += task.queries + [t for group in task.positives + task.negatives for t in group]
        return list(dict.fromkeys(texts))


def load_eval_data(data: DataConfig) -> tuple[EvalData, EvalData]:
    """Everything evaluated (held-out texts and every task set), and the part that choices may use (no test)."""
    tasks = {name: load_task(source) for name, source in data.tasks.items()}
    everything = EvalData(load_texts(data.heldout), tasks)
    return everything, EvalData(everything.heldout, {n: t for n, t in tasks.items() if not is_test_split(n)})


def higher_is_better(metric: str) -> bool:
    return "emd" not in metric


def relative_loss(metric: str, fp32: float, quantized: float) -> float:
    """How much worse the quantized model is than fp32 (positive = worse): relative for scores, absolute for
    distances (whose fp32 value is 0)."""
    if higher_is_better(metric):
        return (fp32 - quantized) / max(abs(fp32), 1e-12)
    return quantized - fp32


@torch.no_grad()
def embed(forward: Forward, encoder: Encoder, texts: list[str], batch_size: int) -> Table:
    """Pooled, normalised embeddings by text; texts sorted by length so that batches carry little padding."""
    order = sorted(texts, key=len)
    steps = progress(batches(encoder, order, batch_size), desc="embedding", total=-(-len(order) // batch_size))
    vectors = [pool(forward(ids, mask), mask, encoder.pooling) for ids, mask in steps]
    return dict(zip(order, torch.cat(vectors)))


def stack_texts(table: Table, texts: list[str]) -> torch.Tensor:
    return torch.stack([table[t] for t in texts])


def cosine_fidelity(reference: torch.Tensor, candidate: torch.Tensor) -> Metrics:
    cos = torch.nn.functional.cosine_similarity(reference, candidate, dim=-1)
    return {"cosine_mean": cos.mean().item(), "cosine_min": cos.min().item()}


def all_pair_scores(embeddings: torch.Tensor) -> np.ndarray:
    """Cosine similarity of every unordered pair of distinct rows."""
    sims = embeddings @ embeddings.T
    rows, cols = torch.triu_indices(len(embeddings), len(embeddings), offset=1)
    return sims[rows, cols].numpy()


def pair_scores(table: Table, pairs: PairSet) -> np.ndarray:
    return (stack_texts(table, pairs.sentence1) * stack_texts(table, pairs.sentence2)).sum(-1).numpy()


def emd(reference_scores: np.ndarray, scores: np.ndarray) -> float:
    """Earth mover's distance between two similarity-score distributions."""
    return float(wasserstein_distance(reference_scores, scores))


def sts_spearman(scores: np.ndarray, gold: list[float]) -> float:
    return 100.0 * float(spearmanr(scores, gold).statistic)


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """AP of one ranking: mean precision at the rank of each relevant item (ties broken by input order)."""
    ranked = relevant[np.argsort(-scores, kind="stable")]
    hits = np.cumsum(ranked)
    return float((hits[ranked] / (np.flatnonzero(ranked) + 1)).mean())


def rerank_map(table: Table, rerank: RerankSet) -> float:
    aps = []
    for query, positives, negatives in zip(rerank.queries, rerank.positives, rerank.negatives):
        candidates = positives + negatives
        scores = (stack_texts(table, candidates) @ table[query]).numpy()
        aps.append(average_precision(scores, np.array([True] * len(positives) + [False] * len(negatives))))
    return 100.0 * float(np.mean(aps))


def evaluate(table: Table, reference: Table, data: EvalData) -> Metrics:
    """All metrics of one variant's embeddings against the fp32 reference embeddings."""
    heldout, heldout_ref = stack_texts(table, data.heldout), stack_texts(reference, data.heldout)
    metrics = cosine_fidelity(heldout_ref, heldout)
    metrics["emd_heldout_pairs"] = emd(all_pair_scores(heldout_ref), all_pair_scores(heldout))
    for name, task in data.tasks.items():
        if isinstance(task, PairSet):
            scores = pair_scores(table, task)
            metrics[f"{name}/spearman"] = sts_spearman(scores, task.scores)
            metrics[f"{name}/emd"] = emd(pair_scores(reference, task), scores)
        else:
            metrics[f"{name}/map"] = rerank_map(table, task)
    return metrics


def evaluate_recipe(model: torch.nn.Module, qconf: Qconf, encoder: Encoder, data: EvalData,
                    reference: Table, batch_size: int) -> Metrics:
    """Metrics of `model` under the qconf's fake-quant recipe (`model` is not changed)."""
    return evaluate(embed(simulate(model, qconf).eval(), encoder, data.texts(), batch_size), reference, data)


def main() -> None:
    """`python -m qat.evaluate target.folder=<export folder>`: score an int8 model on the configured data."""
    from qat.config import EvaluateRunConfig
    from qat.entry import run_job
    from qat.evaluate_export import RESULT_FILE, run_evaluation
    from qat.report import variant_table
    from qat.run_folder import JobKind

    result, run_dir = run_job(JobKind("evaluate", finished_marker=RESULT_FILE, resumable=False), EvaluateRunConfig,
                              run_evaluation)
    print("\n".join(variant_table(result.variants)) + f"\nresults: {run_dir / 'evaluation.md'}")


if __name__ == "__main__":
    main()
