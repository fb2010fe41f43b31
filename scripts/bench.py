"""Latency and throughput of fp32 eager, fp32 TorchScript, bf16 TorchScript and the exported int8 model.

    .venv/bin/python scripts/bench.py --run outputs/runs/<run>      # prints a table, writes <run>/bench.json
    .venv/bin/python scripts/bench.py --run outputs/runs/<partial> --int8 full=outputs/runs/<full> sq=outputs/runs/<sq>:qat
        # several int8 exports side by side in one process (label=run folder[:export])

Medians over repeated calls after warm-up; ratios are against fp32 TorchScript at the same shape.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from functools import partial
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
from qat.base.versions import library_versions
from qat.ptq.artifact import read_ptq_artifact  # noqa: E402
from qat.exporters.ipex import load_exported  # noqa: E402  (imports IPEX: registers the int8 kernels)
from qat.base.ipex import ipex  # noqa: E402
from qat.quant.numerics import cpu_has_vnni  # noqa: E402
from qat.quant.wrapper import EncoderModule  # noqa: E402
from qat.base.timing import interleaved_rounds, openmp_settings  # noqa: E402

SHAPES = [("latency", 1, 32), ("latency", 1, 128), ("throughput", 32, 128), ("throughput", 128, 128)]


def inputs(batch: int, seq: int, vocab: int,
           input_names: tuple[str, ...] | list[str] = ("input_ids", "attention_mask")) -> tuple[torch.Tensor, ...]:
    """Random tokens of the model's own signature: (input_ids, attention_mask[, token_type_ids]), the second half
    of each sequence as segment 1 where a score model reads pairs."""
    generator = torch.Generator().manual_seed(0)
    tensors = {"input_ids": torch.randint(1000, vocab, (batch, seq), generator=generator),
               "attention_mask": torch.ones(batch, seq, dtype=torch.long),
               "token_type_ids": (torch.arange(seq) >= seq // 2).long().expand(batch, seq)}
    return tuple(tensors[name] for name in input_names)


def trace(module: torch.nn.Module, example: tuple[torch.Tensor, ...], bf16: bool) -> torch.jit.ScriptModule:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return torch.jit.freeze(torch.jit.trace(module, example, check_trace=False, strict=False))


class Autocast(torch.nn.Module):
    """bf16 through autocast in eager mode: runs on CPUs whose oneDNN has no bf16 TorchScript kernels."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.module(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a run folder of python -m qat.train")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every variant this many times, interleaved, and take the median of the rounds "
                             "(slow drift of a shared machine then hits all variants alike)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, help="JSON path (default: <run>/bench.json)")
    parser.add_argument("--export", default="ptq", help="which export of the run: ptq or qat (default: ptq)")
    parser.add_argument("--int8", nargs="+", default=[], metavar="LABEL=RUN[:EXPORT]",
                        help="more int8 exports to measure in the same process, e.g. full=outputs/runs/x:ptq")
    parser.add_argument("--variants", nargs="+", help="measure only these variants (e.g. 'fp32 TorchScript' 'int8 IPEX')")
    parser.add_argument("--onednn-fusion", action=argparse.BooleanOptionalAction, default=True,
                        help="IPEX's oneDNN Graph fusion at run time (--no-onednn-fusion turns it off)")
    args = parser.parse_args()
    int8_path = args.run / "export" / args.export / "model_int8.pt"
    if not int8_path.is_file():
        sys.exit(f"error: run folder {args.run} has no export/{args.export}/model_int8.pt; expected a finished qat.train run")
    torch.set_num_threads(args.threads)
    ipex.enable_onednn_fusion(args.onednn_fusion)

    artifact = read_ptq_artifact(args.run / "ptq")
    fp32 = EncoderModule(artifact.encoder.model).eval()
    vocab, names = artifact.encoder.tokenizer.vocab_size, artifact.encoder.input_names
    example = inputs(2, 32, vocab, names)
    models = {
        "fp32 eager": fp32,
        "fp32 TorchScript": trace(fp32, example, bf16=False),
        "bf16 TorchScript": trace(fp32, example, bf16=True),
        "bf16 eager": Autocast(fp32),
        "int8 IPEX": load_exported(int8_path),
    }
    for spec in args.int8:
        label, _, where = spec.partition("=")
        run, _, export = where.partition(":")
        path = Path(run) / "export" / (export or "ptq") / "model_int8.pt"
        if not label or not path.is_file():
            sys.exit(f"error: --int8 {spec!r} names no export ({path} is missing); expected LABEL=RUN[:EXPORT]")
        models[f"int8 {label}"] = load_exported(path)
    if args.variants:
        unknown = sorted(set(args.variants) - set(models))
        if unknown:
            sys.exit(f"error: unknown variants {unknown}; expected some of {list(models)}")
        models = {name: models[name] for name in args.variants}
    rows = []
    for kind, batch, seq in SHAPES:
        shape = inputs(batch, seq, vocab, names)
        with torch.no_grad():
            timed = interleaved_rounds({name: partial(model, *shape) for name, model in models.items()},
                                       args.rounds, args.warmup, args.repeats)
        baseline = timed.get("fp32 TorchScript")
        for name, result in timed.items():
            row = {"variant": name, "kind": kind, "batch": batch, "seq": seq}
            if result.error:
                row["error"] = result.error
            else:
                row.update(median_ms=1000 * result.seconds, sequences_per_s=batch / result.seconds,
                           rounds_sequences_per_s=[batch / v for v in result.rounds],
                           speedup_vs_fp32_torchscript=baseline.seconds / result.seconds
                           if baseline and not baseline.error else None)
            rows.append(row)
    print(f"{'variant':<22}{'shape':<14}{'median ms':>11}{'seq/s':>9}{'x fp32 TS':>11}{'seq/s over rounds':>20}")
    for r in rows:
        where = f"{r['variant']:<22}{r['kind'][:3]} {r['batch']:>3}x{r['seq']:<5}"
        if "error" in r:
            print(where + f"  failed: {r['error'][:90]}")
        else:
            ratio = r["speedup_vs_fp32_torchscript"]
            spread = f"{min(r['rounds_sequences_per_s']):.1f}-{max(r['rounds_sequences_per_s']):.1f}"
            print(where + f"{r['median_ms']:>11.2f}{r['sequences_per_s']:>9.1f}" + (f"{ratio:>11.2f}" if ratio else f"{'-':>11}")
                  + f"{spread:>20}")
    out = args.out or args.run / "bench.json"
    out.write_text(json.dumps({"run": str(args.run), "export": args.export, "more_int8": args.int8, "onednn_fusion": args.onednn_fusion, "threads": args.threads, "cpu_has_vnni": cpu_has_vnni(), "openmp": openmp_settings(),
                               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "warmup": args.warmup,
                               "repeats": args.repeats, "rounds": args.rounds, "rows": rows, "versions": library_versions()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
