"""Metrics on hand-computed cases."""
import numpy as np
import pytest
import torch

from qat.data import RerankSet
from qat.evaluate import all_pair_scores, average_precision, cosine_fidelity, emd, rerank_map, sts_spearman


def test_average_precision_hand_computed():
    # ranking: rel, non, rel -> AP = (1/1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0.1, 0.9]), np.array([True, False])) == pytest.approx(0.5)


def test_rerank_map_over_queries():
    table = {"q": torch.tensor([1.0, 0.0]), "a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 1.0]),
             "c": torch.tensor([0.6, 0.8])}
    data = RerankSet(["q", "q"], [["a"], ["b"]], [["b"], ["a", "c"]])
    # query 1: a ranks first -> AP 1; query 2: order a(0 rel), c, b(rel) -> AP 1/3
    assert rerank_map(table, data) == pytest.approx(100 * (1 + 1 / 3) / 2)


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

