"""The one place that imports Intel Extension for PyTorch (archived; keep a successor backend swappable)."""
from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import intel_extension_for_pytorch as ipex  # noqa: F401  (registers the int8 kernels TorchScript needs)
    from intel_extension_for_pytorch.quantization import convert, prepare  # noqa: F401

__all__ = ["ipex", "prepare", "convert"]
