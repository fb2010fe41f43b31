"""Where an exported int8 model's time goes, by kind of work, at batch 1 and batch 32.

The loaded TorchScript runs fused after its first call: each oneDNN Graph partition is one profiler event named
after the ops it fused ("dequantize+dequantize+linear+gelu+quantize_per_tensor"), everything outside a partition
is an aten or IPEX op of its own. Events are grouped into kinds (int8 GEMMs by what they feed, the attention
products, softmax, LayerNorm, stand-alone quantize, embedding lookups, the rest) and shown as a share of the
whole call, with the call's wall time (profiler overhead included: shares, not speeds, are the point).

    .venv/bin/python scripts/profile_export.py --export outputs/runs/<run>/export/ptq [--shapes 1x128 32x128]

Prints a table per shape and writes --out (default <export>/profile.json).
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

warnings.filterwarnings("ignore")
from qat.exporters.ipex import MODEL_FILE, load_exported  # noqa: E402
from qat.base.ipex import ipex  # noqa: E402
from qat.quant.numerics import cpu_has_vnni  # noqa: E402
from qat.base.timing import openmp_settings  # noqa: E402

# (kind, test on the event name), first match wins; fused partitions are named by their ops joined with '+'.
KINDS = [
    ("int8 Linear + GELU (FFN in)", lambda n: "linear" in n and "gelu" in n),
    ("int8 Linear + residual add", lambda n: "linear" in n and n.endswith("add")),
    ("int8 Linear (Q, K, V)", lambda n: "linear" in n),
    ("int8 Q.K^T (+ scale, mask add)", lambda n: "matmul" in n and "mul" in n.split("matmul", 1)[1]),
    ("int8 P.V", lambda n: "matmul" in n),
    ("softmax (+ quantize)", lambda n: "softmax" in n),
    ("LayerNorm (+ add)", lambda n: "layer_norm" in n or "layernorm" in n),
    ("quantize (stand-alone)", lambda n: n == "aten::quantize_per_tensor"),
    ("embedding lookup", lambda n: "index_select" in n or "embedding" in n),
]
OTHER = "framework and layout (rest)"


def kind_of(name: str) -> str:
    return next((kind for kind, test in KINDS if test(name.lower())), OTHER)


def profile_shape(module: torch.jit.ScriptModule, batch: int, seq: int, calls: int) -> dict:
    example = (torch.randint(1000, 20000, (batch, seq)), torch.ones(batch, seq, dtype=torch.long))
    with torch.no_grad():
        for _ in range(10):   # the first call profiles the graph, fusion starts from the second; then caches settle
            module(*example)
        start = time.perf_counter()
        for _ in range(calls):
            module(*example)
        wall = (time.perf_counter() - start) / calls
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                module(*example)
    by_kind: dict[str, float] = defaultdict(float)
    events: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        by_kind[kind_of(event.key)] += event.self_cpu_time_total / calls
        events[event.key] += event.self_cpu_time_total / calls
    total = sum(by_kind.values())
    return {"batch": batch, "seq": seq, "wall_ms": 1000 * wall, "profiled_ms": total / 1000,
            "kinds": {k: {"ms": v / 1000, "share": v / total} for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "top_events": {k: v / 1000 for k, v in sorted(events.items(), key=lambda kv: -kv[1])[:15]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, required=True, help="an export folder (export/ptq or export/qat)")
    parser.add_argument("--shapes", nargs="+", default=["1x128", "32x128"], help="BATCHxSEQ")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--onednn-fusion", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    try:
        shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes]
    except ValueError:
        raise SystemExit(f"error: --shapes {args.shapes} is not valid; expected BATCHxSEQ, e.g. 1x128") from None
    torch.set_num_threads(args.threads)
    ipex.enable_onednn_fusion(args.onednn_fusion)
    module = load_exported(args.export / MODEL_FILE)
    results = [profile_shape(module, batch, seq, args.calls) for batch, seq in shapes]
    for result in results:
        print(f"\nbatch {result['batch']} x {result['seq']}: {result['wall_ms']:.1f} ms per call "
              f"({result['profiled_ms']:.1f} ms profiled)")
        print("| kind | ms per call | share |\n|---|---|---|")
        for kind, cell in result["kinds"].items():
            print(f"| {kind} | {cell['ms']:.2f} | {100 * cell['share']:.1f}% |")
    out = args.out or args.export / "profile.json"
    out.write_text(json.dumps({"export": str(args.export), "threads": args.threads, "cpu_has_vnni": cpu_has_vnni(), "openmp": openmp_settings(),
                               "onednn_fusion": args.onednn_fusion, "shapes": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
