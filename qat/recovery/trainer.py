"""Recovery training through accelerate: AdamW, warm-up + cosine, clipping, accumulation, checkpoints, resume."""
from __future__ import annotations

import bisect
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from safetensors.torch import save_file
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from qat.base.atomic import TMP_SUFFIX, atomic_path
from qat.config import TrainConfig
from qat.quant.config import AUTO
from qat.data import PairSet, Text
from qat.recovery.distill import (COSINE_LOSS, KL_LOSS, MSE_LOSS, DistillLoss, distillation_loss, normalized_mse,
                                  ranking_loss, record_blocks)
from qat.base.errors import QatError
from qat.evaluation.metrics import GUARD, HELDOUT_EMD, LOGIT, Metrics, fidelity_metric, head_scores, higher_is_better
from qat.load import Batch, Encoder, outputs, text_length, tokenize
from qat.base.progress import progress
from qat.base.settings import SETTINGS_FILE, Settings
from qat.quant.modules import QuantLinear
from qat.quant.numerics import weight_qparams
from qat.quant.simulate import FakeQuantModel
from qat.quant.structure import transformer_blocks

log = logging.getLogger(__name__)
# IPEX registers a layer_norm kernel without an autograd entry; torch falls back to the correct gradient and
# warns. tests/test_train.py checks the gradients against a hand-written LayerNorm.
warnings.filterwarnings("ignore", message="aten::layer_norm: an autograd kernel was not registered")
STATE_FILE = "trainer_state.json"
CHECKPOINT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 2
BEST_FILE = "best_student.safetensors"
LENGTH_GROUP = 16                       # batches per group sorted by length


@dataclass
class TrainState:
    """What a checkpoint records besides accelerate's state: where training is, and what it belongs to."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    fingerprint: str = ""
    seconds: float = 0.0            # training time so far, over every process that trained this run
    floors: dict[str, float] = field(default_factory=dict)  # PTQ's dev measure and fidelity (floor_metrics): never kept below
    best_fidelity: float | None = None  # the kept checkpoint's held-out fidelity (decides between level dev measures)
    history: list[dict[str, float]] = field(default_factory=list)   # each evaluation: step, dev and fidelity values
    last_metric: float | None = None  # the dev metric at the latest evaluation, if the guard held there
    evaluations_without_gain: int = 0
    stopped: str = ""               # why training ended before train.steps: 'patience' or 'max_minutes'


@dataclass
class StartingPoint:
    """The untrained student (PTQ) on the dev data, measured once before training: its metrics, and how far apart
    two dev measures must be to count as different (`noise`: half the width of the 95% paired bootstrap interval
    of PTQ against fp32 on the dev task set; 0 for a fidelity metric)."""

    metrics: Metrics
    noise: float = 0.0
    fp32: float | None = None     # fp32's value of the dev metric on the same data (the training curve's top line)
    sampled: bool = False         # the evaluations read a fixed sample of the dev task sets


@dataclass
class TrainResult:
    state: TrainState
    seconds_per_step: float
    best_weights: Path | None


class LengthGroupedSampler(Sampler[int]):
    """Shuffled indices in which every run of `batch_size` holds texts of similar length, so that short sentences
    and long passages in one training set pad little: each epoch's permutation is cut into groups of LENGTH_GROUP
    batches, each group sorted by length, and the batches shuffled. The permutation is seeded by seed and epoch,
    so a resumed run sees the same batches (transformers' LengthGroupedSampler draws from a generator's running
    state, which a resumed run cannot restore)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        group = LENGTH_GROUP * self.batch_size
        ordered = [i for start in range(0, len(order), group)
                   for i in sorted(order[start:start + group], key=self.lengths.__getitem__, reverse=True)]
        batches = [ordered[i:i + self.batch_size] for i in range(0, len(ordered), self.batch_size)]
        full = [b for b in batches if len(b) == self.batch_size]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return iter([i for batch in shuffled for i in batch])


def text_loader(encoder: Encoder, texts: list[Text], batch_size: int, seed: int) -> DataLoader:
    """Tokenized batches of similar length; drop_last keeps every batch divisible across processes."""
    if len(texts) < batch_size:
        raise QatError(f"training set has {len(texts)} inputs; expected at least train.batch_size={batch_size}")
    return DataLoader(texts, batch_size=batch_size, sampler=LengthGroupedSampler([text_length(t) for t in texts],
                      batch_size, seed), drop_last=True, collate_fn=lambda batch: tokenize(encoder, batch))


def output_kind(encoder: Encoder) -> str:
    """How the model's outputs are distilled: embeddings by cosine, class logits by KL, scores by MSE."""
    return KL_LOSS if encoder.classes else MSE_LOSS if encoder.pairs else COSINE_LOSS


SIMILARITY_WEIGHT = 1.0   # train.similarity_weight=auto on embedding models (measured: docs/RESULTS.md)
SEQUENTIAL = "sequential"


def similarity_weight(encoder: Encoder, weight: float | str, blocks: str = "joint") -> float:
    """train.similarity_weight as a number: auto is SIMILARITY_WEIGHT for an embedding model trained jointly, and 0
    for a score or class model, which makes no embeddings to compare, or for sequential blocks, which read no
    outputs."""
    if weight == AUTO:
        return SIMILARITY_WEIGHT if output_kind(encoder) == COSINE_LOSS and blocks != SEQUENTIAL else 0.0
    return float(weight)


class BlockSchedule:
    """train.blocks=sequential: block reconstruction (BRECQ, Li et al. 2021) within one run's steps. The steps are
    shared out evenly among the blocks in order; during its share a block alone trains, on the nMSE of its own
    output against the teacher's block, from the input the blocks before it (already trained, now frozen) give, so
    each block corrects what the quantized blocks before it left, and none moves once passed. The lr warms up and
    decays (cosine) within each share. Linears outside the blocks (a score head) stay as PTQ made them."""

    def __init__(self, student: nn.Module, steps: int) -> None:
        self.blocks = transformer_blocks(student)
        if steps < len(self.blocks):
            raise QatError(f"train.steps={steps} with train.blocks=sequential leaves some of the model's "
                           f"{len(self.blocks)} blocks no step; expected train.steps >= {len(self.blocks)}")
        self.starts = [k * steps // len(self.blocks) for k in range(len(self.blocks) + 1)]

    def block(self, step: int) -> int:
        """The block trained by the optimizer step after `step` completed steps."""
        return min(bisect.bisect_right(self.starts, step) - 1, len(self.blocks) - 1)

    def focus(self, block: int, trainable: list[nn.Parameter]) -> None:
        """Only the trainable parameters inside `block` take gradients (the optimizer skips the others)."""
        inside = {id(p) for p in self.blocks[block].parameters()}
        for parameter in trainable:
            parameter.requires_grad_(id(parameter) in inside)

    def scheduler(self, optimizer: torch.optim.Optimizer, warmup_ratio: float) -> LambdaLR:
        """Linear warm-up over warmup_ratio of each block's share, then cosine decay to 0 at its end."""

        def factor(step: int) -> float:
            block = self.block(step)
            local, length = step - self.starts[block], self.starts[block + 1] - self.starts[block]
            warmup = int(warmup_ratio * length)
            if local < warmup:
                return local / warmup
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (local - warmup) / max(1, length - warmup))))
        return LambdaLR(optimizer, factor)


def check_loss_terms(encoder: Encoder, cfg: TrainConfig) -> None:
    """train.task_weight ranks one similarity per labelled pair: an embedding model's cosine, or a score model's
    single output; class logits or several heads have no one value that a label orders. train.similarity_weight
    compares the similarities of embeddings, which a score or class model does not make."""
    outputs_per_pair = encoder.model.config.num_labels if encoder.pairs else 1
    if cfg.task_weight > 0 and outputs_per_pair != 1:
        raise QatError(f"train.task_weight needs one similarity per pair, but model {encoder.source!r} has "
                       f"{outputs_per_pair} outputs; expected an embedding model or a one-score model, or "
                       "train.task_weight=0")
    if cfg.blocks == SEQUENTIAL and (cfg.task_weight > 0 or (cfg.similarity_weight != AUTO and cfg.similarity_weight > 0)):
        raise QatError(f"train.blocks=sequential trains each block on its own output alone, but train.task_weight="
                       f"{cfg.task_weight:g} and train.similarity_weight={cfg.similarity_weight} ask for terms on the "
                       "model's outputs; expected both 0 (or auto), or train.blocks=joint")
    if cfg.similarity_weight != AUTO and cfg.similarity_weight > 0 and output_kind(encoder) != COSINE_LOSS:
        raise QatError(f"train.similarity_weight={cfg.similarity_weight:g} compares embeddings' similarities, but "
                       f"model {encoder.source!r} outputs {'class logits' if encoder.classes else 'scores'}; expected "
                       "an embedding model, or train.similarity_weight=0")


def select_trainable(student: FakeQuantModel, train_layernorm: bool) -> list[nn.Parameter]:
    """Linear weights and biases train; LayerNorm only if asked; embeddings and all scales stay frozen."""
    for parameter in student.parameters():
        parameter.requires_grad_(False)
    trainable = []
    for module in student.modules():
        if isinstance(module, nn.Linear) or (train_layernorm and isinstance(module, nn.LayerNorm)):
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad_(True)
                trainable.append(parameter)
    return trainable


def weight_quant_errors(student: FakeQuantModel) -> dict[str, float]:
    """Relative weight-quantization error ||fq(w) - w|| / ||w|| of each quantized Linear."""
    with torch.no_grad():
        return {name: ((m.weight_quantizer(m.weight) - m.weight).norm() / m.weight.norm()).item()
                for name, m in student.encoder.named_modules() if isinstance(m, QuantLinear)}


class RoundingCells:
    """train.rounding_only: each quantized weight stays inside the quantization step of its PTQ value it lies in
    (per channel, PTQ's scale s: [s * floor(w / s), s * (floor(w / s) + 1)]), so training may only change which
    way it rounds, AdaRound's search space (Nagel et al., 2020), and cannot drift further from PTQ where the
    training text does not reach. Applied as a projection after every optimizer step."""

    def __init__(self, student: nn.Module) -> None:
        self.cells: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
        with torch.no_grad():
            for module in student.modules():
                if isinstance(module, QuantLinear):
                    weight = module.weight
                    scale = weight_qparams(weight, *module.weight_quantizer.weight_range)[0].to(weight.device)[:, None]
                    self.cells.append((weight, torch.floor(weight / scale) * scale, scale))

    @torch.no_grad()
    def project(self) -> None:
        for weight, low, step in self.cells:
            torch.clamp_(weight.data, low, low + step)


def on_device(model: nn.Module, device: torch.device) -> Callable[..., torch.Tensor]:
    """`model` (on `device`, a GPU when training there) as a forward on CPU batches with CPU outputs, as the
    evaluation calls it."""
    return lambda *batch: model(*(tensor.to(device) for tensor in batch)).float().cpu()


def floor_metrics(pairs: bool) -> tuple[str, ...]:
    """The fidelity measures no kept checkpoint may be worse on than PTQ, besides the dev measure itself: on the
    held-out texts and on the guard, the closeness of each output to fp32's (cosine, or score difference) and the
    EMD of the similarity or score distribution, which a shift shared by all outputs moves while each one stays
    close."""
    fidelity = fidelity_metric(pairs)
    return fidelity, HELDOUT_EMD, f"{GUARD}/{fidelity}", f"{GUARD}/emd"


def worse(metric: str, value: float, than: float) -> bool:
    """`value` is strictly worse than `than` on this metric (lower for a quality or similarity, higher for a distance)."""
    return value < than if higher_is_better(metric) else value > than


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint with the highest recorded step (read from its state file, not its name)."""
    found = [(json.loads((p / STATE_FILE).read_text())["step"], p) for p in root.glob("step_*") if (p / STATE_FILE).is_file()]
    return max(found)[1] if found else None


def resolve_resume(resume: str | None, root: Path) -> Path | None:
    if resume is None:
        return None
    path = latest_checkpoint(root) if resume == "auto" else Path(resume)
    if resume == "auto" and path is None:
        log.info("train.resume=auto: no checkpoint under %s, starting fresh", root)
        return None
    if not (path / STATE_FILE).is_file():
        raise QatError(f"train.resume={resume!r}: {path} is not a checkpoint; expected a folder with {STATE_FILE}")
    return path


class Trainer:
    """Block-wise distillation of a fake-quant student from a frozen teacher."""

    def __init__(self, accelerator: Accelerator, student: FakeQuantModel, teacher: nn.Module, encoder: Encoder,
                 texts: list[Text], cfg: TrainConfig, checkpoints: Path, settings: Settings, seed: int,
                 evaluate_dev: Callable[[FakeQuantModel], Metrics], metric: str, log_prefix: str = "",
                 start: StartingPoint | None = None, task: PairSet | None = None) -> None:
        self.accelerator, self.encoder, self.cfg, self.log_prefix = accelerator, encoder, cfg, log_prefix
        self.task, self.seed = task if cfg.task_weight > 0 else None, seed
        self.similarity_weight = similarity_weight(encoder, cfg.similarity_weight, cfg.blocks)
        self.teacher, self.evaluate_dev, self.metric = teacher.eval().to(accelerator.device), evaluate_dev, metric
        self.start = start   # the untrained student's dev metrics and noise, when already measured (PTQ's)
        self.checkpoints = checkpoints
        self.best_path = checkpoints / BEST_FILE
        self.settings = settings
        self.state = TrainState(fingerprint=settings.fingerprint())
        self.parameters = select_trainable(student, cfg.train_layernorm)
        optimizer = torch.optim.AdamW(self.parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.schedule = BlockSchedule(student, cfg.steps) if cfg.blocks == SEQUENTIAL else None
        scheduler = self.schedule.scheduler(optimizer, cfg.warmup_ratio) if self.schedule else \
            get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * cfg.steps), cfg.steps)
        loader = text_loader(encoder, texts, cfg.batch_size, seed)
        self.student, self.optimizer, self.loader, self.scheduler = accelerator.prepare(student, optimizer, loader, scheduler)
        # PTQ's weights (a resumed run loads its own trained weights after this, inside the same cells)
        if cfg.rounding_only not in (True, False):
            raise QatError(f"train.rounding_only={cfg.rounding_only!r} reached the trainer unresolved; expected true "
                           "or false (qat.recovery.rounding_only resolves auto from the recovery decision)")
        self.cells = RoundingCells(accelerator.unwrap_model(self.student)) if cfg.rounding_only else None

    def resume(self, path: Path) -> None:
        state = TrainState(**json.loads((path / STATE_FILE).read_text()))
        if state.fingerprint != self.state.fingerprint:
            recorded = Settings(json.loads((path / SETTINGS_FILE).read_text()) if (path / SETTINGS_FILE).is_file() else {})
            changed = self.settings.changed_from(recorded)
            raise QatError(f"checkpoint {path} belongs to another model or config ({changed or 'unrecorded settings'}); "
                           "expected a checkpoint made with this run's settings")
        self.accelerator.load_state(str(path))
        self.state = state
        log.info("resumed from %s at step %d", path, state.step)

    def loss(self, batch: Batch) -> DistillLoss:
        if self.schedule is not None:
            return self.block_loss(batch, self.schedule.block(self.state.step))
        mask = batch[1]
        with torch.no_grad(), record_blocks(self.teacher) as teacher_blocks, self.accelerator.autocast():
            teacher_outputs = outputs(self.encoder, self.teacher(*batch), mask)
        with record_blocks(self.accelerator.unwrap_model(self.student)) as student_blocks, \
                self.accelerator.autocast():
            student_outputs = outputs(self.encoder, self.student(*batch), mask)
        loss = distillation_loss(student_blocks, teacher_blocks, student_outputs, teacher_outputs, mask,
                                 self.cfg.block_weight, self.cfg.output_weight, output_kind(self.encoder),
                                 self.similarity_weight)
        if self.task is None:
            return loss
        task = self.task_loss()
        return replace(loss, total=loss.total + self.cfg.task_weight * task, task=task)

    def block_loss(self, batch: Batch, block: int) -> DistillLoss:
        """train.blocks=sequential: the nMSE of `block`'s output against the teacher's; both forward passes stop
        there."""
        self.schedule.focus(block, self.parameters)
        with torch.no_grad(), record_blocks(self.teacher, last=block) as teacher_blocks, self.accelerator.autocast():
            self.teacher(*batch)
        with record_blocks(self.accelerator.unwrap_model(self.student), last=block) as student_blocks, \
                self.accelerator.autocast():
            self.student(*batch)
        error = normalized_mse(student_blocks[block], teacher_blocks[block], batch[1])
        return DistillLoss(self.cfg.block_weight * error, [error], error.new_zeros(()), first_block=block)

    def task_loss(self) -> torch.Tensor:
        """The ranking loss of the student's similarities on train.batch_size labelled pairs drawn for this batch
        (by seed, epoch and batch number, so a resumed run draws the same); each process ranks its share."""
        generator = torch.Generator().manual_seed(hash((self.seed, self.state.epoch, self.state.batch_in_epoch)))
        drawn = torch.randperm(len(self.task.scores), generator=generator)[:self.cfg.batch_size]
        chosen = drawn[self.accelerator.process_index::self.accelerator.num_processes].tolist()
        first, second = [self.task.sentence1[i] for i in chosen], [self.task.sentence2[i] for i in chosen]
        labels = torch.tensor([self.task.scores[i] for i in chosen])
        with self.accelerator.autocast():
            if self.encoder.pairs:
                batch = self.to_device(tokenize(self.encoder, list(zip(first, second))))
                similarity = head_scores(outputs(self.encoder, self.student(*batch), batch[1]), LOGIT)   # as evaluated
            else:
                embedded = [outputs(self.encoder, self.student(*batch), batch[1])
                            for batch in map(self.to_device, (tokenize(self.encoder, first), tokenize(self.encoder, second)))]
                similarity = (embedded[0] * embedded[1]).sum(-1)   # cosine: the embeddings are normalised
        return ranking_loss(similarity, labels.to(similarity.device), output_kind(self.encoder))

    def to_device(self, batch: Batch) -> Batch:
        return tuple(tensor.to(self.accelerator.device) for tensor in batch)

    def save_checkpoint(self) -> Path:
        """accelerate's full state plus ours, written under a temporary name and renamed when complete."""
        final = self.checkpoints / f"step_{self.state.step:06d}"
        tmp = self.checkpoints / f".step_{self.state.step:06d}{TMP_SUFFIX}"
        self.accelerator.save_state(str(tmp))
        if self.accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps(asdict(self.state), indent=2))
            (tmp / SETTINGS_FILE).write_text(self.settings.to_json())
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            older = sorted(p for p in self.checkpoints.glob("step_*") if p != final)
            for stale in older[:max(0, len(older) - KEEP_CHECKPOINTS + 1)]:
                shutil.rmtree(stale)
        self.accelerator.wait_for_everyone()
        return final

    def evaluate(self) -> None:
        # Without accelerate's autocast wrapper: the dev metric is the fp32 simulation's, as exported (training
        # keeps bf16 through the explicit autocast in loss()).
        student = self.accelerator.unwrap_model(self.student, keep_fp32_wrapper=False)
        student.eval()
        known = self.start.metrics if self.start is not None and self.state.step == 0 else None
        metrics = (known or self.evaluate_dev(on_device(student, self.accelerator.device))) \
            if self.accelerator.is_main_process else {}
        student.train(self.cfg.dropout)
        if not self.accelerator.is_main_process:
            return
        value = metrics[self.metric]
        if not math.isfinite(value):
            raise QatError(f"dev {self.metric} became {value} at step {self.state.step}; stopped without saving it as best")
        errors = weight_quant_errors(student)
        self.log({**{f"dev/{k}": v for k, v in metrics.items()},
                  **{f"weight_quant_error/{k}": v for k, v in errors.items()}})
        fidelity = fidelity_metric(self.encoder.pairs)
        if self.state.step == 0:
            self.state.floors = {name: metrics[name] for name in (self.metric, *floor_metrics(self.encoder.pairs))
                                 if name in metrics}
        self.state.history.append({"step": self.state.step, self.metric: value,
                                   **{name: metrics[name] for name in self.state.floors}})
        below = [name for name, floor in self.state.floors.items() if worse(name, metrics[name], floor)]
        better = not below and self.kept_over(value, metrics[fidelity])
        notes = "".join(f", {name} {metrics[name]:.6f}" for name in self.state.floors if name != self.metric)
        notes += f" (below PTQ on {' and '.join(below)}: not kept)" if below else ""
        log.info("step %d: dev %s = %.6f%s%s", self.state.step, self.metric, value, notes, " (best)" if better else "")
        self.state.evaluations_without_gain = 0 if better else self.state.evaluations_without_gain + 1
        self.state.last_metric = None if below else value
        if better:
            self.state.best_metric, self.state.best_step = value, self.state.step
            self.state.best_fidelity = metrics[fidelity]
            with atomic_path(self.best_path) as tmp:
                save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(tmp))

    def kept_over(self, value: float, fidelity: float) -> bool:
        """Whether a checkpoint at or above PTQ on every floor replaces the kept one: its dev measure is better by more
        than the noise, or level within it and the checkpoint is more faithful on the held-out texts."""
        best = self.state.best_metric
        if best is None:
            return True
        noise = self.start.noise if self.start is not None else 0.0
        if abs(value - best) > noise:
            return not worse(self.metric, value, best)
        return worse(fidelity_metric(self.encoder.pairs), self.state.best_fidelity, fidelity)

    def log(self, values: dict[str, float]) -> None:
        self.accelerator.log({self.log_prefix + key: value for key, value in values.items()}, step=self.state.step)

    def _after_step(self, loss: DistillLoss, grad_norm: float | None, bar: tqdm, started: tuple[float, int],
                    end: int) -> None:
        """Log, watch, evaluate and save as the schedule says, after an optimizer step."""
        cfg, step, lr = self.cfg, self.state.step, self.scheduler.get_last_lr()[0]
        task = {f"train/{name}_loss": term.item() for name, term in (("task", loss.task), ("similarity", loss.similarity))
                if term is not None}
        self.log({"train/loss": loss.total.item(), "train/output_loss": loss.output.item(), "train/lr": lr, **task,
                  "train/grad_norm": float(grad_norm), **{f"train/block_{i}": b.item() for i, b in enumerate(loss.blocks, loss.first_block)}})
        bar.update(1)
        bar.set_postfix(loss=f"{loss.total.item():.4g}", lr=f"{lr:.2g}", best_dev=f"{self.state.best_metric or 0:.5f}")
        if bar.disable and (step % max(1, end // 20) == 0) and self.accelerator.is_main_process:
            rate = (time.perf_counter() - started[0]) / max(1, step - started[1])
            log.info("step %d/%d: loss %.4g, lr %.2g, %.2f s/step, about %.0f s to go", step, end,
                     loss.total.item(), lr, rate, rate * (end - step))
        if step % cfg.eval_every == 0 or step == end:
            self.evaluate()

    def _stop_reason(self, seconds: float) -> str:
        """'patience' when the dev metric has not improved for train.patience evaluations, 'max_minutes' when the
        training time is spent, else ''."""
        cfg = self.cfg
        if cfg.patience is not None and self.state.evaluations_without_gain >= cfg.patience:
            return "patience"
        if cfg.max_minutes is not None and seconds >= 60.0 * cfg.max_minutes:
            return "max_minutes"
        return ""

    def train(self, resume_from: Path | None, stop_at: int | None = None) -> TrainResult:
        """Train to train.steps (or to `stop_at`, a trial's end, on the same schedule), evaluating and saving as
        configured; a checkpoint is saved at the end."""
        if resume_from is not None:
            self.resume(resume_from)
        cfg, acc = self.cfg, self.accelerator
        end = min(cfg.steps, stop_at or cfg.steps)
        self.student.train(cfg.dropout)
        start, resumed_seconds, first_step = time.perf_counter(), self.state.seconds, self.state.step
        last_checkpoint = resume_from
        if self.state.step == 0:
            self.evaluate()  # the PTQ starting point, so "best" never falls below it
        bar = progress(desc="training", total=end, unit="step", initial=self.state.step, leave=True)
        if not acc.is_main_process:
            bar.disable = True
        while self.state.step < end and not self.state.stopped:
            self.loader.set_epoch(self.state.epoch)
            loader = acc.skip_first_batches(self.loader, self.state.batch_in_epoch) if self.state.batch_in_epoch else self.loader
            for batch in loader:
                with acc.accumulate(self.student):
                    loss = self.loss(batch)
                    if not torch.isfinite(loss.total):
                        raise QatError(f"loss became {loss.total.item()} at step {self.state.step + 1}; stopped without "
                                       f"saving. Last good checkpoint: {last_checkpoint or 'none'}")
                    acc.backward(loss.total)
                    grad_norm = acc.clip_grad_norm_(self.parameters, cfg.max_grad_norm) if acc.sync_gradients else None
                    self.optimizer.step()
                    if self.cells is not None:
                        self.cells.project()
                    self.scheduler.step()
                    self.optimizer.zero_grad()
                self.state.batch_in_epoch += 1
                if not acc.sync_gradients:
                    continue
                self.state.step += 1
                self._after_step(loss, grad_norm, bar, (start, first_step), end)
                self.state.seconds = resumed_seconds + time.perf_counter() - start
                if self.state.step < end and (cfg.patience is not None or cfg.max_minutes is not None):
                    # the main process decides (only it evaluates, and clocks differ): every process stops together
                    [self.state.stopped] = broadcast_object_list([self._stop_reason(self.state.seconds)])
                    if self.state.stopped and self.state.step % cfg.eval_every:
                        self.evaluate()   # the weights trained since the last evaluation are a candidate too
                if self.state.step % cfg.save_every == 0 or self.state.step == end or self.state.stopped:
                    last_checkpoint = self.save_checkpoint()
                if self.state.step >= end or self.state.stopped:
                    break
            else:
                self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
        bar.close()
        if self.state.stopped:
            log.info("stopped at step %d (%s): %s", self.state.step, self.state.stopped,
                     f"no better dev {self.metric} in {cfg.patience} evaluations" if self.state.stopped == "patience"
                     else f"training took {self.state.seconds / 60:.1f} of train.max_minutes={cfg.max_minutes}")
        self.state.seconds = resumed_seconds + time.perf_counter() - start
        best = self.best_path if self.best_path.is_file() else None
        return TrainResult(self.state, self.state.seconds / max(1, self.state.step), best)
