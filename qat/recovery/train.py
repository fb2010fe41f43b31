"""Recovery training: the teacher, the lr trials, and the fake-quant student trained by block-wise distillation."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedModel

from qat.base.atomic import write_json
from qat.base.errors import QatError
from qat.base.settings import Settings
from qat.config import TeacherConfig, TrainConfig
from qat.data import TrainingSet
from qat.evaluation.metrics import Metrics, best_of, fidelity_metric
from qat.load import Encoder
from qat.quant.config import AUTO, QuantConfig
from qat.quant.qconf import Qconf
from qat.quant.simulate import FakeQuantModel, simulate
from qat.recovery.trainer import BEST_FILE, StartingPoint, Trainer, TrainState, latest_checkpoint, resolve_resume

log = logging.getLogger(__name__)
LR_TRIALS_DIR = "lr_trials"
TRIAL_FILE = "trial.json"
CHOICE_FILE = "choice.json"


@dataclass
class TrainingSummary(TrainState):
    """Where training ended (the trainer's state) and what it cost."""

    seconds_per_step: float = 0.0
    teacher: str = ""
    processes: int = 1
    lr: float = 0.0
    lr_choice: LrChoice | None = None   # how train.lr=auto chose, if it did
    task_weight: float = 0.0            # the task loss's weight (0: distillation only)
    task_pairs: int = 0                 # labelled pairs the task loss drew from
    similarity_weight: float = 0.0      # the in-batch similarity term's weight (0: off)
    rounding_only: bool = False         # each weight stayed inside its PTQ quantization step
    blocks: str = "joint"               # joint, or sequential: one block after another (train.blocks)
    dev_noise: float = 0.0              # dev measures closer than this were level (the checkpoint rule)
    fp32_dev: float | None = None       # fp32 on the data the evaluations read (the training curve's fp32 line)
    dev_sampled: bool = False           # those evaluations read a fixed sample of the dev task sets


def student_settings(run: Settings, ptq_model: PreTrainedModel, qconf: Qconf) -> Settings:
    """Everything that shapes the trained student, as a checkpoint records it: every setting of the run (model,
    data, calibration, recipe, SmoothQuant, teacher, training, seed; not threads, evaluation or export) and the PTQ
    model's content (its qconf and weights), so that a checkpoint never continues under another setting."""
    content = hashlib.sha256(json.dumps(qconf.data, sort_keys=True).encode())
    for name, tensor in sorted(ptq_model.state_dict().items()):
        content.update(name.encode())
        content.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return run.shaping().with_values(**{"ptq.content": content.hexdigest()})


def build_teacher(teacher: TeacherConfig, ptq_model: PreTrainedModel, qconf: Qconf,
                  fp32: nn.Module) -> tuple[nn.Module, str]:
    """The teacher and its kind: fp32, or the PTQ model under the teacher's recipe (frozen, same scales as the
    student, the attention's context matmul as the student runs it); teacher=auto takes fp32 where the student's
    recipe is the teacher's."""
    recipe = qconf.with_recipe(QuantConfig(ops=teacher.ops, skip=teacher.skip,
                                           context_matmul=not qconf.context_in_float()))
    is_student = recipe.data == qconf.data
    if teacher.kind == "fp32" or (teacher.kind == AUTO and is_student):
        return fp32, "fp32"
    if is_student:
        raise QatError(f"teacher=int8 with ops {teacher.ops} and skip {teacher.skip} is the student itself "
                       "(the distillation loss would be zero); expected a partial-operator teacher recipe or teacher=fp32")
    return simulate(ptq_model, recipe).eval(), "int8"


@dataclass
class LrTrial:
    metric: float | None    # the dev metric at the trial's end (None: below PTQ on a floor there)
    seconds: float
    fidelity: float | None = None   # held-out fidelity at the trial's end (decides between level dev metrics)


@dataclass
class LrChoice:
    """train.lr=auto: each candidate trained `trial_steps` steps on the run's schedule, its dev metric at the end,
    and the lr whose trial continues."""

    metric: str
    trial_steps: int
    trials: dict[str, LrTrial]   # lr (as written) -> its trial
    lr: float


def _trial_dir(checkpoints: Path, lr: float) -> Path:
    return checkpoints / LR_TRIALS_DIR / f"lr_{lr:g}"


def choose_lr(train: TrainConfig, metric: str, make_trainer: Callable[[float, Path, str], Trainer],
              checkpoints: Path, accelerator: Accelerator, noise: float, fidelity: str) -> LrChoice:
    """Run (or, on a resume, read) the lr trials. A finished trial is recorded in its folder and not run again;
    a trial killed halfway starts over. The choice is made on the main process (which evaluates) and broadcast."""
    choice_file = checkpoints / LR_TRIALS_DIR / CHOICE_FILE
    if choice_file.is_file():
        recorded = json.loads(choice_file.read_text())
        return LrChoice(**{**recorded, "trials": {k: LrTrial(**v) for k, v in recorded["trials"].items()}})
    trials = {}
    for lr in train.lr_candidates:
        folder = _trial_dir(checkpoints, lr)
        if (folder / TRIAL_FILE).is_file():
            trials[f"{lr:g}"] = LrTrial(**json.loads((folder / TRIAL_FILE).read_text()))
            continue
        if accelerator.is_main_process and folder.exists():
            shutil.rmtree(folder)
        accelerator.wait_for_everyone()
        log.info("train.lr=auto: trial of lr %g for %d steps", lr, train.trial_steps)
        state = make_trainer(lr, folder, f"lr_trial/{lr:g}/").train(None, stop_at=train.trial_steps).state
        accelerator.free_memory()
        trials[f"{lr:g}"] = LrTrial(state.last_metric, state.seconds, state.history[-1].get(fidelity))
        if accelerator.is_main_process:
            write_json(folder / TRIAL_FILE, asdict(trials[f"{lr:g}"]))
    [choice] = broadcast_object_list([_best_lr(train, metric, trials, noise, fidelity) if accelerator.is_main_process
                                      else None])
    if accelerator.is_main_process:
        write_json(choice_file, asdict(choice))
        accelerator.log({f"lr_trial/{lr}/final_dev_{metric}": t.metric for lr, t in trials.items()
                         if t.metric is not None}, step=train.trial_steps)
        log.info("train.lr=auto: dev %s after %d steps by lr %s -> lr %g", metric, train.trial_steps,
                 {lr: t.metric for lr, t in choice.trials.items()}, choice.lr)
    return choice


def _best_lr(train: TrainConfig, metric: str, trials: dict[str, LrTrial], noise: float, fidelity: str) -> LrChoice:
    """The checkpoint rule applied to the trials' ends: among the candidates not below PTQ on any floor, those
    within `noise` of the best dev metric are level, and the most faithful of them on the held-out texts wins
    (the smallest lr if none held: the continuation still keeps nothing below PTQ)."""
    held = {lr: t.metric for lr, t in trials.items() if t.metric is not None}
    if not held:
        return LrChoice(metric, train.trial_steps, trials, float(min(trials, key=float)))
    top = held[best_of(held, metric)]
    level = {lr: trials[lr].fidelity for lr, value in held.items() if abs(value - top) <= noise}
    known = {lr: value for lr, value in level.items() if value is not None}
    best = best_of(known, fidelity) if known else best_of(held, metric)
    return LrChoice(metric, train.trial_steps, trials, float(best))


def recover(accelerator: Accelerator, ptq_model: PreTrainedModel, qconf: Qconf, *, encoder: Encoder, fp32: nn.Module,
            train: TrainConfig, teacher: TeacherConfig, metric: str, seed: int, settings: Settings,
            training: TrainingSet, checkpoints: Path, evaluate_dev: Callable[[nn.Module], Metrics],
            ptq_dev: StartingPoint) -> tuple[FakeQuantModel, TrainingSummary]:
    """Recovery training on the training set (its texts, and its labelled pairs under train.task_weight); returns
    the student with its best dev weights (by `metric`, from `evaluate_dev`) and what the training did. With
    train.lr=auto the candidates' trials run first and the best one continues from its last checkpoint.
    `ptq_dev` (the PTQ model's dev metrics and the dev measure's noise) is every trainer's step 0, measured once
    instead of once per trial;
    `settings` are the run's, recorded in each checkpoint with the PTQ model's content."""
    teacher_model, teacher_kind = build_teacher(teacher, ptq_model, qconf, fp32)
    log.info("teacher: %s", teacher_kind)
    student = student_settings(settings, ptq_model, qconf)

    def make_trainer(lr: float, folder: Path, log_prefix: str = "", config: TrainConfig = train) -> Trainer:
        return Trainer(accelerator, simulate(ptq_model, qconf), teacher_model, encoder, training.texts,
                       dataclasses.replace(config, lr=lr), folder, student.with_values(**{"train.lr": lr}), seed,
                       evaluate_dev, metric, log_prefix, ptq_dev, training.task)

    start, choice, other_seconds = resolve_resume(train.resume, checkpoints), None, 0.0
    final = train
    if train.lr == AUTO:
        choice = choose_lr(train, metric, make_trainer, checkpoints, accelerator, ptq_dev.noise,
                           fidelity_metric(encoder.pairs))
        winner = _trial_dir(checkpoints, choice.lr)
        other_seconds = sum(t.seconds for lr, t in choice.trials.items() if float(lr) != choice.lr)
        if start is None:
            start = latest_checkpoint(winner)
            if accelerator.is_main_process and (winner / BEST_FILE).is_file():
                shutil.copyfile(winner / BEST_FILE, checkpoints / BEST_FILE)
        if final.max_minutes is not None:   # the bound covers the trials too
            final = dataclasses.replace(final, max_minutes=max(final.max_minutes - other_seconds / 60, 1e-9))
    trainer = make_trainer(choice.lr if choice else train.lr, checkpoints, config=final)
    result = trainer.train(start)
    # fp32 and on the CPU, as exported (a GPU trains, the CPU runs the int8 model)
    trained = accelerator.unwrap_model(trainer.student, keep_fp32_wrapper=False).cpu()
    teacher_model.cpu()   # the fp32 teacher is the session's fp32 model, which the evaluation runs on the CPU
    if result.best_weights is not None:
        trained.load_state_dict(load_file(str(result.best_weights)))
    state = dataclasses.replace(result.state, seconds=result.state.seconds + other_seconds)
    summary = TrainingSummary(**asdict(state), seconds_per_step=result.seconds_per_step, teacher=teacher_kind,
                              processes=accelerator.num_processes, lr=trainer.cfg.lr, lr_choice=choice,
                              task_weight=train.task_weight if training.task else 0.0,
                              task_pairs=len(training.task.scores) if training.task else 0,
                              similarity_weight=trainer.similarity_weight, rounding_only=train.rounding_only,
                              blocks=train.blocks,
                              dev_noise=ptq_dev.noise,
                              fp32_dev=ptq_dev.fp32, dev_sampled=ptq_dev.sampled)
    return trained, summary
