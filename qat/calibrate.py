"""PTQ calibration through IPEX's own prepare/observers, so the qconf is exactly what IPEX will convert."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from torch.ao.quantization import HistogramObserver, MinMaxObserver, PerChannelMinMaxObserver, QConfig, QConfigMapping

from qat.config import CalibConfig, QuantConfig
from qat.errors import QatError
from qat.ipex_backend import prepare
from qat.load import Encoder, EncoderModule, batches
from qat.numerics import WEIGHT_RANGES, resolve_weight_bits, weight_qparams
from qat.quant.qconf import WRAPPER_PREFIX, Qconf

log = logging.getLogger(__name__)


def qconfig_mapping(calib: CalibConfig) -> QConfigMapping:
    """IPEX's static recipe: quint8 per-tensor affine activations, qint8 per-channel symmetric weights."""
    if calib.algorithm == "histogram":
        activation = HistogramObserver.with_args(bins=calib.bins, reduce_range=False)
    else:
        activation = MinMaxObserver.with_args(reduce_range=False)
    weight = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    return QConfigMapping().set_global(QConfig(activation=activation, weight=weight))


def calibrate(encoder: Encoder, texts: list[str], calib: CalibConfig, quant: QuantConfig) -> Qconf:
    """Observe activations on `calib.samples` texts and return the qconf with the recipe's int8 ops set."""
    if len(texts) < calib.samples:
        raise QatError(f"calib.samples={calib.samples} but the calibration set has only {len(texts)} texts; "
                       "expected at most that many samples")
    calib_batches = list(batches(encoder, texts[:calib.samples], calib.batch_size))
    log.info("calibrating %s on %d texts in %d batches (%s observer)", encoder.source, calib.samples,
             len(calib_batches), calib.algorithm)
    prepared = prepare(EncoderModule(encoder.model).eval(), qconfig_mapping(calib),
                       example_inputs=calib_batches[0], inplace=False)
    with torch.no_grad():
        for batch in calib_batches:
            prepared(*batch)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qconf.json"
        prepared.save_qconf_summary(qconf_summary=str(path))
        qconf = Qconf.read(path)
    qconf.source = "calibration"
    qconf.apply_recipe(quant)
    if quant.scale_min is not None or quant.scale_max is not None:
        log.info("clamped %d activation scales into [%s, %s]", qconf.clamp_activation_scales(quant.scale_min, quant.scale_max),
                 quant.scale_min, quant.scale_max)
    set_weight_qparams(qconf, encoder, quant.weight_bits)
    return qconf


def set_weight_qparams(qconf: Qconf, encoder: Encoder, weight_bits: str) -> None:
    """Per-channel weight scales for the weight range this CPU needs (see numerics.WEIGHT_RANGES)."""
    weight_range = WEIGHT_RANGES[resolve_weight_bits(weight_bits)]
    qconf.set_weight_range(*weight_range)
    qconf.set_weight_scales({f"{WRAPPER_PREFIX}{name}": weight_qparams(m.weight, *weight_range)
                             for name, m in encoder.model.named_modules() if isinstance(m, torch.nn.Linear)})
