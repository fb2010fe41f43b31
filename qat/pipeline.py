"""The job behind `python -m qat.train`: calibrate -> PTQ artifact -> decide -> train -> export -> evaluate -> report."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedModel

from qat.artifact import library_versions, read_ptq_artifact, write_ptq_artifact
from qat.calibrate import calibrate
from qat.config import QuantConfig, RunConfig
from qat.data import calibration_texts
from qat.errors import QatError
from qat.evaluate import EvalData, embed, evaluate, load_eval_data, relative_loss
from qat.export.ipex import ExportResult, export_ipex, load_exported
from qat.export.parity import parity, rounding_noise, unfused
from qat.load import Encoder, EncoderModule, batches, load_encoder
from qat.numerics import cpu_has_vnni
from qat.quant.qconf import Qconf
from qat.quant.simulate import FakeQuantModel, fake_quantize
from qat.report import write_report
from qat.restore import restore_qconf
from qat.sensitivity import run_sensitivity
from qat.trainer import Trainer, resolve_resume

log = logging.getLogger(__name__)


def fingerprint(cfg: RunConfig, qconf: Qconf) -> str:
    """Identifies what a checkpoint belongs to: model, qconf, data, seed and the training recipe."""
    train = {k: v for k, v in asdict(cfg.train).items() if k not in ("resume", "steps", "eval_every", "save_every")}
    payload = json.dumps([cfg.model.name_or_path, asdict(cfg.data), cfg.seed, train, asdict(cfg.teacher),
                          json.dumps(qconf.data, sort_keys=True)], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def build_teacher(cfg: RunConfig, ptq_model: PreTrainedModel, qconf: Qconf, fp32: nn.Module) -> nn.Module:
    """fp32, or the PTQ model under the teacher's recipe (frozen, same scales as the student)."""
    if cfg.teacher.kind == "fp32":
        return fp32
    recipe = qconf.copy()
    recipe.apply_recipe(QuantConfig(ops=cfg.teacher.ops, skip=cfg.teacher.skip))
    if recipe.data == qconf.data:
        raise QatError(f"teacher=int8 with ops {cfg.teacher.ops} and skip {cfg.teacher.skip} is the student itself "
                       "(the distillation loss would be zero); expected a partial-operator teacher recipe or teacher=fp32")
    return fake_quantize(EncoderModule(copy.deepcopy(ptq_model)), recipe).eval()


def calibration_data(cfg: RunConfig, origins: list[str] | None) -> dict[str, Any]:
    """What the calibration texts were: one source, or a mix with the texts each source gave."""
    if origins is None:
        return {"source": asdict(cfg.data.calibration), "texts": cfg.calib.samples}
    used = Counter(origins[:cfg.calib.samples])
    return {"mix": {name: {"proportion": part.proportion, "source": asdict(part.source), "texts": used[name]}
                    for name, part in cfg.data.mix.items()}, "texts": cfg.calib.samples}


def ptq_artifact(cfg: RunConfig, encoder: Encoder, texts: list[str], origins: list[str] | None, run_dir: Path,
                 accelerator: Accelerator) -> Path:
    """The PTQ model: a given artifact, a restored foreign qconf, or our calibration (main process only).
    A resumed run reuses the artifact it made before."""
    if cfg.ptq.artifact:
        return Path(cfg.ptq.artifact)
    path = run_dir / "ptq"
    if path.exists() and cfg.train.resume is not None:
        log.info("resuming: reusing the PTQ artifact %s", path)
        return path
    if accelerator.is_main_process:
        if cfg.ptq.qconf:
            if cfg.smoothquant.enabled:
                raise QatError("smoothquant=on with ptq.qconf: a restored qconf keeps its own calibration; expected "
                               "smoothquant=off, or no ptq.qconf so that qat migrates and calibrates")
            qconf = restore_qconf(encoder, Qconf.read(cfg.ptq.qconf), texts, cfg.quant)
            metadata = {"restored_from": cfg.ptq.qconf, "recipe": "as in the restored qconf"}
        else:
            calibration = calibrate(encoder, texts, cfg.calib, cfg.quant, cfg.smoothquant)
            qconf, encoder = calibration.qconf, dataclasses.replace(encoder, model=calibration.model)
            metadata = {"recipe": asdict(cfg.quant), "calibration": asdict(cfg.calib), "smoothquant": asdict(cfg.smoothquant),
                        "calibration_data": calibration_data(cfg, origins)}
        write_ptq_artifact(path, encoder, qconf, metadata)
    accelerator.wait_for_everyone()
    return path


def with_sensitive_skips(cfg: RunConfig, out_dir: Path, accelerator: Accelerator) -> RunConfig:
    """The sensitivity stage first (main process; a resumed run reuses its result): its skip list joins quant.skip."""
    path = out_dir / "sensitivity.json"
    if accelerator.is_main_process and not (path.exists() and cfg.train.resume is not None):
        run_sensitivity(cfg, out_dir)
    accelerator.wait_for_everyone()
    skip = json.loads(path.read_text())["skip"]
    log.info("sensitivity: %d more op(s) stay fp32: %s", len(skip), skip)
    return dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, skip=list(dict.fromkeys(cfg.quant.skip + skip))))


def recovery_decision(cfg: RunConfig, fp32_metrics: dict[str, float], ptq_metrics: dict[str, float]) -> dict[str, Any]:
    """Train only if PTQ loses more than recovery.threshold on the dev metric (or if forced)."""
    metric = cfg.recovery.metric
    if metric not in ptq_metrics:
        raise QatError(f"recovery.metric={metric!r} is not measured; expected one of {sorted(ptq_metrics)}")
    loss = relative_loss(metric, fp32_metrics[metric], ptq_metrics[metric])
    decision = {"metric": metric, "fp32": fp32_metrics[metric], "ptq": ptq_metrics[metric], "ptq_loss": loss,
                "threshold": cfg.recovery.threshold, "force": cfg.recovery.force,
                "train": cfg.train.enabled and (cfg.recovery.force or loss > cfg.recovery.threshold)}
    log.info("PTQ loss on dev %s: %.4f (threshold %.4f): %s", metric, loss, cfg.recovery.threshold,
             "training" if decision["train"] else "no training needed" if cfg.train.enabled else "training disabled")
    return decision


def recover(cfg: RunConfig, accelerator: Accelerator, encoder: Encoder, ptq_model: PreTrainedModel, qconf: Qconf,
            fp32: nn.Module, texts: list[str], run_dir: Path,
            evaluate_dev: Callable[[FakeQuantModel], dict[str, float]]) -> tuple[FakeQuantModel, dict[str, Any]]:
    """Recovery training; returns the student with its best dev weights and what the training did."""
    student = fake_quantize(EncoderModule(copy.deepcopy(ptq_model)), qconf)
    trainer = Trainer(accelerator, student, build_teacher(cfg, ptq_model, qconf, fp32), encoder, texts, cfg.train,
                      run_dir, fingerprint(cfg, qconf), cfg.seed, evaluate_dev, cfg.recovery.metric)
    result = trainer.train(resolve_resume(cfg.train.resume, run_dir / "checkpoints"))
    student = accelerator.unwrap_model(trainer.student, keep_fp32_wrapper=False)   # fp32, as exported
    if result.best_weights is not None:
        student.load_state_dict(load_file(str(result.best_weights)))
    return student, {**asdict(result.state), "seconds": result.seconds, "seconds_per_step": result.seconds_per_step,
                     "teacher": cfg.teacher.kind, "processes": accelerator.num_processes}


def export_and_check(sim: FakeQuantModel, encoder: Encoder, data: EvalData, cfg: RunConfig, out_dir: Path,
                     tables: dict[str, dict[str, torch.Tensor]], name: str) -> tuple[ExportResult, dict[str, Any]]:
    example = next(batches(encoder, data.heldout, 8))
    result = export_ipex(sim.to_float().eval(), sim.qconf, sim.weight_qparams(), example, out_dir)
    exported, texts, size = load_exported(result.path), data.texts(), cfg.eval.batch_size
    tables[f"{name}_fakequant"] = embed(sim.eval(), encoder, texts, size)
    tables[f"{name}_int8"] = embed(exported, encoder, texts, size)
    heldout_simulated = embed(sim, encoder, data.heldout, size)
    heldout_unfused = embed(unfused(load_exported(result.path)), encoder, data.heldout, size)   # a fresh module
    with rounding_noise(sim, cfg.seed):
        heldout_noisy = embed(sim, encoder, data.heldout, size)
    return result, parity(tables["fp32"], tables[f"{name}_fakequant"], tables[f"{name}_int8"], data.heldout,
                          heldout_simulated=heldout_simulated, heldout_unfused=heldout_unfused,
                          heldout_noisy=heldout_noisy, cfg=cfg.export)


def run_pipeline(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    set_seed(cfg.seed)
    accelerator = Accelerator(
        cpu=True, log_with="tensorboard", project_dir=str(run_dir), gradient_accumulation_steps=cfg.train.grad_accum,
        mixed_precision="bf16" if cfg.train.bf16 else "no",
        dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True))
    accelerator.init_trackers("tensorboard")
    seconds: dict[str, float] = {}

    calib_texts, origins = calibration_texts(cfg.data)
    data, dev = load_eval_data(cfg.data)
    if "test" in cfg.recovery.metric:
        raise QatError(f"recovery.metric={cfg.recovery.metric!r} reads a test split; expected a dev metric (test splits only report)")
    encoder = load_encoder(cfg.model)
    if cfg.sensitivity.enabled and not cfg.ptq.artifact and not cfg.ptq.qconf:
        cfg = with_sensitive_skips(cfg, run_dir / "sensitivity", accelerator)

    start = time.perf_counter()
    artifact = read_ptq_artifact(ptq_artifact(cfg, encoder, calib_texts, origins, run_dir, accelerator))
    qconf = artifact.qconf
    seconds["calibrate"] = time.perf_counter() - start

    fp32 = EncoderModule(encoder.model).eval()
    ptq = fake_quantize(EncoderModule(copy.deepcopy(artifact.encoder.model)), qconf).eval()
    fp32_dev = embed(fp32, encoder, dev.texts(), cfg.eval.batch_size)
    ptq_dev_metrics = evaluate(embed(ptq, encoder, dev.texts(), cfg.eval.batch_size), fp32_dev, dev)
    decision = recovery_decision(cfg, evaluate(fp32_dev, fp32_dev, dev), ptq_dev_metrics)

    student, training = None, None
    if decision["train"]:
        student, training = recover(cfg, accelerator, encoder, artifact.encoder.model, qconf, fp32, calib_texts, run_dir,
                                    lambda model: evaluate(embed(model, encoder, dev.texts(), cfg.eval.batch_size), fp32_dev, dev))
        seconds["train"] = training["seconds"]
    if not accelerator.is_main_process:
        accelerator.end_training()
        return {}

    start = time.perf_counter()
    texts = data.texts()
    tables = {"fp32": embed(fp32, encoder, texts, cfg.eval.batch_size)}
    exports: dict[str, Any] = {}
    for name, sim in [("ptq", ptq)] + ([("qat", student)] if student is not None else []):
        result, check = export_and_check(sim, encoder, data, cfg, run_dir / "export" / name, tables, name)
        exports[name] = {"path": str(result.path), "qconf": str(result.qconf_path),
                         "graph_int8_ops": result.graph_int8_ops, "parity": check}
    seconds["export_and_evaluate"] = time.perf_counter() - start
    variants = {name: evaluate(table, tables["fp32"], data) for name, table in tables.items()}
    for name, metrics in variants.items():
        accelerator.log({f"eval/{name}/{key}": value for key, value in metrics.items()}, step=0)
    accelerator.end_training()

    final = "qat" if student is not None else "ptq"
    report = {
        "model": encoder.source, "run_dir": str(run_dir), "ptq_source": artifact.metadata.get("restored_from", "calibration"),
        "recipe": {"ops": sorted(k for k, n in qconf.int8_counts().items() if n), "skip": cfg.quant.skip},
        "calibration": {**asdict(cfg.calib), "texts": cfg.calib.samples}, "smoothquant": asdict(cfg.smoothquant),
        "data": {"heldout_texts": len(data.heldout), "tasks": list(data.tasks), "train_texts": len(calib_texts)},
        "recovery": decision, "training": training, "final": final, "variants": variants, "exports": exports,
        "weight_range": qconf.weight_range, "cpu_has_vnni": cpu_has_vnni(),
        "seconds": seconds, "versions": library_versions(),
    }
    path = write_report(run_dir, report)
    failed = [name for name, e in exports.items() if not e["parity"]["passed"]]
    if failed:
        raise QatError(f"parity check failed for {failed}: exported int8 does not compute its fake-quant model "
                       f"(unfused beyond {cfg.export.parity_unfused_atol}, or fused neither within cosine "
                       f"{cfg.export.parity_mean_cosine}/{cfg.export.parity_min_cosine} nor as faithful to fp32 "
                       f"within {cfg.export.parity_fidelity_tolerance}); see {path}")
    log.info("report: %s", path)
    return report
