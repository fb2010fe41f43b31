"""The one place that imports Intel Extension for PyTorch (archived; keep a successor backend swappable)."""
from __future__ import annotations

import logging
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import intel_extension_for_pytorch as ipex  # noqa: F401  (registers the int8 kernels TorchScript needs)
    from intel_extension_for_pytorch.quantization import convert, prepare  # noqa: F401
    from intel_extension_for_pytorch.quantization._quantization_state_utils import (
        functions_supported_by_quantization,
        functions_supported_by_quantization_ipex,
    )

# The functional ops IPEX's prepare tracks (and may quantize) inside a module's forward: the simulation
# intercepts exactly these, in the order IPEX records them.
QUANTIZABLE_FUNCTIONS = functions_supported_by_quantization | functions_supported_by_quantization_ipex

# Noise that says nothing about a BERT-class encoder: there is no BatchNorm to fold, and the deprecations are
# internal to IPEX and transformers.
logging.getLogger("IPEX").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="JIT pass will be deprecated")
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")

__all__ = ["ipex", "prepare", "convert", "QUANTIZABLE_FUNCTIONS"]
