"""Where does IPEX's fused int8 runtime start to differ from the unfused graph (= the fake-quant simulation)?

Every LayerNorm output of an exported model becomes an extra graph output; the graph runs once unfused and once
fused on the same batch, and the table shows, per LayerNorm, how many tokens differ and by how much. A rounding
difference shows up as a few tokens in an early layer that spread layer by layer; a wrong scale or kernel would
show up everywhere at once.

    .venv/bin/python scripts/fused_divergence.py --export outputs/runs/<run>/export/ptq/model_int8.pt \
        [--model bundled:all-MiniLM-L6-v2] [--texts 32] [--out outputs/benchmarks/fused_divergence.json]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from qat.base.atomic import write_json
from qat.config import ModelConfig
from qat.data import builtin_sentences
from qat.exporters.ipex import load_exported
from qat.load import batches, load_encoder


def with_layer_norm_outputs(module: torch.jit.ScriptModule) -> torch.ScriptFunction:
    """The module's forward graph returning (output, *every layer_norm output), as a function of (self, ids, mask)."""
    graph = module.graph.copy()
    probes = [node.output() for node in graph.nodes() if node.kind() == "aten::layer_norm"]
    output = next(graph.outputs())
    graph.eraseOutput(0)
    outputs = graph.create("prim::TupleConstruct", [output, *probes])
    outputs.insertBefore(graph.return_node())
    outputs.output().setType(torch._C.TupleType([value.type() for value in [output, *probes]]))
    graph.registerOutput(outputs.output())
    return torch._C._create_function_from_graph("forward_with_layer_norms", graph)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, required=True)
    parser.add_argument("--model", default="bundled:all-MiniLM-L6-v2")
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/fused_divergence.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    encoder = load_encoder(ModelConfig(name_or_path=args.model))
    ids, mask = next(batches(encoder, builtin_sentences()[-args.texts:], args.texts))
    module = load_exported(args.export)
    forward = with_layer_norm_outputs(module)
    valid = mask.bool()
    with torch.no_grad():
        with torch.jit.optimized_execution(False):
            reference = forward(module._c, ids, mask)
        for _ in range(3):   # the profiling executor fuses from the second call on
            fused = forward(module._c, ids, mask)
    rows = []
    print(f"{'output':>12} {'tokens differing':>17} {'max |diff|':>11} {'min token cosine':>17}")
    for index, (a, b) in enumerate(zip(reference[1:] + reference[:1], fused[1:] + fused[:1])):
        a, b = a[valid], b[valid]
        differing = int((a != b).any(-1).sum())
        row = {"output": f"layer_norm {index}" if index < len(reference) - 1 else "model output",
               "tokens": int(valid.sum()), "tokens_differing": differing, "max_abs_diff": (a - b).abs().max().item(),
               "min_token_cosine": torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item()}
        rows.append(row)
        print(f"{row['output']:>12} {differing:>8} of {row['tokens']:<6} {row['max_abs_diff']:>11.2e} "
              f"{row['min_token_cosine']:>17.5f}")
    write_json(args.out, {"export": str(args.export), "texts": args.texts, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
