"""PTQ calibration: qat's site map of the model (`qat.quant.sites`, the ops any runtime's int8 graph can hold),
activation statistics collected once, then a range algorithm, the recipe, weight scales and optional bias
correction."""
from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from qat.data import Text
from qat.base.errors import QatError
from qat.load import Encoder, batches
from qat.quant.numerics import WEIGHT_RANGES, resolve_weight_bits, weight_qparams
from qat.base.progress import progress
from qat.quant.config import AUTO, CalibConfig, EqualizeConfig, QuantConfig, SmoothQuantConfig
from qat.quant.equalize import Equalization, equalize
from qat.quant.observe import collect_statistics
from qat.quant.qconf import Qconf
from qat.quant.quantizer import FakeQuantizer
from qat.quant.sites import find_sites
from qat.quant.ranges import activation_qparams, activation_range
from qat.quant.smoothquant import migrate, smoothed_buffers
from qat.quant.stats import Batch, TensorStats
from qat.quant.wrapper import WRAPPER_PREFIX

log = logging.getLogger(__name__)


@dataclass
class Statistics:
    """What calibration observed, once: the model it observed (migrated if SmoothQuant is on), its site
    map (the qconf skeleton), and the activation statistics of every tensor any recipe could put in int8."""

    model: PreTrainedModel
    skeleton: Qconf
    stats: dict[int, TensorStats]
    equalization: Equalization | None = None
    unsmoothed: list[str] = field(default_factory=list)   # int8 Linears SmoothQuant could not reach


@dataclass
class Calibration:
    """A calibrated qconf and the fp32 weights it goes with (the original model, or a copy with corrected biases)."""

    qconf: Qconf
    model: PreTrainedModel


def calibration_batches(encoder: Encoder, texts: list[Text], calib: CalibConfig) -> list[Batch]:
    if len(texts) < calib.samples:
        raise QatError(f"calib.samples={calib.samples} but the calibration set has only {len(texts)} texts; "
                       "expected at most that many samples")
    return list(batches(encoder, texts[:calib.samples], calib.batch_size))


def calibrate(encoder: Encoder, texts: list[Text], calib: CalibConfig, quant: QuantConfig,
              smoothquant: SmoothQuantConfig | None = None, equalization: EqualizeConfig | None = None) -> Calibration:
    """Observe activations on `calib.samples` texts (after SmoothQuant migration, if enabled) and return the qconf
    with the recipe's int8 ops set, and the fp32 weights it goes with."""
    calib_batches = calibration_batches(encoder, texts, calib)
    log.info("calibrating %s on %d texts in %d batches (%s)", encoder.source, calib.samples, len(calib_batches),
             calib.algorithm)
    return apply_calibration(observe(encoder.model, calib_batches, calib, quant, smoothquant, equalization), calib,
                             quant)


def _track(calib_batches: list[Batch], what: str) -> Iterable[Batch]:
    return progress(calib_batches, desc=f"calibration {what}")


def observe(model: PreTrainedModel, calib_batches: list[Batch], calib: CalibConfig, quant: QuantConfig,
            smoothquant: SmoothQuantConfig | None, equalization: EqualizeConfig | None = None) -> Statistics:
    """The model to calibrate (equalized inside attention, then migrated by SmoothQuant, where enabled), its site
    map and its activation statistics."""
    return smooth(observe_unsmoothed(model, calib_batches, calib, equalization), calib_batches, calib, quant, smoothquant)


def observe_unsmoothed(model: PreTrainedModel, calib_batches: list[Batch], calib: CalibConfig,
                       equalization: EqualizeConfig | None) -> Statistics:
    """Statistics before SmoothQuant (of the equalized model, where enabled): what every SmoothQuant alpha migrates
    from."""
    record = None
    if equalization is not None and equalization.enabled:
        model, record = equalize(model, calib_batches, equalization)
        log.info("equalized %s pairs of %d attention blocks (alpha %.2f)", "/".join(equalization.pairs),
                 len(record.qk or record.vo), equalization.alpha)
    skeleton = find_sites(model, calib_batches[0])
    return Statistics(model, skeleton, collect_statistics(model, skeleton, calib_batches, calib.bins, _track), record)


def smooth(observed: Statistics, calib_batches: list[Batch], calib: CalibConfig, quant: QuantConfig,
           smoothquant: SmoothQuantConfig | None) -> Statistics:
    """SmoothQuant migration of the observed model (unchanged if off). Migration changes the model's ops (one fp32
    mul per smoothed module), so skeleton and statistics are redone."""
    if smoothquant is None or not smoothquant.enabled:
        return observed
    if smoothquant.alpha == AUTO:
        raise QatError("smoothquant.alpha=auto reached calibration unresolved; expected the job to choose an alpha first")
    migration = migrate(observed.model, observed.skeleton, observed.stats, calib.batches, quant, smoothquant,
                        calib_batches[0])
    model = migration.model
    skeleton = find_sites(model, calib_batches[0])
    stats = collect_statistics(model, skeleton, calib_batches, calib.bins, _track)
    log.info("SmoothQuant alpha %.2f: %d modules smoothed", smoothquant.alpha, len(smoothed_buffers(model)))
    if migration.unsmoothed:
        log.warning("SmoothQuant left %d Linears unsmoothed (no module input of their own for the multiply): %s",
                    len(migration.unsmoothed), migration.unsmoothed)
    return Statistics(model, skeleton, stats, observed.equalization, migration.unsmoothed)


def apply_calibration(observed: Statistics, calib: CalibConfig, quant: QuantConfig) -> Calibration:
    """The calibrated qconf from statistics already collected (a search trial, the sensitivity stage and the PTQ
    model of one run all reuse them)."""
    model, stats = observed.model, observed.stats
    if calib.batches > min(len(s.batch_min) for s in stats.values()):
        raise QatError(f"calib.samples={calib.samples} needs {calib.batches} batches but only "
                       f"{len(next(iter(stats.values())).batch_min)} were observed; expected at most that many")
    qconf = observed.skeleton.copy()
    symmetric = symmetric_tensors(qconf, stats, calib)
    qconf.set_activation_qparams({
        tensor_id: activation_qparams(*activation_range(s, calib.batches, calib.algorithm, calib.percentile,
                                                        calib.averaging_constant, tensor_id in symmetric),
                                      tensor_id in symmetric)
        for tensor_id, s in stats.items()})
    qconf = qconf.with_recipe(quant)
    if quant.scale_min is not None or quant.scale_max is not None:
        log.info("clamped %d activation scales into [%s, %s]", qconf.clamp_activation_scales(quant.scale_min, quant.scale_max),
                 quant.scale_min, quant.scale_max)
    qconf.set_weight_range(*WEIGHT_RANGES[resolve_weight_bits(quant.weight_bits)])
    if calib.bias_correction:
        model = corrected_biases(model, qconf, stats, calib.batches)
    set_weight_qparams(qconf, model, quant.weight_bits)
    return Calibration(qconf, model)


def symmetric_tensors(skeleton: Qconf, stats: dict[int, TensorStats], calib: CalibConfig) -> set[int]:
    """The tensors calibrated with a symmetric range: all with calib.symmetric; with calib.symmetric_matmul, the
    attention matmuls' inputs that take negative values (the softmax output keeps its affine range from 0)."""
    if calib.symmetric:
        return set(stats)
    if not calib.symmetric_matmul:
        return set()
    matmul_inputs = {tensor["id"] for op in skeleton.ops if op.kind == "matmul"
                     for tensor in op.info["input_tensor_infos"] if tensor}
    return {tensor_id for tensor_id in matmul_inputs & set(stats) if stats[tensor_id].min_max(calib.batches)[0] < 0}


@torch.no_grad()
def corrected_biases(model: PreTrainedModel, qconf: Qconf, stats: dict[int, TensorStats], batches: int) -> PreTrainedModel:
    """A copy whose int8 Linears' biases absorb the mean output shift of weight quantization, (W - Q(W)) E[x]
    (Nagel et al., 2019, empirical bias correction with the calibration inputs' channel means)."""
    model = copy.deepcopy(model)
    for op in qconf.ops:
        if op.kind != "linear" or not op.quantized:
            continue
        linear = model.get_submodule(op.name)
        mean = stats[op.info["input_tensor_infos"][0]["id"]].channel_mean(batches).float()
        shift = (linear.weight - FakeQuantizer.for_weight(op.weight_range)(linear.weight)) @ mean
        if linear.bias is None:
            linear.bias = torch.nn.Parameter(torch.zeros_like(shift))
        linear.bias += shift
    return model


def set_weight_qparams(qconf: Qconf, model: PreTrainedModel, weight_bits: str) -> None:
    """Per-channel weight scales for the weight range this CPU needs (see numerics.WEIGHT_RANGES)."""
    weight_range = WEIGHT_RANGES[resolve_weight_bits(weight_bits)]
    qconf.set_weight_range(*weight_range)
    qconf.set_weight_scales({f"{WRAPPER_PREFIX}{name}": weight_qparams(m.weight, *weight_range)
                             for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
