"""Time one QAT recovery step against one plain fp32 fine-tuning step on the same batch.

    .venv/bin/python scripts/bench_train_step.py --run outputs/runs/<run>     # uses the run's PTQ folder

QAT step: frozen teacher forward (int8 fake-quant, partial recipe) + fake-quant student forward and backward +
AdamW. fp32 step: the fp32 model's forward and backward on the same loss against the same teacher outputs + AdamW.
Medians after warm-up; prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import copy
import json
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
from qat.ptq.artifact import read_ptq_artifact  # noqa: E402
from qat.quant.config import QuantConfig  # noqa: E402
from qat.data import builtin_sentences  # noqa: E402
from qat.recovery.distill import distillation_loss, record_blocks  # noqa: E402
from qat.load import batches, pool  # noqa: E402
from qat.quant.wrapper import EncoderModule  # noqa: E402
from qat.quant.numerics import cpu_has_vnni  # noqa: E402
from qat.quant.simulate import simulate  # noqa: E402
from qat.base.timing import median_seconds  # noqa: E402


def step_seconds(student: torch.nn.Module, teacher: torch.nn.Module, batch, pooling: str, warmup: int, repeats: int) -> float:
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)
    ids, mask = batch

    def step() -> None:
        with torch.no_grad(), record_blocks(teacher) as teacher_blocks:
            teacher_pooled = pool(teacher(ids, mask), mask, pooling)
        with record_blocks(student) as student_blocks:
            student_pooled = pool(student(ids, mask), mask, pooling)
        distillation_loss(student_blocks, teacher_blocks, student_pooled, teacher_pooled, mask, 1.0, 1.0).total.backward()
        optimizer.step()
        optimizer.zero_grad()

    return median_seconds(step, warmup, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a run folder of python -m qat.train (its ptq/ is used)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, help="JSON path (default: <run>/bench_train_step.json)")
    args = parser.parse_args()
    artifact = read_ptq_artifact(args.run / "ptq")
    encoder, qconf = artifact.encoder, artifact.qconf
    partial = qconf.with_recipe(QuantConfig(ops=["linear", "matmul"]))
    teacher = simulate(encoder.model, partial).eval()
    batch = next(batches(encoder, builtin_sentences()[:args.batch_size], args.batch_size))
    students = {
        "fp32 fine-tuning step": EncoderModule(copy.deepcopy(encoder.model)).eval(),
        "QAT step (fake-quant student)": simulate(encoder.model, qconf).eval(),
    }
    seconds = {name: step_seconds(s, teacher, batch, encoder.pooling, args.warmup, args.repeats) for name, s in students.items()}
    base = seconds["fp32 fine-tuning step"]
    print(f"batch {tuple(batch[0].shape)}, int8 ops {qconf.int8_counts()}, threads {torch.get_num_threads()}")
    print(f"{'step':<32}{'median s':>10}{'x fp32':>8}")
    for name, value in seconds.items():
        print(f"{name:<32}{value:>10.3f}{value / base:>8.2f}")
    out = args.out or args.run / "bench_train_step.json"
    out.write_text(json.dumps({"run": str(args.run), "batch_shape": list(batch[0].shape), "seconds": seconds,
                               "ratio_qat_to_fp32": seconds["QAT step (fake-quant student)"] / base,
                               "cpu_has_vnni": cpu_has_vnni(), "threads": torch.get_num_threads()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
