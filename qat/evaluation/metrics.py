"""Fidelity to fp32 on held-out and guard inputs (embeddings: cosine and the EMD of similarity scores; score
models: |score difference| and the EMD of the score distributions), and task metrics (STS Spearman and Pearson,
reranking MAP, MRR@10 and NDCG@10, retrieval NDCG@10 and Recall@100). A pair's score is the cosine of its two
embeddings, or a score model's output for the pair."""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import TypeVar

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr, wasserstein_distance

from qat.config import DataConfig, reads_test_split
from qat.data import PairSet, RerankSet, RetrievalSet, Text, load_task, load_texts
from qat.base.errors import QatError
from qat.load import Encoder, batches, outputs, text_length
from qat.base.progress import progress
from qat.quant.qconf import Qconf
from qat.quant.simulate import simulate

Forward = Callable[..., torch.Tensor]   # a model called on one batch (input_ids, attention_mask[, token_type_ids])
Table = dict[Text, torch.Tensor]     # input -> pooled, normalised embedding, or a score model's outputs
Metrics = dict[str, float]           # metric name ('cosine_mean', 'guard/emd', '<task>/spearman', ...) -> value
Measure = Callable[[Forward], Metrics]   # a model's metrics on the data a stage may read (never a test split)
Task = PairSet | RerankSet | RetrievalSet
TASK_METRIC = {PairSet: "spearman", RerankSet: "map", RetrievalSet: "ndcg@10"}   # each kind of task set's own measure
RERANK_METRICS = ("map", "mrr@10", "ndcg@10")
RETRIEVAL_METRICS = ("ndcg@10", "recall@100")
K = TypeVar("K")
GUARD = "guard"                      # the prefix of the guard set's metrics
# How a pair is scored: the cosine of two embeddings, a score model's first output (one relevance logit or
# regression score), or its probability of the last class (class logits).
COSINE, LOGIT, SOFTMAX = "cosine", "logit", "softmax"


class Variant(StrEnum):
    """The models a run evaluates side by side; the value is the key in report.json."""

    FP32 = "fp32"
    PTQ_FAKEQUANT = "ptq_fakequant"
    PTQ_INT8 = "ptq_int8"
    QAT_FAKEQUANT = "qat_fakequant"
    QAT_INT8 = "qat_int8"
    INT8 = "int8"                     # an int8 model evaluated on its own (python -m qat.evaluation.metrics)
    BASELINE = "baseline"             # another int8 model it is compared with (qat.evaluation.metrics target.baseline)

    @property
    def title(self) -> str:
        return self.title_on(None)

    def title_on(self, runtime: str | None) -> str:
        """The column heading; an exported model's names the runtime that ran it, where known."""
        if self not in EXPORTED_VARIANTS:
            return VARIANT_TITLES[self]
        return f"{VARIANT_TITLES[self]} (exported{' ' + runtime if runtime else ''})"


VARIANT_TITLES = {
    Variant.FP32: "fp32", Variant.PTQ_FAKEQUANT: "PTQ int8 (fake-quant)", Variant.PTQ_INT8: "PTQ int8",
    Variant.QAT_FAKEQUANT: "QAT int8 (fake-quant)", Variant.QAT_INT8: "QAT int8", Variant.INT8: "int8",
    Variant.BASELINE: "baseline int8",
}
EXPORTED_VARIANTS = frozenset({Variant.PTQ_INT8, Variant.QAT_INT8, Variant.INT8, Variant.BASELINE})


class Stage(StrEnum):
    """The int8 models a run can deliver; the value names its export folder and its key in report.json."""

    PTQ = "ptq"
    QAT = "qat"

    @property
    def variants(self) -> tuple[Variant, Variant]:
        """The two forms of the model: its fake-quant simulation and its export."""
        return (Variant.PTQ_FAKEQUANT, Variant.PTQ_INT8) if self is Stage.PTQ else (Variant.QAT_FAKEQUANT,
                                                                                     Variant.QAT_INT8)


class Direction(Enum):
    """Which way a metric improves: a quality score or a similarity rises, a distance to fp32 falls."""

    HIGHER = "higher"
    LOWER = "lower"


HELDOUT_EMD = "emd_heldout_pairs"   # the held-out set's EMD (a task set's own EMD is '<task>/emd')

# Each measure by its name after the set prefix ('stsb_dev/spearman', 'guard/emd').
DIRECTIONS = {
    **dict.fromkeys(("cosine_mean", "cosine_min", "spearman", "pearson", "map", "mrr@10", "ndcg@10", "recall@100"),
                    Direction.HIGHER),
    **dict.fromkeys(("emd", HELDOUT_EMD, "score_diff_mean", "score_diff_max"), Direction.LOWER),
}


@dataclass
class EvalData:
    """Held-out inputs for fidelity, guard inputs from other domains (fidelity too), and labelled task sets by
    name; `scoring` says how a pair is scored (for a score model every input is a pair)."""

    heldout: list[Text]
    tasks: dict[str, Task] = field(default_factory=dict)
    guard: list[Text] = field(default_factory=list)
    scoring: str = COSINE

    @property
    def pairs(self) -> bool:
        return self.scoring != COSINE

    @property
    def fidelity_metric(self) -> str:
        return fidelity_metric(self.pairs)

    @property
    def auto_metric(self) -> str:
        """What a metric set to 'auto' chooses by: the first task set's own measure (Spearman, MAP, NDCG@10), the
        quality the user deploys for, or where there is no task set, the fidelity metric of the model's kind."""
        for name, task in self.tasks.items():
            return f"{name}/{TASK_METRIC[type(task)]}"
        return self.fidelity_metric

    def sampled(self, items: int | None, seed: int = 0) -> EvalData:
        """The same data with each STS and reranking task set cut to a fixed random sample of `items` pairs or
        queries (None, or a set no larger: all of it); held-out texts, guard and retrieval sets whole."""
        def sample(task: Task) -> Task:
            size = len(task.scores) if isinstance(task, PairSet) else len(task.queries) \
                if isinstance(task, RerankSet) else 0
            if items is None or size <= items:
                return task
            chosen = sorted(random.Random(seed).sample(range(size), items))
            if isinstance(task, PairSet):
                return PairSet([task.sentence1[i] for i in chosen], [task.sentence2[i] for i in chosen],
                               [task.scores[i] for i in chosen])
            return RerankSet([task.queries[i] for i in chosen], [task.positives[i] for i in chosen],
                             [task.negatives[i] for i in chosen])

        return EvalData(self.heldout, {name: sample(task) for name, task in self.tasks.items()}, self.guard, self.scoring)

    def fidelity_only(self) -> EvalData:
        """The held-out texts and the guard without the task sets: what a model's fidelity to fp32 reads."""
        return EvalData(self.heldout, {}, self.guard, self.scoring)

    def for_metrics(self, metrics: list[str]) -> EvalData:
        """Only the task sets (and guard) these metrics read ('<set>/<metric>'): a search or sensitivity trial
        embeds no more."""
        def read(name: str) -> bool:
            return any(m.startswith(name + "/") for m in metrics)

        return EvalData(self.heldout, {n: t for n, t in self.tasks.items() if read(n)},
                        self.guard if read(GUARD) else [], self.scoring)

    def texts(self) -> list[Text]:
        texts = self.heldout + self.guard
        for task in self.tasks.values():
            if isinstance(task, (PairSet, RerankSet)) and self.pairs:
                texts += task.pairs()
            elif isinstance(task, PairSet):
                texts += task.sentence1 + task.sentence2
            elif isinstance(task, RerankSet):
                texts += task.queries + [t for group in task.positives + task.negatives for t in group]
            else:
                texts += [*task.queries.values(), *task.corpus.values()]
        return list(dict.fromkeys(texts))


def fidelity_metric(pairs: bool) -> str:
    """The held-out metric that says how close a model is to fp32 (the default recovery metric, and the guard's)."""
    return "score_diff_mean" if pairs else "cosine_mean"


def scoring_of(encoder: Encoder) -> str:
    return SOFTMAX if encoder.classes else LOGIT if encoder.pairs else COSINE


def load_eval_data(data: DataConfig, scoring: str = COSINE) -> tuple[EvalData, EvalData]:
    """Everything evaluated (held-out inputs, the guard and every task set), and the part that choices may use
    (no test)."""
    if GUARD in data.tasks:
        raise QatError(f"task set name {GUARD!r} is the guard's; expected another name")
    tasks = {name: load_task(source) for name, source in data.tasks.items()}
    pairs = scoring != COSINE
    for name, task in tasks.items():
        if pairs and isinstance(task, RetrievalSet):
            raise QatError(f"task set {name!r} is a BEIR retrieval set, which needs single texts (embeddings of the "
                           "whole corpus); expected pairs or rerank task sets for a score model")
    guard = list(dict.fromkeys(t for source in data.guard.values() for t in load_texts(source, pairs)))
    everything = EvalData(load_texts(data.heldout, pairs), tasks, guard, scoring)
    dev_tasks = {name: task for name, task in tasks.items() if not reads_test_split(name, data.tasks[name])}
    return everything, EvalData(everything.heldout, dev_tasks, guard, scoring)


def direction(metric: str) -> Direction:
    measure = metric.rsplit("/", 1)[-1]
    if measure not in DIRECTIONS:
        raise QatError(f"metric {metric!r} is not one qat measures; expected [<set>/]one of {sorted(DIRECTIONS)}")
    return DIRECTIONS[measure]


def higher_is_better(metric: str) -> bool:
    return direction(metric) is Direction.HIGHER


@dataclass(frozen=True)
class FidelityFloor:
    """How far from fp32 a quantized model may be on the held-out texts and the guard: a mean cosine of at least
    `floor` (embeddings) or a mean |score difference| of at most `floor` (score models); None: no floor. The
    recovery decision trains past it, and `smoothquant.enabled=auto` migrates past it."""

    metric: str                # cosine_mean or score_diff_mean
    floor: float | None

    def sets(self, metrics: Metrics) -> dict[str, float]:
        """The held-out and (where measured) guard values of the metric."""
        values = {"held-out": metrics[self.metric], "guard": metrics.get(f"{GUARD}/{self.metric}")}
        return {name: value for name, value in values.items() if value is not None}

    def past(self, metrics: Metrics) -> list[str]:
        """The sets ('held-out', 'guard') whose fidelity is past the floor."""
        if self.floor is None:
            return []
        higher = higher_is_better(self.metric)
        return [name for name, value in self.sets(metrics).items()
                if (value < self.floor if higher else value > self.floor)]

    def describe(self, metrics: Metrics) -> str:
        bound = "off" if self.floor is None else ("floor" if higher_is_better(self.metric) else "ceiling") + f" {self.floor:.4f}"
        return f"{self.metric} " + ", ".join(f"{name} {value:.4f}" for name, value in self.sets(metrics).items()) \
            + f" ({bound})"


def best_of(scores: dict[K, float], metric: str) -> K:
    """The key whose score is best for this metric (the highest, or the lowest for a distance)."""
    return (max if higher_is_better(metric) else min)(scores, key=scores.__getitem__)


def relative_loss(metric: str, fp32: float, quantized: float) -> float:
    """How much worse the quantized model is than fp32 (positive = worse): relative for scores, absolute for
    distances (whose fp32 value is 0)."""
    if higher_is_better(metric):
        return (fp32 - quantized) / max(abs(fp32), 1e-12)
    return quantized - fp32


@torch.no_grad()
def embed(forward: Forward, encoder: Encoder, texts: list[Text], batch_size: int) -> Table:
    """What each input is compared by (pooled, normalised embeddings, or a score model's outputs); inputs sorted
    by length so that batches carry little padding."""
    order = sorted(dict.fromkeys(texts), key=text_length)   # each distinct input once
    steps = progress(batches(encoder, order, batch_size), desc="embedding", total=-(-len(order) // batch_size))
    vectors = [outputs(encoder, forward(*batch), batch[1]) for batch in steps]
    return dict(zip(order, torch.cat(vectors))) if vectors else {}


def stack_texts(table: Table, texts: list[Text]) -> torch.Tensor:
    return torch.stack([table[t] for t in texts])


def cosine_fidelity(reference: torch.Tensor, candidate: torch.Tensor) -> Metrics:
    cos = torch.nn.functional.cosine_similarity(reference, candidate, dim=-1)
    return {"cosine_mean": cos.mean().item(), "cosine_min": cos.min().item()}


def all_pair_scores(embeddings: torch.Tensor) -> np.ndarray:
    """Cosine similarity of every unordered pair of distinct rows."""
    sims = embeddings @ embeddings.T
    rows, cols = torch.triu_indices(len(embeddings), len(embeddings), offset=1)
    return sims[rows, cols].numpy()


def head_scores(outputs: torch.Tensor, scoring: str) -> torch.Tensor:
    """A score model's score of each pair: its first output, or its probability of the last class."""
    return outputs.softmax(-1)[:, -1] if scoring == SOFTMAX else outputs[:, 0]


def pair_scores(table: Table, pairs: list[tuple[str, str]], scoring: str) -> np.ndarray:
    if scoring == COSINE:
        return (stack_texts(table, [a for a, _ in pairs]) * stack_texts(table, [b for _, b in pairs])).sum(-1).numpy()
    return head_scores(stack_texts(table, pairs), scoring).numpy()


def emd(reference_scores: np.ndarray, scores: np.ndarray) -> float:
    """Earth mover's distance between two score distributions."""
    return float(wasserstein_distance(reference_scores, scores))


def score_differences(reference_scores: np.ndarray, scores: np.ndarray) -> Metrics:
    difference = np.abs(scores - reference_scores)
    return {"score_diff_mean": float(difference.mean()), "score_diff_max": float(difference.max()),
            "emd": emd(reference_scores, scores)}


def sts_spearman(scores: np.ndarray, gold: list[float]) -> float:
    return 100.0 * float(spearmanr(scores, gold).statistic)


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """AP of one ranking: mean precision at the rank of each relevant item (ties broken by input order)."""
    ranked = relevant[np.argsort(-scores, kind="stable")]
    hits = np.cumsum(ranked)
    return float((hits[ranked] / (np.flatnonzero(ranked) + 1)).mean())


def ranking_metrics(scores: np.ndarray, relevant: np.ndarray, cutoff: int = 10) -> tuple[float, float, float]:
    """AP, reciprocal rank within the cutoff and binary NDCG@cutoff of one query's candidates."""
    ranked = relevant[np.argsort(-scores, kind="stable")]
    first = int(np.argmax(ranked))
    discounts = 1.0 / np.log2(np.arange(2, cutoff + 2))
    top = ranked[:cutoff].astype(float)
    ideal = discounts[:min(int(relevant.sum()), cutoff)].sum()
    return (average_precision(scores, relevant), 1.0 / (first + 1) if first < cutoff else 0.0,
            float(np.dot(top, discounts[:len(top)]) / ideal))


def rerank_per_query(table: Table, rerank: RerankSet, scoring: str) -> np.ndarray:
    """Each query's AP, reciprocal rank within 10 and NDCG@10 (rows: queries; columns: RERANK_METRICS)."""
    per_query = []
    for query, positives, negatives in zip(rerank.queries, rerank.positives, rerank.negatives):
        candidates = positives + negatives
        scores = pair_scores(table, [(query, c) for c in candidates], scoring)
        per_query.append(ranking_metrics(scores, np.array([True] * len(positives) + [False] * len(negatives))))
    return np.array(per_query)


def rerank_metrics(table: Table, rerank: RerankSet, scoring: str) -> Metrics:
    """MAP, MRR@10 and NDCG@10 (x100) of ranking each query's candidates."""
    return dict(zip(RERANK_METRICS, (100.0 * rerank_per_query(table, rerank, scoring).mean(axis=0)).tolist()))


def retrieval_per_query(table: Table, retrieval: RetrievalSet, cutoff: int = 10, depth: int = 100) -> np.ndarray:
    """Each query's NDCG@cutoff (graded gains, as BEIR's pytrec_eval computes it) and Recall@depth over the whole
    corpus (rows: queries; columns: RETRIEVAL_METRICS)."""
    doc_ids = list(retrieval.corpus)
    documents = stack_texts(table, [retrieval.corpus[d] for d in doc_ids])
    discounts = 1.0 / np.log2(np.arange(2, cutoff + 2))
    per_query = []
    for qid, query in retrieval.queries.items():
        top = torch.topk(documents @ table[query], min(depth, len(doc_ids))).indices.tolist()
        gains = retrieval.qrels[qid]
        ranked = [gains.get(doc_ids[i], 0) for i in top]
        ideal = sorted(gains.values(), reverse=True)[:cutoff]
        ndcg = float(np.dot(ranked[:cutoff], discounts[:len(ranked[:cutoff])]) / np.dot(ideal, discounts[:len(ideal)]))
        relevant = sum(1 for g in gains.values() if g > 0)
        per_query.append((ndcg, sum(1 for g in ranked if g > 0) / relevant))
    return np.array(per_query)


def retrieval_metrics(table: Table, retrieval: RetrievalSet, cutoff: int = 10, depth: int = 100) -> tuple[float, float]:
    """NDCG@cutoff and Recall@depth over the whole corpus, x100."""
    ndcg, recall = 100.0 * retrieval_per_query(table, retrieval, cutoff, depth).mean(axis=0)
    return float(ndcg), float(recall)


def fidelity(table: Table, reference: Table, texts: list[Text], scoring: str) -> Metrics:
    """Embeddings: the cosine of each text's embedding to fp32's, and the EMD between the two similarity-score
    distributions of all pairs of texts. Score models: |difference| of every output to fp32's, and the EMD
    between the two output distributions."""
    outputs, reference_outputs = stack_texts(table, texts), stack_texts(reference, texts)
    if scoring == COSINE:
        return {**cosine_fidelity(reference_outputs, outputs),
                "emd": emd(all_pair_scores(reference_outputs), all_pair_scores(outputs))}
    return score_differences(reference_outputs.flatten().numpy(), outputs.flatten().numpy())


def evaluate(table: Table, reference: Table, data: EvalData) -> Metrics:
    """All metrics of one variant's outputs against the fp32 reference outputs."""
    heldout = fidelity(table, reference, data.heldout, data.scoring)
    metrics = {**{k: v for k, v in heldout.items() if k != "emd"}, HELDOUT_EMD: heldout["emd"]}
    if data.guard:
        metrics.update({f"{GUARD}/{key}": value for key, value in fidelity(table, reference, data.guard, data.scoring).items()})
    for name, task in data.tasks.items():
        if isinstance(task, PairSet):
            scores = pair_scores(table, task.pairs(), data.scoring)
            metrics[f"{name}/spearman"] = sts_spearman(scores, task.scores)
            metrics[f"{name}/pearson"] = 100.0 * float(pearsonr(scores, task.scores).statistic)
            differences = score_differences(pair_scores(reference, task.pairs(), data.scoring), scores)
            metrics.update({f"{name}/{key}": value for key, value in differences.items()})
        elif isinstance(task, RerankSet):
            metrics.update({f"{name}/{key}": value for key, value in rerank_metrics(table, task, data.scoring).items()})
        else:
            metrics[f"{name}/ndcg@10"], metrics[f"{name}/recall@100"] = retrieval_metrics(table, task)
    return metrics


@dataclass
class ScoreBuckets:
    """How the held-out scores spread, by model: counts in equal-width buckets over fp32's range (a score model's
    outputs, or an embedding model's similarity of every pair of held-out texts). A quantized scorer whose
    offline metrics are weak evidence is judged by whether its score distribution keeps fp32's shape."""

    edges: list[float]
    counts: dict[Variant, list[int]]


def heldout_scores(table: Table, data: EvalData) -> np.ndarray:
    rows = stack_texts(table, data.heldout)
    return rows.flatten().numpy() if data.pairs else all_pair_scores(rows)


def score_buckets(tables: dict[Variant, Table], data: EvalData, buckets: int = 10) -> ScoreBuckets:
    scores = {variant: heldout_scores(table, data) for variant, table in tables.items()}
    edges = np.histogram_bin_edges(scores[Variant.FP32], bins=buckets)
    # Scores beyond fp32's range count in the outer buckets.
    counts = {variant: np.histogram(np.clip(values, edges[0], edges[-1]), edges)[0].tolist()
              for variant, values in scores.items()}
    return ScoreBuckets(edges.tolist(), counts)


def evaluate_recipe(model: torch.nn.Module, qconf: Qconf, encoder: Encoder, data: EvalData,
                    reference: Table, batch_size: int) -> Metrics:
    """Metrics of `model` under the qconf's fake-quant recipe (`model` is not changed)."""
    return evaluate(embed(simulate(model, qconf).eval(), encoder, data.texts(), batch_size), reference, data)
