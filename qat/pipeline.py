"""The job behind `python -m qat.train`: session -> PTQ model -> decide -> train -> export and parity -> evaluate
-> report."""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration

from qat.artifact import library_versions
from qat.config import RunConfig
from qat.data import training_texts
from qat.errors import QatError
from qat.evaluate import MODEL_VARIANTS, Table, Variant, evaluate, score_buckets
from qat.export.ipex import load_exported
from qat.export.verify import ExportRecord, export_verified
from qat.load import batches
from qat.numerics import cpu_has_vnni
from qat.ptq import check_given_paths, given_artifact, prepare_ptq
from qat.quant.simulate import FakeQuantModel, simulate
from qat.recovery import decide_recovery, recover
from qat.report import CalibrationRecord, DataSummary, RecipeSummary, RunReport, bucket_chart, write_report
from qat.session import Session, open_session
from qat.significance import compare_variants
from qat.trainer import check_task_model
from qat.trials import as_made

log = logging.getLogger(__name__)


def export_and_evaluate(cfg: RunConfig, session: Session, models: dict[str, FakeQuantModel],
                        run_dir: Path) -> tuple[dict[str, ExportRecord], dict[Variant, Table]]:
    """Each int8 model exported with its parity record, then fp32, every simulation and every export embedded on
    all evaluation texts."""
    texts = session.data.texts()
    warmup = next(batches(session.encoder, session.data.heldout, 8))
    tables = {Variant.FP32: session.embed(session.fp32(), texts)}
    exports = {}
    for name, sim in models.items():
        exports[name] = export_verified(sim, session.encoder, session.data.heldout, tables[Variant.FP32], cfg.export,
                                        run_dir / "export" / name, cfg.eval.batch_size, cfg.seed)
        fakequant, int8 = MODEL_VARIANTS[name]
        tables[fakequant] = session.embed(sim.eval(), texts)
        tables[int8] = session.embed(load_exported(exports[name].path, warmup), texts)
    return exports, tables


def run_pipeline(cfg: RunConfig, run_dir: Path) -> RunReport | None:
    """The recovery job; returns its report (None on the other processes of a multi-process launch)."""
    check_given_paths(cfg, run_dir)
    metrics = {"recovery.metric": cfg.recovery.metric}
    if cfg.sensitivity.enabled:
        metrics["sensitivity.metric"] = cfg.sensitivity.metric
    calibrates = given_artifact(cfg, run_dir) is None and not cfg.ptq.qconf
    session = open_session(cfg.model, cfg.data, cfg.eval, seed=cfg.seed, threads=cfg.threads, metrics=metrics,
                           recipe=cfg.quant if calibrates else None)
    cfg = dataclasses.replace(cfg, recovery=dataclasses.replace(cfg.recovery, metric=session.metrics["recovery.metric"]))
    task_loss = cfg.train.enabled and cfg.train.task_weight > 0
    if task_loss:
        check_task_model(session.encoder)
    training_set = (training_texts(cfg.data, set(session.data.texts()), session.encoder.pairs, task_loss)
                    if cfg.train.enabled else None)
    accelerator = Accelerator(
        cpu=True, log_with="tensorboard", project_dir=str(run_dir), gradient_accumulation_steps=cfg.train.grad_accum,
        mixed_precision="bf16" if cfg.train.bf16 else "no",
        dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True))
    accelerator.init_trackers("tensorboard")
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    ptq = prepare_ptq(cfg, session, run_dir, accelerator)
    seconds["calibrate"] = time.perf_counter() - start
    models = {"ptq": simulate(ptq.model, ptq.qconf).eval()}
    ptq_dev = session.evaluate_dev(models["ptq"])
    decision = decide_recovery(cfg.recovery, cfg.train.enabled, session.fp32_dev_metrics, ptq_dev)
    training = None
    if decision.train:
        models["qat"], training = recover(cfg, accelerator, session, ptq.model, ptq.qconf, training_set, run_dir,
                                          ptq_dev)
        seconds["train"] = training.seconds
    if not accelerator.is_main_process:
        accelerator.end_training()
        return None

    start = time.perf_counter()
    exports, tables = export_and_evaluate(cfg, session, models, run_dir)
    seconds["export_and_evaluate"] = time.perf_counter() - start
    variants = {variant: evaluate(table, tables[Variant.FP32], session.data) for variant, table in tables.items()}
    for variant, values in variants.items():
        accelerator.log({f"eval/{variant}/{key}": value for key, value in values.items()}, step=0)
    differences = compare_variants(tables, session.data)
    buckets = score_buckets(tables, session.data)
    accelerator.get_tracker("tensorboard", unwrap=True).add_figure("eval/score_buckets", bucket_chart(buckets))
    accelerator.end_training()

    report = RunReport(
        model=session.encoder.source, run_dir=str(run_dir), ptq_source=ptq.source,
        recipe=RecipeSummary(sorted(k for k, n in ptq.qconf.int8_counts().items() if n), ptq.skip),
        calibration=CalibrationRecord(**vars(cfg.calib), texts=cfg.calib.samples),
        smoothquant=as_made(cfg.smoothquant, ptq.choice("smoothquant")), smoothquant_choice=ptq.choice("smoothquant"),
        smoothquant_unsmoothed=ptq.unsmoothed,
        equalize=as_made(cfg.equalize, ptq.choice("equalize")), equalize_choice=ptq.choice("equalize"),
        data=DataSummary(len(session.data.heldout), len(session.data.guard), list(session.data.tasks),
                         len(session.calibration), training_set.counts() if training_set else {}),
        recovery=decision, training=training, final="qat" if training is not None else "ptq", variants=variants,
        differences=differences, buckets=buckets,
        exports=exports, weight_range=ptq.qconf.weight_range, cpu_has_vnni=cpu_has_vnni(), seconds=seconds,
        versions=library_versions())
    path = write_report(run_dir, report)
    failed = [name for name, export in exports.items() if not export.parity.passed]
    if failed:
        raise QatError(f"parity check failed for {failed}: exported int8 does not compute its fake-quant model "
                       f"(unfused beyond {cfg.export.parity_unfused_atol}, or fused neither within cosine "
                       f"{cfg.export.parity_mean_cosine}/{cfg.export.parity_min_cosine} nor as faithful to fp32 "
                       f"within {cfg.export.parity_fidelity_tolerance}); see {path}")
    log.info("report: %s", path)
    return report
