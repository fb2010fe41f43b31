"""Make a real cross-encoder offline: fine-tune the bundled all-MiniLM-L6-v2 with a one-score head on STS-B train
pairs (label / 5 as the target of a sigmoid, as sentence-transformers trains its STS-B cross-encoders); STS-B dev
chooses the best evaluation. The result is a normal Hugging Face folder (BertForSequenceClassification) that
`python -m qat.train model.name_or_path=<out>` takes as a score model.

    .venv/bin/python scripts/make_cross_encoder.py --out outputs/cross_encoder [--epochs 2]

Writes <out>/ (model, tokenizer) and <out>/training.json (dev Spearman at every evaluation). The test split is
never read. About 24 minutes with the defaults on a 2-core CPU (720 steps); a line every --log-every steps says
how far it is and how long is left.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

from qat.base.atomic import new_directory
from qat.config import SourceConfig
from qat.data import PairSet, load_task
from qat.load import resolve_model_path

MAX_SCORE = 5.0   # STS-B labels are 0..5


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and each option's default."""


def pair_batches(tokenizer, pairs: PairSet, order: list[int], batch_size: int, max_length: int):
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        enc = tokenizer([pairs.sentence1[i] for i in chosen], [pairs.sentence2[i] for i in chosen], padding=True,
                        truncation=True, max_length=max_length, return_tensors="pt")
        yield enc, torch.tensor([pairs.scores[i] / MAX_SCORE for i in chosen])


@torch.no_grad()
def dev_spearman(model, tokenizer, dev: PairSet, max_length: int) -> float:
    model.eval()
    scores = [model(**enc).logits[:, 0] for enc, _ in pair_batches(tokenizer, dev, list(range(len(dev.scores))), 64,
                                                                    max_length)]
    model.train()
    return 100.0 * float(spearmanr(torch.cat(scores).numpy(), dev.scores).statistic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="a new folder for the cross-encoder")
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("QAT_DATA_ROOT", "../shared/data")),
                        help="the folder holding stsb/train.tsv and stsb/dev.tsv (QAT_DATA_ROOT)")
    parser.add_argument("--epochs", type=int, default=2, help="passes over STS-B train")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    parser.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate (linear warm-up and decay)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per pair")
    parser.add_argument("--eval-every", type=int, default=120, help="steps between dev evaluations")
    parser.add_argument("--log-every", type=int, default=50, help="steps between progress lines")
    parser.add_argument("--seed", type=int, default=0, help="shuffling and head initialisation")
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"error: --out {str(args.out)!r} exists; expected a new folder (nothing is overwritten)")
    train = load_task(SourceConfig(kind="file", path=str(args.data_root / "stsb" / "train.tsv"), format="pairs"))
    dev = load_task(SourceConfig(kind="file", path=str(args.data_root / "stsb" / "dev.tsv"), format="pairs"))
    torch.manual_seed(args.seed)
    path = resolve_model_path("bundled:all-MiniLM-L6-v2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    steps = args.epochs * math.ceil(len(train.scores) / args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    history, best, best_state, step, started = [], -math.inf, None, 0, time.perf_counter()
    model.train()
    for epoch in range(args.epochs):
        order = torch.randperm(len(train.scores), generator=torch.Generator().manual_seed(args.seed + epoch)).tolist()
        for enc, target in pair_batches(tokenizer, train, order, args.batch_size, args.max_length):
            loss = loss_fn(model(**enc).logits[:, 0], target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % args.log_every == 0:
                elapsed = time.perf_counter() - started
                print(f"step {step}/{steps}: loss {loss.item():.4f}, {elapsed / step:.2f} s/step, about "
                      f"{elapsed / step * (steps - step) / 60:.0f} min to go", flush=True)
            if step % args.eval_every == 0 or step == steps:
                spearman = dev_spearman(model, tokenizer, dev, args.max_length)
                history.append({"step": step, "epoch": epoch, "loss": loss.item(), "dev_spearman": spearman,
                                "minutes": (time.perf_counter() - started) / 60})
                print(json.dumps(history[-1]), flush=True)
                if spearman > best:
                    best, best_state = spearman, {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    with new_directory(args.out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps({"best_dev_spearman": best, "args": {
            k: str(v) for k, v in vars(args).items()}, "history": history}, indent=2))
    print(f"best STS-B dev Spearman {best:.2f}; saved {args.out}")


if __name__ == "__main__":
    main()
