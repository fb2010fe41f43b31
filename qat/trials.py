"""Calibration trials on statistics collected once: the machinery the calibration search and
`smoothquant.alpha=auto` share. Statistics before SmoothQuant are collected once per equalization alpha, and once
more per SmoothQuant alpha after migration; a trial only recomputes ranges from them, simulates the recipe and
scores it against fp32 on dev data."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from qat.calibrate import Statistics, apply_calibration, observe_unsmoothed, smooth
from qat.evaluate import EvalData, Metrics, best_of
from qat.quant.config import AUTO, CalibConfig, EqualizeConfig, QuantConfig, SmoothQuantConfig
from qat.quant.simulate import simulate
from qat.quant.stats import Batch
from qat.session import Session

log = logging.getLogger(__name__)
AUTO_ALPHA_OBJECTIVE = "emd_heldout_pairs"   # held-out output distance to fp32


class CalibrationTrials:
    def __init__(self, session: Session, calib_batches: list[Batch], base: CalibConfig, quant: QuantConfig,
                 smoothquant: SmoothQuantConfig, equalize: EqualizeConfig, dev: EvalData | None = None) -> None:
        self.session, self.calib_batches, self.base, self.quant = session, calib_batches, base, quant
        self.smoothquant, self.equalize, self.dev = smoothquant, equalize, dev
        self.unsmoothed: dict[float | None, Statistics] = {}
        self.smoothed: dict[tuple[float | None, float | None], Statistics] = {}

    def statistics(self, alpha: float | None, equalize_alpha: float | None) -> Statistics:
        """Model, skeleton and statistics for this SmoothQuant alpha (None: off) and equalization alpha (None: off)."""
        if equalize_alpha not in self.unsmoothed:
            equalize = None if equalize_alpha is None else dataclasses.replace(self.equalize, alpha=equalize_alpha)
            self.unsmoothed[equalize_alpha] = observe_unsmoothed(self.session.encoder.model, self.calib_batches,
                                                                 self.base, equalize)
        if (alpha, equalize_alpha) not in self.smoothed:
            smoothquant = None if alpha is None else dataclasses.replace(self.smoothquant, alpha=alpha)
            self.smoothed[alpha, equalize_alpha] = smooth(self.unsmoothed[equalize_alpha], self.calib_batches,
                                                          self.base, self.quant, smoothquant)
        return self.smoothed[alpha, equalize_alpha]

    def metrics(self, calib: CalibConfig, alpha: float | None, equalize_alpha: float | None) -> Metrics:
        """Dev metrics of the fake-quant model calibrated with `calib` from these statistics."""
        calibration = apply_calibration(self.statistics(alpha, equalize_alpha), calib, self.quant)
        return self.session.evaluate_dev(simulate(calibration.model, calibration.qconf).eval(), self.dev)

    @property
    def collections(self) -> int:
        """How many times statistics were collected (each a pass over the calibration batches)."""
        return len(self.unsmoothed) + sum(alpha is not None for alpha, _ in self.smoothed)


@dataclass
class AlphaChoice:
    """smoothquant.alpha=auto: every candidate's held-out distance to fp32 and the alpha chosen."""

    objective: str
    scores: dict[str, float]    # alpha (as written) -> objective
    alpha: float


def observe_for_run(session: Session, calib_batches: list[Batch], calib: CalibConfig, quant: QuantConfig,
                    smoothquant: SmoothQuantConfig, equalize: EqualizeConfig
                    ) -> tuple[Statistics, SmoothQuantConfig, AlphaChoice | None]:
    """The statistics a job calibrates from, with SmoothQuant's alpha as configured or, for 'auto', the candidate
    whose PTQ model is closest to fp32 on the held-out texts (never a task set); the chosen statistics are the
    ones already collected for the trial."""
    equalize_alpha = equalize.alpha if equalize.enabled else None
    trials = CalibrationTrials(session, calib_batches, calib, quant, smoothquant, equalize,
                               session.dev.for_metrics([AUTO_ALPHA_OBJECTIVE]))
    if not (smoothquant.enabled and smoothquant.alpha == AUTO):
        alpha = smoothquant.alpha if smoothquant.enabled else None
        return trials.statistics(alpha, equalize_alpha), smoothquant, None
    scores = {alpha: trials.metrics(calib, alpha, equalize_alpha)[AUTO_ALPHA_OBJECTIVE] for alpha in smoothquant.candidates}
    best = best_of(scores, AUTO_ALPHA_OBJECTIVE)
    log.info("smoothquant.alpha=auto: %s on held-out texts %s -> alpha %s", AUTO_ALPHA_OBJECTIVE,
             {a: round(v, 6) for a, v in scores.items()}, best)
    choice = AlphaChoice(AUTO_ALPHA_OBJECTIVE, {str(a): v for a, v in scores.items()}, best)
    return trials.statistics(best, equalize_alpha), dataclasses.replace(smoothquant, alpha=best), choice
