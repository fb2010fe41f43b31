"""Restore a PTQ model made elsewhere: an IPEX qconf (from INC's IPEX path or `save_qconf_summary`) + fp32 model.

The foreign qconf's scales, zero points and dtypes are carried onto qat's own site map of the same model
(`qat.quant.sites`), op by op; anything that does not line up is an error, never a guess.
"""
from __future__ import annotations

from qat.ptq.calibration import set_weight_qparams
from qat.data import Text
from qat.load import DROPPED_MODULES, Encoder, batches
from qat.quant.config import QuantConfig
from qat.quant.qconf import Qconf
from qat.quant.sites import find_sites
from qat.quant.transplant import transplant


def restore_qconf(encoder: Encoder, foreign: Qconf, texts: list[Text], quant: QuantConfig) -> Qconf:
    """The foreign qconf on qat's site map, keeping its recipe; weights use this CPU's weight range."""
    restored = transplant(foreign, find_sites(encoder.model, next(batches(encoder, texts[:8], 8))), DROPPED_MODULES)
    set_weight_qparams(restored, encoder.model, quant.weight_bits)
    return restored
