"""The job behind `python -m qat.train`: session -> PTQ model -> decide -> train -> export and parity -> evaluate
-> report. The one place that knows all three stages (ptq, recovery, exporters)."""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration

from qat import ptq, recovery
from qat.base.errors import QatError
from qat.base.settings import Settings
from qat.base.versions import library_versions
from qat.config import RunConfig
from qat.data import training_texts
from qat.evaluation import Session, Stage, Table, Variant, compare_variants, evaluate, open_session, score_buckets
from qat.exporters import (ExportRecord, ExportSignature, check_targets, export_verified, measure_speed,
                           parity_texts, runtime_forward)
from qat.jobs.report import CalibrationRecord, DataSummary, RecipeSummary, RunReport, bucket_chart, write_report
from qat.jobs.sensitivity import write_outputs
from qat.load import batches, truncated
from qat.quant.config import AUTO, SmoothQuantConfig
from qat.quant.numerics import cpu_has_native_bf16, cpu_has_vnni
from qat.quant.qconf import Qconf
from qat.quant.simulate import FakeQuantModel, simulate

log = logging.getLogger(__name__)
ARTIFACT_DIR = "ptq"


def given_artifact(cfg: RunConfig, run_dir: Path) -> Path | None:
    """The PTQ artifact the run starts from instead of making one: ptq.artifact, or a resumed run's own."""
    if cfg.ptq.artifact:
        return Path(cfg.ptq.artifact)
    path = run_dir / ARTIFACT_DIR
    return path if path.exists() and cfg.train.resume is not None else None


def check_given_paths(cfg: RunConfig, run_dir: Path) -> None:
    """What the run is given to start from exists and has the right shape (before any model is loaded): a PTQ
    artifact, a foreign qconf, a checkpoint to resume."""
    recovery.resolve_resume(cfg.train.resume, run_dir / recovery.CHECKPOINT_DIR)
    if cfg.ptq.artifact:
        ptq.check_ptq_artifact(Path(cfg.ptq.artifact))
    if cfg.ptq.qconf:
        Qconf.read(cfg.ptq.qconf)


def make_ptq(cfg: RunConfig, session: Session, run_dir: Path) -> ptq.PtqModel:
    """Restore the given qconf, or calibrate (the sensitivity analysis first, when enabled; its outputs are
    written to <run>/sensitivity)."""
    if cfg.ptq.qconf:
        return ptq.restore(session.encoder, cfg.ptq.qconf, session.calibration, cfg.quant)
    request = None
    if cfg.sensitivity.enabled:
        metrics = [session.metrics["recovery.metric"], session.metrics["sensitivity.metric"]]
        measure = session.measure(metrics)
        request = ptq.SensitivityRequest(cfg.sensitivity, cfg.recovery, measure, measure(session.fp32()))
    data = ptq.calibration_data(cfg.calib.samples, cfg.data.calibration, cfg.data.mix, session.origins)
    model = ptq.calibrate(session.encoder, session.calibration, cfg.recipe, session.measure(list(ptq.ALPHA_OBJECTIVES)),
                          request, data, recovery.fidelity_floor(cfg.recovery, session.encoder.pairs))
    if model.sensitivity is not None:
        write_outputs(model.sensitivity, session.encoder.source, cfg.quant, run_dir / "sensitivity")
    return model


def prepare_ptq(cfg: RunConfig, session: Session, run_dir: Path, accelerator: Accelerator) -> ptq.PtqModel:
    """The run's PTQ model. The main process makes and writes it; the others read what it wrote."""
    given = given_artifact(cfg, run_dir)
    if given is not None:
        log.info("starting from the PTQ artifact %s", given)
        return ptq.read(given)
    path = run_dir / ARTIFACT_DIR
    model = None
    if accelerator.is_main_process:
        model = make_ptq(cfg, session, run_dir)
        ptq.write_ptq_artifact(path, dataclasses.replace(session.encoder, model=model.model), model.qconf,
                               model.metadata)
    accelerator.wait_for_everyone()
    return model if model is not None else ptq.read(path)


def export_and_evaluate(cfg: RunConfig, session: Session, models: dict[Stage, FakeQuantModel], run_dir: Path,
                        embedded: dict[Stage, Table]) -> tuple[dict[Stage, ExportRecord], dict[Variant, Table]]:
    """Each int8 model exported with its parity record, then embedded: fp32 and every export on all evaluation
    texts (fp32's dev embeddings reused), each fake-quant simulation on the held-out texts and the guard only (its
    fidelity; the task sets are scored on the exports, which are what is delivered), unless `embedded` already
    holds them (PTQ's, embedded for the decision)."""
    texts, fidelity_texts = session.data.texts(), session.data.fidelity_only().texts()
    warmup = next(batches(session.encoder, session.data.heldout, 8))
    judged = parity_texts(session.data.heldout, session.encoder.max_length, cfg.export.parity_passages)
    fp32 = session.fp32_table(texts + judged.passages)
    tables = {Variant.FP32: fp32}
    exports = {}
    for stage, sim in models.items():
        exports[stage] = export_verified(sim, session.encoder, judged, fp32, cfg.export,
                                         run_dir / "export" / stage, cfg.eval.batch_size, cfg.seed)
        fakequant, int8 = stage.variants
        known = embedded.get(stage, {})
        tables[fakequant] = ({text: known[text] for text in fidelity_texts} if all(t in known for t in fidelity_texts)
                             else session.embed(sim.eval(), fidelity_texts))
        first = next(iter(exports[stage].runtimes.values()))   # the first target stands for the int8 model
        tables[int8] = session.embed(runtime_forward(first.path, first.runtime, ExportSignature.of(session.encoder),
                                                     warmup), texts)
    return exports, tables


def training_gpu(device: str) -> bool:
    """train.device=auto trains on a CUDA GPU where one is there."""
    return device == AUTO and torch.cuda.is_available()


def training_bf16(setting: bool | str, gpu: bool = False) -> bool:
    """train.bf16: auto trains under bf16 autocast where the device computes bf16 natively (a CPU with AVX-512 BF16
    or AMX: 1.6x per step measured on all-mpnet-base-v2; a GPU that supports it), never where it is emulated."""
    native = torch.cuda.is_bf16_supported() if gpu else cpu_has_native_bf16()
    bf16 = native if setting == AUTO else bool(setting)
    log.info("training on %s, autocast %s", torch.cuda.get_device_name() if gpu else "the CPU",
             "bf16" if bf16 else "off (fp32)")
    return bf16


def run_train(cfg: RunConfig, run_dir: Path) -> RunReport | None:
    """The recovery job; returns its report (None on the other processes of a multi-process launch)."""
    check_given_paths(cfg, run_dir)
    check_targets(cfg.export.targets)
    metrics = {"recovery.metric": cfg.recovery.metric}
    if cfg.sensitivity.enabled:
        metrics["sensitivity.metric"] = cfg.sensitivity.metric
    session = open_session(cfg.model, cfg.data, cfg.eval, seed=cfg.seed, threads=cfg.threads, metrics=metrics,
                           training=cfg.train.enabled)
    if given_artifact(cfg, run_dir) is None and not cfg.ptq.qconf:
        ptq.check_recipe(session.encoder, session.calibration, cfg.quant)
    cfg = dataclasses.replace(cfg, recovery=dataclasses.replace(cfg.recovery, metric=session.metrics["recovery.metric"]))
    task_loss = cfg.train.enabled and cfg.train.task_weight > 0
    if cfg.train.enabled:
        recovery.check_loss_terms(session.encoder, cfg.train)
    training_set = (training_texts(cfg.data, set(session.data.texts()), session.encoder.pairs, task_loss)
                    if cfg.train.enabled else None)
    cut = truncated(session.encoder, list(dict.fromkeys(
        session.calibration + session.data.texts() + (training_set.texts if training_set else []))))
    if cut:
        log.warning("%d calibration, training and evaluation texts are longer than the model's max length (%d tokens) "
                    "and are cut to it", cut, session.encoder.max_length)
    gpu = cfg.train.enabled and training_gpu(cfg.train.device)
    accelerator = Accelerator(
        cpu=not gpu, log_with="tensorboard", project_dir=str(run_dir), gradient_accumulation_steps=cfg.train.grad_accum,
        mixed_precision="bf16" if training_bf16(cfg.train.bf16, gpu) else "no",
        dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True))
    accelerator.init_trackers("tensorboard")
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    ptq_model = prepare_ptq(cfg, session, run_dir, accelerator)
    seconds["calibrate"] = time.perf_counter() - start
    models = {Stage.PTQ: simulate(ptq_model.model, ptq_model.qconf).eval()}
    ptq_table = session.embed(models[Stage.PTQ], session.dev.texts())
    ptq_dev, noise = session.dev_metrics_and_noise(ptq_table, cfg.recovery.metric)
    decision = recovery.decide_recovery(cfg.recovery, cfg.train.enabled, session.fp32_dev_metrics, ptq_dev,
                                        session.encoder.pairs)
    training = None
    if decision.train:
        train_dev = session.dev.sampled(cfg.train.dev_items, cfg.seed)   # what each evaluation during training reads
        sampled = train_dev.tasks != session.dev.tasks
        start = session.dev_metrics_and_noise(ptq_table, cfg.recovery.metric, train_dev) if sampled else (ptq_dev, noise)
        fp32_sample = evaluate(session.fp32_dev, session.fp32_dev, train_dev)
        log.info("dev %s during training: %s; level within %.4f (half its 95%% bootstrap interval)",
                 cfg.recovery.metric, "a fixed sample" if sampled else "all of it", start[1])
        models[Stage.QAT], training = recovery.recover(
            accelerator, ptq_model.model, ptq_model.qconf, encoder=session.encoder, fp32=session.fp32(),
            train=dataclasses.replace(cfg.train, rounding_only=recovery.rounding_only(cfg.train.rounding_only, decision)),
            teacher=cfg.teacher, metric=cfg.recovery.metric, seed=cfg.seed,
            settings=Settings.of(cfg), training=training_set, checkpoints=run_dir / recovery.CHECKPOINT_DIR,
            evaluate_dev=lambda forward: session.evaluate_dev(forward, train_dev),
            ptq_dev=recovery.StartingPoint(*start, fp32=fp32_sample[cfg.recovery.metric], sampled=sampled))
        seconds["train"] = training.seconds
    if not accelerator.is_main_process:
        accelerator.end_training()
        return None

    start = time.perf_counter()
    exports, tables = export_and_evaluate(cfg, session, models, run_dir, {Stage.PTQ: ptq_table})
    seconds["export_and_evaluate"] = time.perf_counter() - start
    simulated = {variant for stage in models for variant in stage.variants[:1]}
    variants = {variant: evaluate(table, tables[Variant.FP32],
                                  session.data.fidelity_only() if variant in simulated else session.data)
                for variant, table in tables.items()}
    for variant, values in variants.items():
        accelerator.log({f"eval/{variant}/{key}": value for key, value in values.items()}, step=0)
    differences = compare_variants(tables, session.data)
    buckets = score_buckets(tables, session.data)
    accelerator.get_tracker("tensorboard", unwrap=True).add_figure("eval/score_buckets", bucket_chart(buckets))
    accelerator.end_training()

    metadata = ptq_model.metadata
    made = metadata.smoothquant   # as the PTQ model was made ('auto' resolved); none for a restored qconf
    smoothquant = (SmoothQuantConfig(made.enabled, made.alpha, made.candidates, made.modules) if made
                   else SmoothQuantConfig())
    equalize = ptq.as_made(cfg.equalize, metadata.equalize.choice if metadata.equalize else None)
    report = RunReport(
        model=session.encoder.source, run_dir=str(run_dir), ptq_source=metadata.source,
        recipe=RecipeSummary(sorted(k for k, n in ptq_model.qconf.int8_counts().items() if n),
                             ptq_model.skip if metadata.recipe else cfg.quant.skip,
                             (metadata.recipe or cfg.quant).context_matmul),
        calibration=CalibrationRecord(**vars(cfg.calib), texts=cfg.calib.samples),
        smoothquant=smoothquant, smoothquant_choice=made.choice if made else None,
        smoothquant_unsmoothed=made.unsmoothed if made else [], smoothquant_auto=made.auto if made else "",
        equalize=equalize, equalize_choice=metadata.equalize.choice if metadata.equalize else None,
        data=DataSummary(len(session.data.heldout), len(session.data.guard), list(session.data.tasks),
                         len(session.calibration), training_set.counts() if training_set else {},
                         session.encoder.max_length, cut),
        recovery=decision, training=training, final=Stage.QAT if training is not None else Stage.PTQ,
        variants=variants, differences=differences, buckets=buckets,
        exports=exports, weight_range=ptq_model.qconf.weight_range, cpu_has_vnni=cpu_has_vnni(), seconds=seconds,
        versions=library_versions())
    if cfg.export.speed_rounds:
        start, final = time.perf_counter(), exports[report.final]
        report.speed = measure_speed(session.fp32(), {r: made.path for r, made in final.runtimes.items()},
                                     ExportSignature.of(session.encoder), session.encoder.tokenizer.vocab_size,
                                     session.encoder.max_length, cfg.export.speed_rounds)
        seconds["speed"] = time.perf_counter() - start   # the report's dict
    path = write_report(run_dir, report)
    failed = [f"{stage}/{runtime}" for stage, export in exports.items() for runtime in export.failed]
    if failed:
        raise QatError(f"parity check failed for {failed}: exported int8 does not compute its fake-quant model "
                       f"(unfused beyond {cfg.export.parity_unfused_atol}, or fused neither within cosine "
                       f"{cfg.export.parity_mean_cosine}/{cfg.export.parity_min_cosine} nor as faithful to fp32 "
                       f"within {cfg.export.parity_fidelity_tolerance} or its rounding spread); see {path}")
    log.info("report: %s", path)
    return report
