"""A retrieval set in the BEIR layout from dev material only (no test split, not SciFact): the WikiQA dev questions
as queries, and as corpus every candidate sentence of WikiQA dev (their correct answers are the relevant documents)
plus every STS-B dev sentence as a distractor. Retrieval over the whole corpus, not reranking within a question's
candidates, so it scores an embedding model the way a search index uses it.

    .venv/bin/python scripts/make_retrieval_set.py --out outputs/data/dev_retrieval
    .venv/bin/python -m qat.evaluation.metrics target.folder=<export> data=stsb \\
        '+data.tasks.retrieval_dev={kind: file, format: beir, path: outputs/data/dev_retrieval, split: dev}'
"""
from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

from qat.base.atomic import write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("QAT_DATA_ROOT", "../shared/data")))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with (args.data / "wikiqa_rerank" / "dev.jsonl").open(encoding="utf-8") as handle:
        questions = [json.loads(line) for line in handle if line.strip()]
    with (args.data / "stsb" / "dev.tsv").open(encoding="utf-8", newline="") as handle:
        sts = [s for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) for s in (row["sentence1"], row["sentence2"])]
    documents: dict[str, str] = {}   # text -> id, so a sentence that recurs is one document

    def doc_id(text: str) -> str:
        return documents.setdefault(text, f"d{len(documents)}")

    qrels = [(q["qid"], doc_id(answer)) for q in questions for answer in q["positive"]]
    for text in [t for q in questions for t in q["negative"]] + sts:
        doc_id(text)
    args.out.joinpath("qrels").mkdir(parents=True, exist_ok=True)
    write_text(args.out / "corpus.jsonl", "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for t, i in documents.items()))
    write_text(args.out / "queries.jsonl", "".join(json.dumps({"_id": q["qid"], "text": q["query"]}) + "\n" for q in questions))
    write_text(args.out / "qrels" / "dev.tsv", "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in dict.fromkeys(qrels)))
    print(f"{args.out}: {len(questions)} queries, {len(documents)} documents, {len(dict.fromkeys(qrels))} relevant pairs")


if __name__ == "__main__":
    main()
