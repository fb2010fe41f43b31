"""Does tracing the IPEX int8 export under bf16 autocast pay on this CPU? The same converted model (the run's PTQ
artifact, its frozen scales and per-channel weights) traced twice: as qat exports it (the non-int8 ops, LayerNorm,
softmax, GELU and the residual adds, in fp32) and under bf16 autocast (those ops in bf16, as INC's IPEX path does).
Both are checked to run the recipe's int8 ops, scored against fp32 on the held-out texts (mean / min cosine), and
timed side by side in one process (interleaved rounds, median).

    .venv/bin/python scripts/bench_ipex_bf16.py --run outputs/runs/<run>     # prints a table, writes --out

Only meaningful where the CPU computes bf16 natively (avx512_bf16 or AMX); elsewhere it refuses.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from functools import partial
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
from bench import inputs  # noqa: E402  (scripts/bench.py)

from qat.base.timing import cpu_name, interleaved_rounds  # noqa: E402
from qat.base.versions import library_versions  # noqa: E402
from qat.config import DataConfig  # noqa: E402
from qat.data import load_texts  # noqa: E402
from qat.evaluation.metrics import Forward, cosine_fidelity, embed, stack_texts  # noqa: E402
from qat.exporters.ipex import convert_for_ipex, expected_graph_counts, int8_op_counts  # noqa: E402
from qat.load import batches  # noqa: E402
from qat.ptq.artifact import read_ptq_artifact  # noqa: E402
from qat.quant.numerics import cpu_has_native_bf16  # noqa: E402
from qat.quant.simulate import simulate  # noqa: E402
from qat.quant.wrapper import EncoderModule  # noqa: E402

SHAPES = [(1, 128), (32, 128)]


def traced(module: torch.nn.Module, example: tuple[torch.Tensor, ...], bf16: bool) -> torch.jit.ScriptModule:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        frozen = torch.jit.freeze(torch.jit.trace(module, example, check_trace=False, strict=False))
        for _ in range(2):   # IPEX's profiling executor fuses from the second call on
            frozen(*example)
    return frozen


def as_float(module: torch.jit.ScriptModule) -> Forward:
    def forward(*args: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(*args).float()
    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a run folder of python -m qat.train (its ptq/)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="JSON to write (default <run>/bench_ipex_bf16.json)")
    args = parser.parse_args()
    if not cpu_has_native_bf16():
        sys.exit(f"error: this CPU ({cpu_name()}) has no native bf16; expected avx512_bf16 or AMX (bf16 is emulated "
                 "here and slower than fp32)")
    artifact = read_ptq_artifact(args.run / "ptq")
    encoder = artifact.encoder
    if encoder.kind != "embedding":
        sys.exit(f"error: run {args.run} quantized a score model; expected an embedding model (cosine of embeddings)")
    sim = simulate(encoder.model, artifact.qconf).eval()
    heldout = load_texts(DataConfig().heldout, encoder.pairs)
    example = next(batches(encoder, heldout, 8))
    with tempfile.TemporaryDirectory() as tmp:
        converted, qconf = convert_for_ipex(sim.to_float().eval(), sim.qconf, sim.weight_qparams(), example,
                                            Path(tmp) / "qconf.json")
    variants = {"int8 IPEX (fp32 non-int8 ops)": traced(converted, example, bf16=False),
                "int8 IPEX traced under bf16 autocast": traced(converted, example, bf16=True)}
    expected = expected_graph_counts(qconf)
    fp32 = stack_texts(embed(EncoderModule(encoder.model).eval(), encoder, heldout, 32), heldout)
    rows = []
    for name, module in variants.items():
        found = int8_op_counts(module.graph)
        if found != expected:
            sys.exit(f"error: {name} runs {found} ops in int8; expected the recipe's {expected}")
        rows.append({"variant": name, "int8_ops": found,
                     **cosine_fidelity(fp32, stack_texts(embed(as_float(module), encoder, heldout, 32), heldout))})
    vocab = encoder.model.config.vocab_size
    for batch, seq in SHAPES:
        shape = inputs(batch, seq, vocab, encoder.input_names)
        with torch.no_grad():
            timed = interleaved_rounds({name: partial(module, *shape) for name, module in variants.items()},
                                       args.rounds, args.warmup, args.repeats)
        for row in rows:
            row[f"b{batch}x{seq}_ms"] = 1000 * timed[row["variant"]].seconds
            row[f"b{batch}x{seq}_seq_per_s"] = batch / timed[row["variant"]].seconds
    print(f"CPU: {cpu_name()}; {args.run}, {len(heldout)} held-out texts")
    print(f"{'variant':<40}{'cosine to fp32 mean / min':>27}{'b1x128 ms':>11}{'b32x128 seq/s':>15}")
    for row in rows:
        print(f"{row['variant']:<40}{row['cosine_mean']:>18.4f} / {row['cosine_min']:.4f}"
              f"{row['b1x128_ms']:>11.2f}{row['b32x128_seq_per_s']:>15.1f}")
    out = args.out or args.run / "bench_ipex_bf16.json"
    out.write_text(json.dumps({"run": str(args.run), "cpu": cpu_name(), "rounds": args.rounds, "warmup": args.warmup,
                               "repeats": args.repeats, "rows": rows, "versions": library_versions()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
