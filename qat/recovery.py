"""The recovery stage: decide whether PTQ needs training, build the teacher, train the fake-quant student."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedModel

from qat.config import RecoveryConfig, RunConfig
from qat.errors import QatError
from qat.evaluate import Metrics, relative_loss
from qat.quant.config import QuantConfig
from qat.quant.qconf import Qconf
from qat.quant.simulate import FakeQuantModel, simulate
from qat.run_folder import FREE_ON_RESUME, flat_settings
from qat.session import Session
from qat.trainer import CHECKPOINT_DIR, Trainer, TrainState, resolve_resume

log = logging.getLogger(__name__)


@dataclass
class RecoveryDecision:
    """PTQ's loss on the dev metric against fp32, and whether the run trains."""

    metric: str
    fp32: float
    ptq: float
    ptq_loss: float
    threshold: float
    force: bool
    train: bool


@dataclass
class TrainingSummary(TrainState):
    """Where training ended (the trainer's state) and what it cost."""

    seconds_per_step: float = 0.0
    teacher: str = ""
    processes: int = 1


def decide_recovery(recovery: RecoveryConfig, train_enabled: bool, fp32: Metrics, ptq: Metrics) -> RecoveryDecision:
    """Train only if PTQ loses more than recovery.threshold on the dev metric (or if forced)."""
    metric = recovery.metric
    loss = relative_loss(metric, fp32[metric], ptq[metric])
    decision = RecoveryDecision(metric, fp32[metric], ptq[metric], loss, recovery.threshold, recovery.force,
                                train_enabled and (recovery.force or loss > recovery.threshold))
    log.info("PTQ loss on dev %s: %.4f (threshold %.4f): %s", metric, loss, recovery.threshold,
             "training" if decision.train else "no training needed" if train_enabled else "training disabled")
    return decision


def student_settings(cfg: RunConfig, ptq_model: PreTrainedModel, qconf: Qconf) -> dict[str, Any]:
    """Everything that shapes the trained student, as a checkpoint records it: every setting of the run (model,
    data, calibration, recipe, SmoothQuant, teacher, training, seed; not threads, evaluation or export) and the PTQ
    model's content (its qconf and weights), so that a checkpoint never continues under another setting."""
    content = hashlib.sha256(json.dumps(qconf.data, sort_keys=True).encode())
    for name, tensor in sorted(ptq_model.state_dict().items()):
        content.update(name.encode())
        content.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    settings = {key: value for key, value in flat_settings(cfg).items() if not key.startswith(FREE_ON_RESUME)}
    return {**settings, "ptq.content": content.hexdigest()}


def build_teacher(cfg: RunConfig, ptq_model: PreTrainedModel, qconf: Qconf, fp32: nn.Module) -> nn.Module:
    """fp32, or the PTQ model under the teacher's recipe (frozen, same scales as the student)."""
    if cfg.teacher.kind == "fp32":
        return fp32
    recipe = qconf.with_recipe(QuantConfig(ops=cfg.teacher.ops, skip=cfg.teacher.skip))
    if recipe.data == qconf.data:
        raise QatError(f"teacher=int8 with ops {cfg.teacher.ops} and skip {cfg.teacher.skip} is the student itself "
                       "(the distillation loss would be zero); expected a partial-operator teacher recipe or teacher=fp32")
    return simulate(ptq_model, recipe).eval()


def recover(cfg: RunConfig, accelerator: Accelerator, session: Session, ptq_model: PreTrainedModel, qconf: Qconf,
            texts: list[str], run_dir: Path) -> tuple[FakeQuantModel, TrainingSummary]:
    """Recovery training on `texts`; returns the student with its best dev weights and what the training did."""
    teacher = build_teacher(cfg, ptq_model, qconf, session.fp32())
    trainer = Trainer(accelerator, simulate(ptq_model, qconf), teacher, session.encoder, texts,
                      cfg.train, run_dir, student_settings(cfg, ptq_model, qconf), cfg.seed, session.evaluate_dev,
                      cfg.recovery.metric)
    result = trainer.train(resolve_resume(cfg.train.resume, run_dir / CHECKPOINT_DIR))
    student = accelerator.unwrap_model(trainer.student, keep_fp32_wrapper=False)   # fp32, as exported
    if result.best_weights is not None:
        student.load_state_dict(load_file(str(result.best_weights)))
    summary = TrainingSummary(**asdict(result.state), seconds_per_step=result.seconds_per_step,
                              teacher=cfg.teacher.kind, processes=accelerator.num_processes)
    return student, summary
