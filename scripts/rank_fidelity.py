"""Does an int8 export keep fp32's *order* of similarities, not only each embedding's direction? Retrieval ranks a
corpus by similarity to a query, so an export can be close to fp32 text by text (cosine) and still reorder
neighbours. For each export, on the dev material a run may read (held-out texts, the guard, the dev retrieval
sets, and every dev text packed into passages of the model's max length in words: the positions a short-text
task never reaches; never a test split):

- cosine: each text's embedding against fp32's (the guard's measure in a run);
- rank rho: for each text, the Spearman correlation of its similarities to every other text of the set under the
  export and under fp32, averaged (retrieval sets: each query against the whole corpus);
- top-k kept: the share of fp32's k nearest neighbours that stay among the export's k nearest;
- NDCG@10 of each dev retrieval set.

    .venv/bin/python scripts/rank_fidelity.py data=stsb \\
        '+data.tasks.retrieval_dev={kind: file, format: beir, path: <dev_retrieval>, split: dev}' \\
        --out outputs/rank_fidelity.json --export <run>/export/ptq <run>/export/qat
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from qat.base.atomic import write_json
from qat.config import EvaluateRunConfig
from qat.data import RetrievalSet, packed
from qat.jobs.command import job_config
from qat.evaluation.metrics import Table, cosine_fidelity, retrieval_metrics, stack_texts
from qat.exporters.loader import load_int8
from qat.evaluation.session import open_session


@dataclass
class RankFidelity:
    cosine: float
    rank_rho: float
    top_k_kept: float
    ndcg_at_10: float | None = None   # retrieval sets only


def rank_agreement(reference: torch.Tensor, candidate: torch.Tensor, k: int) -> tuple[float, float]:
    """Mean per-row Spearman correlation and top-k overlap of two similarity matrices (rows: queries)."""
    rho = [spearmanr(r.numpy(), c.numpy()).statistic for r, c in zip(reference, candidate)]
    kept = [len(set(torch.topk(r, k).indices.tolist()) & set(torch.topk(c, k).indices.tolist())) / k
            for r, c in zip(reference, candidate)]
    return float(np.mean(rho)), float(np.mean(kept))


def text_set_fidelity(fp32: Table, table: Table, texts: list[str], k: int) -> RankFidelity:
    """Each text against the others of its set (its own similarity, always the largest, left out)."""
    reference, candidate = stack_texts(fp32, texts), stack_texts(table, texts)
    others = ~torch.eye(len(texts), dtype=torch.bool)
    rows = len(texts), len(texts) - 1
    rho, kept = rank_agreement((reference @ reference.T)[others].view(rows), (candidate @ candidate.T)[others].view(rows), k)
    return RankFidelity(cosine_fidelity(reference, candidate)["cosine_mean"], rho, kept)


def retrieval_fidelity(fp32: Table, table: Table, task: RetrievalSet, k: int) -> RankFidelity:
    queries, corpus = list(task.queries.values()), list(task.corpus.values())
    def similarities(t: Table) -> torch.Tensor:
        return stack_texts(t, queries) @ stack_texts(t, corpus).T
    rho, kept = rank_agreement(similarities(fp32), similarities(table), k)
    cosine = cosine_fidelity(stack_texts(fp32, queries + corpus), stack_texts(table, queries + corpus))["cosine_mean"]
    return RankFidelity(cosine, rho, kept, retrieval_metrics(table, task)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", nargs="+", required=True, help="export folders (qat.train's <run>/export/<ptq|qat>)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("overrides", nargs="*", help="python -m qat.evaluation.metrics's settings for model.* and data.*")
    args = parser.parse_args()
    cfg = job_config("evaluate", EvaluateRunConfig, [*args.overrides, "target.folder=unused"])
    session = open_session(cfg.model, cfg.data, cfg.eval, seed=cfg.seed, threads=cfg.threads, metrics={})
    if session.encoder.pairs:
        parser.error(f"model {session.encoder.source} scores pairs; expected an embedding model (similarities to rank)")
    dev = session.dev
    long = packed([t for t in dev.texts() if isinstance(t, str)], session.encoder.max_length)
    texts = dev.texts() + long
    fp32 = session.fp32_table(long)
    tables = {"fp32": fp32, **{folder: dict(zip(texts, load_int8(folder).outputs(texts, batch_size=cfg.eval.batch_size)))
                               for folder in args.export}}
    results: dict[str, dict[str, RankFidelity]] = {}
    for name, table in tables.items():
        sets = {"held-out": text_set_fidelity(fp32, table, dev.heldout, args.top_k)}
        if dev.guard:
            sets["guard"] = text_set_fidelity(fp32, table, dev.guard, args.top_k)
        sets.update({task_name: retrieval_fidelity(fp32, table, task, args.top_k)
                     for task_name, task in dev.tasks.items() if isinstance(task, RetrievalSet)})
        sets[f"dev texts packed to {session.encoder.max_length} words ({len(long)})"] = text_set_fidelity(
            fp32, table, long, args.top_k)
        results[name] = sets
    write_json(args.out, {name: {s: asdict(r) for s, r in sets.items()} for name, sets in results.items()})
    print(f"| export | set | cosine | rank rho | top-{args.top_k} kept | NDCG@10 |\n|---|---|---|---|---|---|")
    for name, sets in results.items():
        for set_name, r in sets.items():
            ndcg = "" if r.ndcg_at_10 is None else f"{r.ndcg_at_10:.2f}"
            print(f"| {name} | {set_name} | {r.cosine:.4f} | {r.rank_rho:.4f} | {r.top_k_kept:.3f} | {ndcg} |")


if __name__ == "__main__":
    main()
