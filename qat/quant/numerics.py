"""Integer bounds and weight quantization parameters: the only place that defines them."""
from __future__ import annotations

import torch
from torch.ao.quantization.observer import PerChannelMinMaxObserver

from qat.base.errors import QatError
from qat.base.timing import cpu_flags

DTYPE_BOUNDS: dict[torch.dtype, tuple[int, int]] = {
    torch.quint8: (0, 255),
    torch.qint8: (-128, 127),
}
QUANTIZED_DTYPES = frozenset(DTYPE_BOUNDS)
DTYPE_NAMES: dict[str, torch.dtype] = {str(d): d for d in (torch.quint8, torch.qint8, torch.float32)}
WEIGHT_DTYPE = torch.qint8
WEIGHT_AXIS = 0
# Weight ranges by bit width. 7-bit weights keep u8 x s8 products of AVX2's vpmaddubsw (int16, saturating)
# in range: 255 * 64 * 2 = 32640 <= 32767. IPEX still stores them as qint8.
WEIGHT_RANGES: dict[int, tuple[int, int]] = {8: (-128, 127), 7: (-64, 63)}
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_has_vnni() -> bool:
    """True if this CPU multiplies u8 x s8 without int16 saturation (VNNI or AMX)."""
    return bool(cpu_flags() & set(VNNI_FLAGS))


def cpu_has_native_bf16() -> bool:
    """True if this CPU computes bf16 in hardware (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slower."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve_weight_bits(setting: str) -> int:
    """'auto' -> 8 on CPUs with VNNI, 7 elsewhere; '8' or '7' as given."""
    return (8 if cpu_has_vnni() else 7) if setting == "auto" else int(setting)


def parse_dtype(name: str) -> torch.dtype:
    """'torch.quint8' (as written in an IPEX qconf) -> torch.quint8."""
    if name not in DTYPE_NAMES:
        raise QatError(f"qconf dtype {name!r} is not supported; expected one of {sorted(DTYPE_NAMES)}")
    return DTYPE_NAMES[name]


def weight_qparams(weight: torch.Tensor, quant_min: int = -128, quant_max: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric scale and zero point, exactly as IPEX's weight observer computes them:
    scale = max|w| / ((quant_max - quant_min) / 2)."""
    observer = PerChannelMinMaxObserver(
        ch_axis=WEIGHT_AXIS, dtype=WEIGHT_DTYPE, qscheme=torch.per_channel_symmetric,
        quant_min=quant_min, quant_max=quant_max,
    )
    observer(weight.detach().float())
    scale, zero_point = observer.calculate_qparams()
    return scale, zero_point.to(torch.int32)
