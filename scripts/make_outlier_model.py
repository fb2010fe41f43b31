"""An outlier stress model: the bundled all-MiniLM-L6-v2 with function-preserving channel rescalings inside
attention, by large factors, in several layers and in both pairs (Q/K: a channel of Q times f, of K divided by f;
V/O: a channel of V times f, the matching input column of W_O divided by f). fp32 outputs are unchanged; every
int8 matmul and attention-output input now carries outlier channels, as in encoders with massive activations.

    .venv/bin/python scripts/make_outlier_model.py --out outputs/models/minilm_attention_outliers
    .venv/bin/python -m qat.train model.name_or_path=outputs/models/minilm_attention_outliers data=stsb train=none
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
from qat.config import ModelConfig  # noqa: E402
from qat.data import builtin_sentences  # noqa: E402
from qat.load import batches, load_encoder  # noqa: E402
from qat.quant.equalize import check_attention, check_function, rescale  # noqa: E402


def stress(model: torch.nn.Module, layers: list[int], channels_per_head: int, factor: float) -> None:
    """Multiply `channels_per_head` channels of every head of the chosen layers by `factor`, in both pairs."""
    blocks = check_attention(model)
    heads = model.config.num_attention_heads
    width = model.get_submodule(blocks[0].query).out_features
    size = width // heads
    for layer in layers:
        chosen = torch.tensor([h * size + (3 * c + 7 * layer) % size for h in range(heads) for c in range(channels_per_head)])
        up = torch.ones(width)
        up[chosen] = factor
        rescale(model, blocks[layer], "qk", up)          # Q x f, K / f
        rescale(model, blocks[layer], "vo", 1.0 / up)    # V x f, W_O columns / f


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--channels-per-head", type=int, default=2)
    parser.add_argument("--factor", type=float, default=100.0)
    args = parser.parse_args()
    encoder = load_encoder(ModelConfig())
    original = load_encoder(ModelConfig()).model
    stress(encoder.model, args.layers, args.channels_per_head, args.factor)
    check_function(original, encoder.model, next(batches(encoder, builtin_sentences()[:32], 32)), "the stress rescaling")
    encoder.model.save_pretrained(args.out)
    encoder.tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out}: layers {args.layers}, {args.channels_per_head} channel(s) per head x {args.factor} in Q/K "
          "and V/O; fp32 outputs unchanged (checked)")


if __name__ == "__main__":
    main()
