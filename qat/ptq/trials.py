"""Calibration trials on statistics collected once: the machinery the calibration search, `smoothquant.alpha=auto`
and `equalize.alpha=auto` share. Statistics before SmoothQuant are collected once per equalization alpha, and once
more per SmoothQuant alpha after migration; a trial only recomputes ranges from them, simulates the recipe and
scores it against fp32 on dev data."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import PreTrainedModel

from qat.base.errors import QatError
from qat.evaluation.metrics import GUARD, HELDOUT_EMD, FidelityFloor, Measure, Metrics
from qat.ptq.calibration import Statistics, apply_calibration, observe_unsmoothed, smooth
from qat.quant.config import AUTO, CalibConfig, EqualizeConfig, QuantConfig, Recipe, SmoothQuantConfig
from qat.quant.simulate import simulate
from qat.quant.stats import Batch

log = logging.getLogger(__name__)
AUTO_ALPHA_OBJECTIVE = HELDOUT_EMD   # held-out output distance to fp32
GUARD_OBJECTIVE = f"{GUARD}/emd"             # the same on the guard's texts from other domains
ALPHA_OBJECTIVES = (AUTO_ALPHA_OBJECTIVE, GUARD_OBJECTIVE)   # what an alpha=auto measure must score


class CalibrationTrials:
    """Statistics of `model` per alpha, collected on first use; `measure` scores a trial's fake-quant model."""

    def __init__(self, model: PreTrainedModel, calib_batches: list[Batch], base: CalibConfig, quant: QuantConfig,
                 smoothquant: SmoothQuantConfig, equalize: EqualizeConfig, measure: Measure) -> None:
        self.model, self.calib_batches, self.base, self.quant = model, calib_batches, base, quant
        self.smoothquant, self.equalize, self.measure = smoothquant, equalize, measure
        self.unsmoothed: dict[float | None, Statistics] = {}
        self.smoothed: dict[tuple[float | None, float | None], Statistics] = {}

    def statistics(self, alpha: float | None, equalize_alpha: float | None) -> Statistics:
        """Model, skeleton and statistics for this SmoothQuant alpha (None: off) and equalization alpha (None: off)."""
        if equalize_alpha not in self.unsmoothed:
            equalize = None if equalize_alpha is None else dataclasses.replace(self.equalize, alpha=equalize_alpha)
            self.unsmoothed[equalize_alpha] = observe_unsmoothed(self.model, self.calib_batches,
                                                                 self.base, equalize)
        if (alpha, equalize_alpha) not in self.smoothed:
            smoothquant = None if alpha is None else dataclasses.replace(self.smoothquant, alpha=alpha)
            self.smoothed[alpha, equalize_alpha] = smooth(self.unsmoothed[equalize_alpha], self.calib_batches,
                                                          self.base, self.quant, smoothquant)
        return self.smoothed[alpha, equalize_alpha]

    def metrics(self, calib: CalibConfig, alpha: float | None, equalize_alpha: float | None) -> Metrics:
        """Dev metrics of the fake-quant model calibrated with `calib` from these statistics."""
        calibration = apply_calibration(self.statistics(alpha, equalize_alpha), calib, self.quant)
        return self.measure(simulate(calibration.model, calibration.qconf).eval())

    def keep_only(self, equalize_alpha: float | None) -> None:
        """Let go of the statistics of every other equalization alpha (each holds a copy of the model)."""
        self.unsmoothed = {a: stats for a, stats in self.unsmoothed.items() if a == equalize_alpha}
        self.smoothed = {key: stats for key, stats in self.smoothed.items() if key[1] == equalize_alpha}

    @property
    def collections(self) -> int:
        """How many times statistics were collected (each a pass over the calibration batches)."""
        return len(self.unsmoothed) + sum(alpha is not None for alpha, _ in self.smoothed)


@dataclass
class AlphaChoice:
    """An alpha=auto choice: every candidate's distance to fp32 on the held-out texts and, when the data has a
    guard, on the guard's texts; and the alpha chosen (None: equalization left off). Each distance is divided by
    the best candidate's on that side, and the candidate whose larger ratio is smallest wins: an alpha that is
    closest on the held-out texts but far on every other domain (or the reverse) is not chosen."""

    objective: str                  # the distances read, comma-separated
    scores: dict[str, float]        # alpha (as written; 'off' for None) -> its larger ratio to the best (lowest wins)
    alpha: float | None
    distances: dict[str, dict[str, float]] = field(default_factory=dict)   # distance -> alpha -> value


@dataclass
class Observed:
    """The statistics a job calibrates from, and the SmoothQuant and equalization they were made with ('auto'
    resolved to the chosen alpha; equalization disabled where 'auto' chose to leave it off; SmoothQuant's
    `enabled='auto'` resolved, with the sentence that says why)."""

    statistics: Statistics
    smoothquant: SmoothQuantConfig
    equalize: EqualizeConfig
    smoothquant_choice: AlphaChoice | None
    equalize_choice: AlphaChoice | None
    smoothquant_auto: str = ""


def _ratio(distance: float, best: float) -> float:
    return distance / best if best > 0 else 1.0 if distance == 0 else float("inf")


def _choose(what: str, candidates: list[float | None], measure: Callable[[float | None], Metrics]) -> AlphaChoice:
    def written(alpha: float | None) -> str:
        return "off" if alpha is None else str(alpha)

    measured = {alpha: measure(alpha) for alpha in candidates}
    objectives = [name for name in ALPHA_OBJECTIVES if name in measured[candidates[0]]]
    distances = {name: {written(alpha): metrics[name] for alpha, metrics in measured.items()} for name in objectives}
    scores = {written(alpha): max(_ratio(distances[name][written(alpha)], min(distances[name].values()))
                                  for name in objectives) for alpha in candidates}
    best = min(candidates, key=lambda alpha: scores[written(alpha)])
    log.info("%s.alpha=auto: %s -> alpha %s", what, "; ".join(
        f"{name} {({a: round(v, 6) for a, v in values.items()})}" for name, values in distances.items()), written(best))
    return AlphaChoice(", ".join(objectives), scores, best, distances)


def as_made(config: SmoothQuantConfig | EqualizeConfig, choice: AlphaChoice | None
            ) -> SmoothQuantConfig | EqualizeConfig:
    """The configuration an 'auto' choice resolved to (equalization chosen 'off' is disabled)."""
    if choice is None:
        return config
    if choice.alpha is None:   # disabled, with the schema's alpha ('auto' needs the group on)
        return dataclasses.replace(config, enabled=False, alpha=type(config)().alpha)
    return dataclasses.replace(config, alpha=choice.alpha)


def smoothquant_where_needed(trials: CalibrationTrials, calib: CalibConfig, smoothquant: SmoothQuantConfig,
                             equalize_alpha: float | None, floor: FidelityFloor | None
                             ) -> tuple[SmoothQuantConfig, AlphaChoice | None, str]:
    """`smoothquant.enabled=auto`: SmoothQuant stays off where the PTQ model without it keeps the fidelity floor on
    the held-out texts and the guard (a model without activation outliers: it would only trade the guard's score
    distribution for cosine); past the floor, 'off' and every alpha candidate (or the one alpha given) are trials,
    and the closest to fp32 wins by AlphaChoice's rule. Returns the resolved config, the choice and why."""
    plain = trials.metrics(calib, None, equalize_alpha)
    floor = floor or FidelityFloor("cosine_mean", None)
    past = floor.past(plain)
    if not past:
        why = f"PTQ without it keeps the fidelity floor, {floor.describe(plain)}"
        log.info("SmoothQuant auto: off, %s", why)
        return dataclasses.replace(smoothquant, enabled=False, alpha=SmoothQuantConfig().alpha), None, why
    alphas = smoothquant.candidates if smoothquant.alpha == AUTO else [smoothquant.alpha]
    choice = _choose("smoothquant", [None, *alphas],
                     lambda alpha: plain if alpha is None else trials.metrics(calib, alpha, equalize_alpha))
    why = f"PTQ without it is past the fidelity floor on {' and '.join(past)}, {floor.describe(plain)}"
    log.info("SmoothQuant auto: %s; chose %s", why, "off" if choice.alpha is None else choice.alpha)
    return as_made(dataclasses.replace(smoothquant, enabled=True, alpha=AUTO), choice), choice, why


def observe_with_alphas(model: PreTrainedModel, calib_batches: list[Batch], recipe: Recipe,
                        measure: Measure | None = None, floor: FidelityFloor | None = None) -> Observed:
    """The statistics a PTQ model is calibrated from, with the alphas as configured or, for 'auto', the candidate
    whose PTQ model is closest to fp32 on the held-out texts and the guard (`measure` scores a model on them, never
    on a task set; see AlphaChoice): equalization first, judged on its own, then SmoothQuant's alpha on the
    equalized model; `smoothquant.enabled=auto` reads `floor` (see smoothquant_where_needed). The chosen
    statistics are the ones already collected for the trial; the others are let go."""
    calib, smoothquant, equalize = recipe.calib, recipe.smoothquant, recipe.equalize
    automatic = [name for name, group in (("smoothquant", smoothquant), ("equalize", equalize))
                 if group.enabled == AUTO or group.enabled and group.alpha == AUTO]
    if automatic and measure is None:
        raise QatError(f"{automatic[0]}=auto needs a measure of each candidate; expected a number for the alpha and "
                       f"{automatic[0]}.enabled true or false")
    trials = CalibrationTrials(model, calib_batches, calib, recipe.quant, smoothquant, equalize, measure)
    equalize_choice = smoothquant_choice = None
    if "equalize" in automatic:
        equalize_choice = _choose("equalize", equalize.candidates, lambda alpha: trials.metrics(calib, None, alpha))
    equalize = as_made(equalize, equalize_choice)
    equalize_alpha = equalize.alpha if equalize.enabled else None
    trials.keep_only(equalize_alpha)
    why = ""
    if smoothquant.enabled == AUTO:
        smoothquant, smoothquant_choice, why = smoothquant_where_needed(trials, calib, smoothquant, equalize_alpha,
                                                                        floor)
    elif "smoothquant" in automatic:
        smoothquant_choice = _choose("smoothquant", smoothquant.candidates,
                                     lambda alpha: trials.metrics(calib, alpha, equalize_alpha))
        smoothquant = as_made(smoothquant, smoothquant_choice)
    statistics = trials.statistics(smoothquant.alpha if smoothquant.enabled else None, equalize_alpha)
    return Observed(statistics, smoothquant, equalize, smoothquant_choice, equalize_choice, why)
