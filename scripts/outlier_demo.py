"""What SmoothQuant does for a model with a strong activation outlier.

The outlier is injected without changing the fp32 function: one value channel of one layer is multiplied by
`--factor` and the attention-output Linear's matching input column divided by it (attention is linear in V).
That channel of the attention-output input then spans `factor` times the others, which wrecks a per-tensor int8
scale. The script checks that fp32 is unchanged, then compares naive PTQ and SmoothQuant PTQ (fake-quant,
mean/min cosine of pooled embeddings to fp32 on the held-out builtin sentences) for each recipe.

    .venv/bin/python scripts/outlier_demo.py [--factor 100] [--layer 2] [--alpha 0.5] [--modules REGEX ...]
        [--recipes linear full] [--out outputs/benchmarks/outlier_demo.json]
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from qat.base.atomic import write_json
from qat.ptq import calibrate
from qat.quant.config import Recipe
from qat.config import ModelConfig
from qat.quant.config import CalibConfig, QuantConfig, SmoothQuantConfig
from qat.data import builtin_sentences
from qat.evaluation.metrics import EvalData, embed, evaluate_recipe
from qat.load import batches, load_encoder
from qat.quant.wrapper import EncoderModule

RECIPES = {"linear": ["linear"], "linear+matmul": ["linear", "matmul"], "full": ["linear", "matmul", "add"]}


def inject_outlier(model: torch.nn.Module, layer: int, channel: int, factor: float) -> None:
    attention = model.encoder.layer[layer].attention
    with torch.no_grad():
        attention.self.value.weight[channel] *= factor
        attention.self.value.bias[channel] *= factor
        attention.output.dense.weight[:, channel] /= factor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=float, default=100.0)
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--channel", type=int, default=7)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--modules", nargs="+", default=[".*"], help="smoothquant.modules (owner paths, regexes)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/outlier_demo.json"))
    args = parser.parse_args()
    torch.manual_seed(0)

    texts = builtin_sentences()
    calib_texts, heldout = texts[:256], EvalData(texts[256:])
    original = load_encoder(ModelConfig())
    outlier = copy.copy(original)
    outlier.model = copy.deepcopy(original.model)
    inject_outlier(outlier.model, args.layer, args.channel, args.factor)
    ids, mask = next(batches(original, heldout.heldout, 64))
    with torch.no_grad():
        fp32_change = (EncoderModule(outlier.model)(ids, mask) - EncoderModule(original.model)(ids, mask)).abs().max().item()

    rows = []
    for model_name, encoder in [("original", original), (f"outlier x{args.factor:g}", outlier)]:
        reference = embed(EncoderModule(encoder.model).eval(), encoder, heldout.texts(), 64)
        for recipe in args.recipes:
            ops = RECIPES[recipe]
            for smoothquant in (SmoothQuantConfig(), SmoothQuantConfig(enabled=True, alpha=args.alpha, modules=args.modules)):
                calibration = calibrate(encoder, calib_texts,
                                        Recipe(QuantConfig(ops=ops), CalibConfig(), smoothquant=smoothquant))
                metrics = evaluate_recipe(calibration.model, calibration.qconf, encoder, heldout, reference, 64)
                rows.append({"model": model_name, "recipe": recipe, "smoothquant": smoothquant.enabled,
                             "cosine_mean": metrics["cosine_mean"], "cosine_min": metrics["cosine_min"],
                             "emd_heldout_pairs": metrics["emd_heldout_pairs"]})
                print(f"{model_name:>14} | {recipe:>13} | SmoothQuant {'on ' if smoothquant.enabled else 'off'} | "
                      f"cosine mean {metrics['cosine_mean']:.4f} min {metrics['cosine_min']:.4f} | "
                      f"EMD {metrics['emd_heldout_pairs']:.4f}", flush=True)
    result = {"factor": args.factor, "layer": args.layer, "channel": args.channel, "alpha": args.alpha, "modules": args.modules,
              "fp32_max_abs_change": fp32_change, "rows": rows}
    print(f"fp32 output change from the injection: max |diff| {fp32_change:.2e}")
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
