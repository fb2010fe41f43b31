"""The one place that imports Intel Extension for PyTorch (archived; keep a successor backend swappable)."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """IPEX's C++ kernel registrations warn on stderr (file descriptor 2) while it loads ("Overriding a previously
    registered kernel ..."): noise to a user, since IPEX means to override them. An import error still raises."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# IPEX imports torch.utils.cpp_extension, which logs "No CUDA runtime is found" on a CPU-only machine.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
with warnings.catch_warnings(), _quiet_stderr():
    warnings.simplefilter("ignore")
    import intel_extension_for_pytorch as ipex  # noqa: F401  (registers the int8 kernels TorchScript needs)
    from intel_extension_for_pytorch.quantization import convert, prepare  # noqa: F401

# Noise that says nothing about a BERT-class encoder: there is no BatchNorm to fold, and the deprecations are
# internal to IPEX and transformers.
logging.getLogger("IPEX").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="JIT pass will be deprecated")
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")

__all__ = ["ipex", "prepare", "convert"]
