"""The quant core: recipe and calibration schemas, fake quantizers, QuantLinear, the simulation of a qconf,
statistics and range algorithms, SmoothQuant and equalization, integer numerics. It knows nothing of jobs."""
from __future__ import annotations

from typing import Any

from qat.quant.config import AUTO, OP_KINDS, CalibConfig, EqualizeConfig, QuantConfig, Recipe, SmoothQuantConfig

__all__ = ["AUTO", "OP_KINDS", "CalibConfig", "EqualizeConfig", "FakeQuantModel", "Qconf", "QuantConfig", "Recipe",
           "SmoothQuantConfig", "simulate"]
_LAZY = {"FakeQuantModel": "qat.quant.simulate", "simulate": "qat.quant.simulate", "Qconf": "qat.quant.qconf"}


def __getattr__(name: str) -> Any:
    """The simulation imports the runtime's op sets: only when asked for, so that reading a config stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qat.quant' has no attribute {name!r}")
