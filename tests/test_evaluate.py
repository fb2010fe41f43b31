"""Metrics on hand-computed cases."""
import numpy as np
import pytest
import torch

from qat.data import PairSet, RerankSet, RetrievalSet
from qat.evaluation.metrics import (COSINE, LOGIT, SOFTMAX, EvalData, all_pair_scores, average_precision, cosine_fidelity, emd,
                          evaluate, rerank_metrics, retrieval_metrics, sts_spearman)
from qat.jobs.report import difference_table
from qat.evaluation.significance import task_differences


def test_average_precision_hand_computed():
    # ranking: rel, non, rel -> AP = (1/1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0.1, 0.9]), np.array([True, False])) == pytest.approx(0.5)


def test_rerank_metrics_over_queries():
    table = {"q": torch.tensor([1.0, 0.0]), "a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0]),
             "c": torch.tensor([0.6, 0.8])}
    data = RerankSet(["q", "q"], [["a"], ["b"]], [["b"], ["a", "c"]])
    # query 1: a ranks first -> AP 1, RR 1, NDCG 1; query 2: order a, c, b(rel) -> AP 1/3, RR 1/3, NDCG 1/log2(4)
    metrics = rerank_metrics(table, data, COSINE)
    assert metrics["map"] == pytest.approx(100 * (1 + 1 / 3) / 2)
    assert metrics["mrr@10"] == pytest.approx(100 * (1 + 1 / 3) / 2)
    assert metrics["ndcg@10"] == pytest.approx(100 * (1 + 1 / np.log2(4)) / 2)


def test_score_model_pairs_are_scored_by_the_head():
    """A score model's table holds each (query, candidate) pair's outputs: one logit, or class logits (the last
    class's probability ranks)."""
    logits = {("q", "a"): torch.tensor([2.0]), ("q", "b"): torch.tensor([-1.0]), ("q", "c"): torch.tensor([0.5])}
    rerank = RerankSet(["q"], [["b"]], [["a", "c"]])
    assert rerank_metrics(logits, rerank, LOGIT)["mrr@10"] == pytest.approx(100 / 3)
    classes = {pair: torch.cat([-value, value]) for pair, value in logits.items()}
    assert rerank_metrics(classes, rerank, SOFTMAX)["map"] == pytest.approx(100 / 3)
    shifted = {pair: value + 0.5 for pair, value in logits.items()}
    data = EvalData(list(logits), scoring=LOGIT)
    metrics = evaluate(shifted, logits, data)
    assert metrics["score_diff_mean"] == pytest.approx(0.5) and metrics["score_diff_max"] == pytest.approx(0.5)
    assert metrics["emd_heldout_pairs"] == pytest.approx(0.5) and "cosine_mean" not in metrics


def test_spearman_emd_and_cosine():
    assert sts_spearman(np.array([0.1, 0.5, 0.9]), [1.0, 2.0, 5.0]) == pytest.approx(100.0)
    assert sts_spearman(np.array([0.9, 0.5, 0.1]), [1.0, 2.0, 5.0]) == pytest.approx(-100.0)
    assert emd(np.array([0.0, 1.0]), np.array([0.0, 1.0])) == 0.0
    assert emd(np.array([0.0, 1.0]), np.array([0.5, 1.5])) == pytest.approx(0.5)
    a = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=-1)
    b = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), dim=-1)
    fidelity = cosine_fidelity(a, b)
    assert fidelity["cosine_min"] == pytest.approx(2 ** -0.5) and fidelity["cosine_mean"] == pytest.approx((1 + 2 ** -0.5) / 2)
    assert all_pair_scores(a).tolist() == pytest.approx([2 ** -0.5])



def test_retrieval_ndcg_and_recall_hand_computed():
    unit = torch.eye(4)
    table = {"q": unit[0], "d1": unit[0], "d2": 0.8 * unit[0] + 0.6 * unit[1], "d3": unit[2], "d4": unit[3]}
    retrieval = RetrievalSet({"q1": "q"}, {"a": "d1", "b": "d2", "c": "d3", "d": "d4"}, {"q1": {"b": 2, "c": 1}})
    # ranking a, b, then c and d tied at 0: gains 0, 2, 1 or 0 at ranks 1-3
    ndcg, recall = retrieval_metrics(table, retrieval, cutoff=2, depth=2)
    assert ndcg == pytest.approx(100 * (2 / np.log2(3)) / (2 + 1 / np.log2(3)))
    assert recall == pytest.approx(50.0)
    assert retrieval_metrics(table, retrieval, cutoff=10, depth=100)[1] == pytest.approx(100.0)


def test_guard_and_retrieval_sets_are_evaluated_and_guard_is_read_by_choices():
    rows = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    texts = ["h1", "h2", "g1", "g2", "g3", "q"]
    table = dict(zip(texts, rows))
    data = EvalData(["h1", "h2"], {"ret_dev": RetrievalSet({"q1": "q"}, {"a": "g1"}, {"q1": {"a": 1}})}, ["g1", "g2", "g3"])
    metrics = evaluate(table, table, data)
    assert metrics["guard/cosine_mean"] == pytest.approx(1.0) and metrics["guard/emd"] == 0.0
    assert metrics["ret_dev/ndcg@10"] == pytest.approx(100.0) and set(data.texts()) == set(texts)
    assert data.for_metrics(["guard/emd"]).guard == data.guard and not data.for_metrics(["cosine_mean"]).guard


def test_auto_metric_is_the_first_dev_task_sets_measure_else_fidelity() -> None:
    pairs, rerank = PairSet(["a"], ["b"], [1.0]), RerankSet(["q"], [["p"]], [["n"]])
    assert EvalData(["x"]).auto_metric == "cosine_mean"
    assert EvalData(["x"], scoring=LOGIT).auto_metric == "score_diff_mean"
    assert EvalData(["x"], {"wikiqa_dev": rerank, "stsb_dev": pairs}).auto_metric == "wikiqa_dev/map"
    assert EvalData(["x"], {"stsb_dev": pairs}, scoring=LOGIT).auto_metric == "stsb_dev/spearman"
    retrieval = RetrievalSet({"q": "query"}, {"d": "doc"}, {"q": {"d": 1}})
    assert EvalData(["x"], {"beir_dev": retrieval}).auto_metric == "beir_dev/ndcg@10"


def test_paired_differences_match_the_metrics_and_their_intervals_say_how_sure():
    """The difference is exactly the metrics' difference; a model that is better on every item has an interval
    above 0, one that differs on one query of many has an interval that reaches 0, and a model against itself 0."""
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 200)
    pairs = [(f"a{i}", f"b{i}") for i in range(200)]
    sts = PairSet([a for a, _ in pairs], [b for _, b in pairs], gold.tolist())
    noisy = {pair: torch.tensor([g + rng.normal(0, 3)]) for pair, g in zip(pairs, gold)}
    exact = {pair: torch.tensor([g]) for pair, g in zip(pairs, gold)}
    queries = [f"q{i}" for i in range(40)]
    rerank = RerankSet(queries, [[f"p{i}"] for i in range(40)], [[f"n{i}"] for i in range(40)])
    ranked = {(f"q{i}", f"p{i}"): torch.tensor([1.0]) for i in range(40)} | {(f"q{i}", f"n{i}"): torch.tensor([0.0])
                                                                            for i in range(40)}
    one_wrong = ranked | {("q0", "n0"): torch.tensor([2.0])}
    data = EvalData(pairs[:10], {"sts": sts, "rr": rerank}, scoring=LOGIT)
    better = {**noisy, **one_wrong}, {**exact, **ranked}
    differences = task_differences(*better, data)
    metrics = [evaluate(table, better[0], data) for table in better]
    for key in ("sts/spearman", "rr/map", "rr/mrr@10", "rr/ndcg@10"):
        d = differences[key]
        assert d.value == pytest.approx(metrics[1][key] - metrics[0][key]) and d.low <= d.value <= d.high
    assert differences["sts/spearman"].low > 0 and differences["sts/spearman"].items == 200
    assert differences["rr/map"].value == pytest.approx(100 / 2 / 40) and differences["rr/map"].low == 0.0
    assert differences["rr/map"].items == 40
    same = task_differences(better[1], better[1], data)
    assert all((d.value, d.low, d.high) == (0.0, 0.0, 0.0) for d in same.values())
    table = difference_table({"QAT - PTQ": differences})
    assert table[2] == "| set | metric | QAT - PTQ |" and any(line.startswith("| sts | spearman | +") for line in table)
