"""The PTQ model: qat's calibration (with the sensitivity analysis first when asked, on the same statistics), a
foreign qconf restored onto qat's skeleton, or an artifact read back. Each returns a PtqModel; the job writes it."""
from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel

from qat.config import MixPart, RecoveryConfig, SensitivityConfig, SourceConfig
from qat.data import Text
from qat.evaluation.metrics import FidelityFloor, Measure, Metrics
from qat.load import Encoder, batches
from qat.ptq.artifact import (
    CalibrationData,
    EqualizeRecord,
    MixShare,
    PtqMetadata,
    SmoothQuantRecord,
    read_ptq_artifact,
)
from qat.ptq.calibration import apply_calibration, calibration_batches
from qat.ptq.restore import restore_qconf
from qat.ptq.sensitivity import SensitivityResult, analyse_sensitivity
from qat.ptq.trials import observe_with_alphas
from qat.quant.config import QuantConfig, Recipe
from qat.quant.qconf import Qconf
from qat.quant.sites import find_sites

log = logging.getLogger(__name__)


@dataclass
class PtqModel:
    model: PreTrainedModel      # the fp32 weights the qconf goes with (migrated or bias-corrected if so calibrated)
    qconf: Qconf
    metadata: PtqMetadata       # what the artifact records
    sensitivity: SensitivityResult | None = None   # the analysis that chose part of the skip list, if it ran

    @property
    def skip(self) -> list[str]:
        """What the recipe leaves fp32 (for a restored qconf: what its own recipe leaves, not listed)."""
        return list(self.metadata.recipe.skip) if self.metadata.recipe else []


@dataclass
class SensitivityRequest:
    """Run the sensitivity analysis before calibrating: `measure` scores a model on dev data holding both metrics,
    `fp32` is the fp32 model's score there."""

    config: SensitivityConfig
    recovery: RecoveryConfig
    measure: Measure
    fp32: Metrics


def calibration_data(texts: int, source: SourceConfig, mix: dict[str, MixPart],
                     origins: list[str] | None) -> CalibrationData:
    """What the calibration texts were: one source, or a mix with the texts each source gave."""
    if origins is None:
        return CalibrationData(texts, source=source)
    used = Counter(origins[:texts])
    return CalibrationData(texts, mix={name: MixShare(part.proportion, part.source, used[name])
                                       for name, part in mix.items()})


def calibrate(encoder: Encoder, texts: list[Text], recipe: Recipe, measure: Measure | None = None,
              sensitivity: SensitivityRequest | None = None, data: CalibrationData | None = None,
              floor: FidelityFloor | None = None) -> PtqModel:
    """qat's PTQ: statistics of the recipe's sites on `calib.samples` texts (after equalization and SmoothQuant,
    with 'auto' alphas chosen by `measure` on held-out and guard texts, and `smoothquant.enabled=auto` reading
    `floor`), optionally the sensitivity analysis on the same statistics, then the ranges, the recipe and the
    weight scales."""
    calib_batches = calibration_batches(encoder, texts, recipe.calib)
    log.info("calibrating %s on %d texts in %d batches (%s)", encoder.source, recipe.calib.samples,
             len(calib_batches), recipe.calib.algorithm)
    observed = observe_with_alphas(encoder.model, calib_batches, recipe, measure, floor)
    quant, analysis = recipe.quant, None
    if sensitivity is not None:
        analysis = analyse_sensitivity(observed.statistics, recipe.calib, quant, sensitivity.config,
                                       sensitivity.recovery, sensitivity.measure, sensitivity.fp32)
        log.info("sensitivity: %d more op(s) stay fp32: %s", len(analysis.skip), analysis.skip)
        quant = dataclasses.replace(quant, skip=list(dict.fromkeys(quant.skip + analysis.skip)))
    calibration = apply_calibration(observed.statistics, recipe.calib, quant)
    metadata = PtqMetadata(
        encoder.source, encoder.pooling, encoder.max_length, recipe=quant, calibration=recipe.calib,
        smoothquant=SmoothQuantRecord(**vars(observed.smoothquant), choice=observed.smoothquant_choice,
                                      unsmoothed=observed.statistics.unsmoothed, auto=observed.smoothquant_auto),
        equalize=EqualizeRecord(**vars(observed.equalize), choice=observed.equalize_choice,
                                factors=observed.statistics.equalization),
        calibration_data=data)
    return PtqModel(calibration.model, calibration.qconf, metadata, analysis)


def check_recipe(encoder: Encoder, texts: list[Text], quant: QuantConfig) -> None:
    """A recipe whose skip list names modules the model lacks is an error before any calibration batch runs."""
    find_sites(encoder.model, next(batches(encoder, texts[:2], 2))).with_recipe(quant)


def restore(encoder: Encoder, qconf_path: str, texts: list[Text], quant: QuantConfig) -> PtqModel:
    """A foreign qconf (INC's qconfig.json, IPEX's save_qconf_summary) carried onto qat's site map of `encoder`."""
    qconf = restore_qconf(encoder, Qconf.read(qconf_path), texts, quant)
    metadata = PtqMetadata(encoder.source, encoder.pooling, encoder.max_length, restored_from=qconf_path)
    return PtqModel(encoder.model, qconf, metadata)


def read(path: Path) -> PtqModel:
    """A PTQ artifact written by qat."""
    artifact = read_ptq_artifact(path)
    return PtqModel(artifact.encoder.model, artifact.qconf, artifact.metadata)
