"""Where PTQ loses fidelity on inputs as long as the model serves. Short task sentences (STS-B) reach 10-40
tokens and the package's passages about 150; a retrieval user embeds passages cut at the model's max length. For
each recipe variant, the fake-quant PTQ model's mean cosine to fp32 on short dev sentences and on dev sentences
packed into passages of max-length words (every position filled), calibrated on train sentences alone or with
packed train passages among them, and with either attention matmul left in floating point (the scores Q K^T, or
the context: the softmax's probabilities times V, `quant.context_matmul=false`); and the share of attention
probabilities that the default recipe's int8 context matmul rounds to 0.

    .venv/bin/python scripts/long_inputs.py --data ../shared/data/stsb --out outputs/long_inputs.json
"""
from __future__ import annotations

import argparse
import logging
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
from qat.base.atomic import write_json  # noqa: E402
from qat.config import ModelConfig, SourceConfig  # noqa: E402
from qat.data import load_texts, packed  # noqa: E402
from qat.evaluation.metrics import Table, cosine_fidelity, embed, stack_texts  # noqa: E402
from qat.load import Encoder, load_encoder, tokenize  # noqa: E402
from qat.ptq.prepare import calibrate  # noqa: E402
from qat.quant.config import CalibConfig, QuantConfig, Recipe  # noqa: E402
from qat.quant.qconf import FP32, Qconf  # noqa: E402
from qat.quant.simulate import simulate  # noqa: E402
from qat.quant.wrapper import EncoderModule  # noqa: E402

RECIPES = {"default": QuantConfig(), "full_int8": QuantConfig(ops=["linear", "matmul", "residual_add", "embedding_add"])}


@dataclass
class Fidelity:
    recipe: str
    variant: str
    short: float
    long: float


def scores_matmuls_float(qconf: Qconf) -> None:
    """Leave each attention's scores matmul (Q K^T, the one that is not the context product) in floating point."""
    context = qconf.context_matmuls()
    for op in qconf.ops:
        if op.kind == "matmul" and (op.state_key, op.index) not in context:
            for tensor in op.info["input_tensor_infos"]:
                if tensor:
                    tensor["force_dtype"] = FP32


def rounded_to_zero(encoder: Encoder, qconf: Qconf, texts: list[str]) -> list[float]:
    """Per layer, the share of fp32 attention probabilities (real tokens only) below half a step of the context
    matmul's calibrated scale: what its int8 input rounds to 0."""
    scales = [op.input_qparams()[0].scale for op in qconf.ops if (op.state_key, op.index) in qconf.context_matmuls()]
    shares = [[] for _ in scales]
    for start in range(0, len(texts), 16):
        ids, mask = tokenize(encoder, texts[start:start + 16])[:2]
        with torch.no_grad():
            attentions = encoder.model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
        for layer, probabilities in enumerate(attentions):
            real = (mask[:, None, :, None].bool() & mask[:, None, None, :].bool()).expand_as(probabilities)
            shares[layer].append(probabilities[real] < scales[layer] / 2)
    return [torch.cat(below).float().mean().item() for below in shares]


def mean_cosine(encoder: Encoder, forward: torch.nn.Module, texts: list[str], reference: Table) -> float:
    table = embed(forward, encoder, texts, 16)
    return cosine_fidelity(stack_texts(reference, texts), stack_texts(table, texts))["cosine_mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="an STS folder with train.tsv and dev.tsv")
    parser.add_argument("--model", default=ModelConfig().name_or_path)
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    torch.manual_seed(0)
    encoder = load_encoder(ModelConfig(name_or_path=args.model))
    words = encoder.max_length
    train, dev = (load_texts(SourceConfig(kind="file", path=str(args.data / f"{split}.tsv"), format="pairs"))
                  for split in ("train", "dev"))
    sets = {"short": dev[:400], "long": packed(dev, words)}
    calibration = {"train sentences": train[:256],
                   "train sentences with 32 packed passages": train[:224] + packed(train[3000:], words)[:32]}
    fp32 = EncoderModule(encoder.model).eval()
    reference = {name: embed(fp32, encoder, texts, 16) for name, texts in sets.items()}
    variants = [(f"calibrated on {name}", texts, None) for name, texts in calibration.items()] + [
        ("scores matmul (Q K^T) in floating point", calibration["train sentences"], "scores"),
        ("context matmul (probabilities x V) in floating point", calibration["train sentences"], "context"),
        ("both attention matmuls in floating point", calibration["train sentences"], "both")]
    rows: list[Fidelity] = []
    zero_shares: dict[str, list[float]] = {}
    print(f"max length {encoder.max_length} tokens; {len(sets['short'])} short dev sentences, {len(sets['long'])} "
          f"dev passages of {words} words\n\n| recipe | variant | cosine, short | cosine, long |\n|---|---|---|---|")
    for recipe, quant in RECIPES.items():
        for variant, texts, floating in variants:
            variant_quant = {"context": replace(quant, context_matmul=False),
                             "both": replace(quant, ops=[op for op in quant.ops if op != "matmul"])}.get(floating, quant)
            encoder = load_encoder(ModelConfig(name_or_path=args.model))
            ptq = calibrate(encoder, texts, Recipe(quant=variant_quant, calib=CalibConfig()))
            if floating == "scores":
                scores_matmuls_float(ptq.qconf)
            model = simulate(ptq.model, ptq.qconf).eval()
            row = Fidelity(recipe, variant, *(mean_cosine(encoder, model, sets[n], reference[n]) for n in ("short", "long")))
            rows.append(row)
            print(f"| {recipe} | {variant} | {row.short:.4f} | {row.long:.4f} |", flush=True)
            if recipe == "default" and floating is None and not zero_shares:
                zero_shares = {name: rounded_to_zero(encoder, ptq.qconf, texts) for name, texts in sets.items()}
    print("\nDefault recipe: share of attention probabilities the int8 context matmul rounds to 0, by layer:")
    for name, shares in zero_shares.items():
        print(f"  {name}: {' '.join(f'{share:.2f}' for share in shares)}")
    write_json(args.out, {"max_length": encoder.max_length, "rows": [asdict(r) for r in rows],
                          "rounded_to_zero_by_layer": zero_shares})


if __name__ == "__main__":
    main()
