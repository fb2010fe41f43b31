"""qat: quantization-aware training for transformer encoders, exported to OpenVINO, ONNX Runtime and IPEX int8."""
from __future__ import annotations

from typing import Any

__all__ = ["Int8Encoder", "load_int8"]


def __getattr__(name: str) -> Any:
    """`from qat import load_int8` without importing torch and IPEX for every `python -m qat.<job>`."""
    if name in __all__:
        from qat.exporters import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'qat' has no attribute {name!r}")
