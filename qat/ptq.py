"""The PTQ model of a run: a given artifact, a resumed run's own, a restored foreign qconf, or qat's calibration
(with the sensitivity stage first when enabled, on the same statistics). Written once as the run's PTQ artifact."""
from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from transformers import PreTrainedModel

from qat.artifact import check_ptq_artifact, read_ptq_artifact, write_ptq_artifact
from qat.calibrate import apply_calibration, calibration_batches
from qat.config import RunConfig
from qat.quant.qconf import Qconf
from qat.restore import restore_qconf
from qat.sensitivity import analyse_sensitivity, write_outputs
from qat.session import Session
from qat.trainer import CHECKPOINT_DIR, resolve_resume
from qat.trials import AlphaChoice, observe_for_run

log = logging.getLogger(__name__)
ARTIFACT_DIR = "ptq"


@dataclass
class PtqModel:
    model: PreTrainedModel      # the fp32 weights the qconf goes with (migrated or bias-corrected if so calibrated)
    qconf: Qconf
    source: str                 # 'calibration', or the foreign qconf it was restored from
    skip: list[str]             # what the recipe leaves fp32
    metadata: dict[str, Any]    # what the artifact's metadata.json records

    def choice(self, group: str) -> AlphaChoice | None:
        """How `<group>.alpha=auto` chose ('smoothquant' or 'equalize'; recorded in the artifact, so a resumed run
        reports it, not redoes it)."""
        section = self.metadata.get(group)
        choice = section.get("choice") if isinstance(section, dict) else None
        return AlphaChoice(**choice) if choice else None

    @property
    def unsmoothed(self) -> list[str]:
        """The int8 Linears SmoothQuant could not reach (recorded in the artifact)."""
        smoothquant = self.metadata.get("smoothquant")
        return list(smoothquant.get("unsmoothed", [])) if isinstance(smoothquant, dict) else []


def calibration_data(cfg: RunConfig, origins: list[str] | None) -> dict[str, Any]:
    """What the calibration texts were: one source, or a mix with the texts each source gave."""
    if origins is None:
        return {"source": asdict(cfg.data.calibration), "texts": cfg.calib.samples}
    used = Counter(origins[:cfg.calib.samples])
    return {"mix": {name: {"proportion": part.proportion, "source": asdict(part.source), "texts": used[name]}
                    for name, part in cfg.data.mix.items()}, "texts": cfg.calib.samples}


def _calibrated(cfg: RunConfig, session: Session, run_dir: Path) -> PtqModel:
    calib_batches = calibration_batches(session.encoder, session.calibration, cfg.calib)
    log.info("calibrating %s on %d texts in %d batches (%s)", session.encoder.source, cfg.calib.samples,
             len(calib_batches), cfg.calib.algorithm)
    observed = observe_for_run(session, calib_batches, cfg.calib, cfg.quant, cfg.smoothquant, cfg.equalize)
    quant = cfg.quant
    if cfg.sensitivity.enabled:
        result = analyse_sensitivity(session, observed.statistics, cfg.calib, quant, cfg.sensitivity, cfg.recovery)
        write_outputs(result, quant, run_dir / "sensitivity")
        log.info("sensitivity: %d more op(s) stay fp32: %s", len(result.skip), result.skip)
        quant = dataclasses.replace(quant, skip=list(dict.fromkeys(quant.skip + result.skip)))
    calibration = apply_calibration(observed.statistics, cfg.calib, quant)
    metadata = {"recipe": asdict(quant), "calibration": asdict(cfg.calib),
                "smoothquant": {**asdict(observed.smoothquant), "choice": _asdict(observed.smoothquant_choice),
                                "unsmoothed": observed.statistics.unsmoothed},
                "equalize": {**asdict(observed.equalize), "choice": _asdict(observed.equalize_choice),
                             "factors": _asdict(observed.statistics.equalization)},
                "calibration_data": calibration_data(cfg, session.origins)}
    return PtqModel(calibration.model, calibration.qconf, "calibration", quant.skip, metadata)


def _asdict(record: Any) -> dict[str, Any] | None:
    return asdict(record) if record is not None else None


def _restored(cfg: RunConfig, session: Session, qconf_path: str) -> PtqModel:
    qconf = restore_qconf(session.encoder, Qconf.read(qconf_path), session.calibration, cfg.quant)
    metadata = {"restored_from": qconf_path, "recipe": "as in the restored qconf"}
    return PtqModel(session.encoder.model, qconf, qconf_path, cfg.quant.skip, metadata)


def _read(path: Path, cfg: RunConfig) -> PtqModel:
    artifact = read_ptq_artifact(path)
    recipe = artifact.metadata.get("recipe")
    skip = recipe["skip"] if isinstance(recipe, dict) else cfg.quant.skip
    return PtqModel(artifact.encoder.model, artifact.qconf, artifact.metadata.get("restored_from", "calibration"),
                    skip, artifact.metadata)


def given_artifact(cfg: RunConfig, run_dir: Path) -> Path | None:
    """The PTQ artifact the run starts from instead of making one: ptq.artifact, or a resumed run's own."""
    if cfg.ptq.artifact:
        return Path(cfg.ptq.artifact)
    path = run_dir / ARTIFACT_DIR
    return path if path.exists() and cfg.train.resume is not None else None


def check_given_paths(cfg: RunConfig, run_dir: Path) -> None:
    """What the run is given to start from exists and has the right shape (before any model is loaded): a PTQ
    artifact, a foreign qconf, a checkpoint to resume."""
    resolve_resume(cfg.train.resume, run_dir / CHECKPOINT_DIR)
    if cfg.ptq.artifact:
        check_ptq_artifact(Path(cfg.ptq.artifact))
    if cfg.ptq.qconf:
        Qconf.read(cfg.ptq.qconf)


def prepare_ptq(cfg: RunConfig, session: Session, run_dir: Path, accelerator: Accelerator) -> PtqModel:
    """The run's PTQ model. The main process makes and writes it; the others read what it wrote."""
    given = given_artifact(cfg, run_dir)
    if given is not None:
        log.info("starting from the PTQ artifact %s", given)
        return _read(given, cfg)
    path = run_dir / ARTIFACT_DIR
    ptq = None
    if accelerator.is_main_process:
        ptq = _restored(cfg, session, cfg.ptq.qconf) if cfg.ptq.qconf else _calibrated(cfg, session, run_dir)
        write_ptq_artifact(path, dataclasses.replace(session.encoder, model=ptq.model), ptq.qconf, ptq.metadata)
    accelerator.wait_for_everyone()
    return ptq if ptq is not None else _read(path, cfg)
