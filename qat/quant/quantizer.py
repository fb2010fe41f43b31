"""One fake quantizer for every site: frozen per-tensor activations, per-channel weights from the weight itself."""
from __future__ import annotations

import torch
from torch import nn

from qat.quant.numerics import DTYPE_BOUNDS, WEIGHT_AXIS, WEIGHT_DTYPE, weight_qparams


class FakeQuantizer(nn.Module):
    """Quantize-dequantize a tensor with PyTorch's fake-quant ops (straight-through gradient).

    Activation quantizers hold a frozen scale and zero point as buffers: nothing trains them.
    Weight quantizers hold nothing: the per-channel scale follows the weight at every call.
    An optional observer sees every input first (as in torch.ao's FakeQuantize): calibration statistics are
    collected through the same sites the simulation quantizes, with `enabled=False` leaving the model fp32.
    """

    def __init__(self, dtype: torch.dtype, scale: float | None = None, zero_point: int | None = None,
                 weight_range: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.dtype = dtype
        # Rounding clamps to the storage dtype's bounds, as IPEX's quantize does; a narrower weight range only
        # changes how the scale is computed.
        self.quant_min, self.quant_max = DTYPE_BOUNDS[dtype]
        self.weight_range = weight_range
        self.per_channel = scale is None
        self.frozen = not self.per_channel   # a weight quantizer is frozen only for an export (freeze_weight)
        self.enabled = True
        self.observer: nn.Module | None = None
        if not self.per_channel:
            self.register_buffer("scale", torch.tensor([scale], dtype=torch.float32))
            self.register_buffer("zero_point", torch.tensor([zero_point], dtype=torch.int32))

    @classmethod
    def for_weight(cls, weight_range: tuple[int, int]) -> FakeQuantizer:
        return cls(WEIGHT_DTYPE, weight_range=weight_range)

    def freeze_weight(self, weight: torch.Tensor) -> None:
        """Fix this weight's per-channel scales as buffers: an exporter that traces the model then sees constants,
        not the observer that computes them (whose running state is no graph op)."""
        scale, zero_point = weight_qparams(weight, *self.weight_range)
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero_point)
        self.frozen = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer(x)
        if not self.enabled:
            return x
        if self.per_channel:
            scale, zero_point = (self.scale, self.zero_point) if self.frozen else weight_qparams(x, *self.weight_range)
            return torch.fake_quantize_per_channel_affine(x, scale, zero_point, WEIGHT_AXIS, self.quant_min, self.quant_max)
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.quant_min, self.quant_max)

    def extra_repr(self) -> str:
        where = f"per_channel(axis=0, range={self.weight_range})" if self.per_channel else f"scale={self.scale.item():.6g}, zero_point={self.zero_point.item()}"
        return f"{self.dtype}, {where}, enabled={self.enabled}"
