"""Quantized module swaps, each a reversible pair (from_float / to_float) sharing the original parameters."""
from __future__ import annotations

import torch
from torch import nn

from qat.quant.quantizer import FakeQuantizer


class QuantLinear(nn.Linear):
    """nn.Linear whose input and weight pass through fake quantizers before F.linear."""

    input_quantizer: FakeQuantizer | None
    weight_quantizer: FakeQuantizer

    @classmethod
    def from_float(cls, linear: nn.Linear, input_quantizer: FakeQuantizer | None,
                   weight_range: tuple[int, int]) -> QuantLinear:
        quant = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        quant.weight, quant.bias = linear.weight, linear.bias
        quant.input_quantizer = input_quantizer
        quant.weight_quantizer = FakeQuantizer.for_weight(weight_range)
        return quant

    def to_float(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return nn.functional.linear(x, self.weight_quantizer(self.weight), self.bias)


class QuantFunctionalOp(nn.Module):
    """Input quantizers of one functional op (a matmul or an add) that IPEX quantizes inside a module's forward."""

    def __init__(self, op_type: str, input_quantizers: list[FakeQuantizer | None]) -> None:
        super().__init__()
        self.op_type = op_type
        self.input_quantizers = nn.ModuleList(q if q is not None else nn.Identity() for q in input_quantizers)

    def quantize_inputs(self, args: tuple) -> tuple:
        quantized = list(args)
        for i, quantizer in enumerate(self.input_quantizers):
            if i < len(quantized) and isinstance(quantized[i], torch.Tensor):
                quantized[i] = quantizer(quantized[i])
        return tuple(quantized)
