"""Real text at its real length: `Int8Encoder.encode` (length-sorted, padded per batch) against the same int8
model fed batches padded to a fixed length, on the same texts, interleaved in one process.

    .venv/bin/python scripts/bench_encode.py --export outputs/runs/<run>/export/ptq \
        --texts ../shared/data/stsb/test.tsv --batch-size 32 --rounds 5

Prints a table and writes --out (outputs/bench_encode.json). Sentences/s is the median over rounds.
"""
from __future__ import annotations

import argparse
import statistics
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

warnings.filterwarnings("ignore")
from qat import load_int8  # noqa: E402
from qat.base.versions import library_versions  # noqa: E402
from qat.base.atomic import write_json  # noqa: E402
from qat.config import SourceConfig  # noqa: E402
from qat.data import load_texts  # noqa: E402
from qat.load import pool  # noqa: E402
from qat.quant.numerics import cpu_has_vnni  # noqa: E402
from qat.base.timing import interleaved_rounds, openmp_settings  # noqa: E402


@torch.no_grad()
def fixed_padding(run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tokenizer: PreTrainedTokenizerBase,
                  pooling: str, texts: list[str], batch_size: int, length: int, fill: bool = False) -> torch.Tensor:
    """The naive path: batches in the given order, every one padded to `length` tokens; with `fill` the last
    batch is filled up with repeats too, so that a runtime compiling per shape (Inductor) sees one shape."""
    rows = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        padded = chunk + chunk[:1] * (batch_size - len(chunk)) if fill else chunk
        batch = tokenizer(padded, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
        rows.append(pool(run(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"], pooling)[:len(chunk)])
    return torch.cat(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, required=True, help="an export folder (export/ptq or export/qat)")
    parser.add_argument("--texts", type=Path, required=True, help="a .tsv of pairs (both sentences) or a .txt file")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fixed-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_encode.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_int8(args.export)
    fmt = "pairs" if args.texts.suffix == ".tsv" else "text"
    texts = load_texts(SourceConfig(kind="file", path=str(args.texts), format=fmt))
    ways = {
        f"encode (length-sorted, padded per batch of {args.batch_size})":
            lambda: model.encode(texts, batch_size=args.batch_size, convert_to_tensor=True, show_progress_bar=False),
        f"fixed padding to {args.fixed_length}, batch {args.batch_size}":
            lambda: fixed_padding(model.module, model.tokenizer, model.info.pooling, texts, args.batch_size,
                                  args.fixed_length),
    }
    for run in ways.values():   # warm-up: the first calls of a TorchScript module profile, then it fuses
        run()
    seconds = {name: timed.rounds for name, timed in interleaved_rounds(ways, args.rounds, warmup=0, repeats=1).items()}
    sorted_rows = ways[next(iter(ways))]()
    naive_rows = ways[list(ways)[1]]()
    cosine = torch.nn.functional.cosine_similarity(sorted_rows, naive_rows).min().item()
    base = statistics.median(seconds[list(ways)[1]])
    rows = [{"way": name, "sentences_per_s": len(texts) / statistics.median(s), "x_fixed": base / statistics.median(s),
             "seconds_median": statistics.median(s), "seconds_range": [min(s), max(s)]} for name, s in seconds.items()]
    print(f"{len(texts)} texts from {args.texts}, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds, "
          f"VNNI: {cpu_has_vnni()}")
    print("| way | sentences/s | x fixed padding | median s (range) |\n|---|---|---|---|")
    for row in rows:
        low, high = row["seconds_range"]
        print(f"| {row['way']} | {row['sentences_per_s']:.1f} | {row['x_fixed']:.2f} | {row['seconds_median']:.2f} "
              f"({low:.2f}-{high:.2f}) |")
    print(f"min cosine between the two ways' embeddings: {cosine:.6f} (other batch shapes round differently in int8)")
    write_json(args.out, {"texts": len(texts), "source": str(args.texts), "rows": rows,
                                                   "min_cosine_between_ways": cosine, "threads": torch.get_num_threads(),
                                                   "cpu_has_vnni": cpu_has_vnni(), "openmp": openmp_settings(), "versions": library_versions()})


if __name__ == "__main__":
    main()
