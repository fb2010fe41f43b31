"""The job behind `python -m qat.train`: calibrate -> PTQ artifact -> simulate -> export -> evaluate -> report."""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from qat.artifact import library_versions, write_ptq_artifact
from qat.calibrate import calibrate
from qat.config import ExportConfig, RunConfig
from qat.data import load_task, load_texts
from qat.errors import QatError
from qat.evaluate import EvalData, cosine_fidelity, embed, evaluate
from qat.export.ipex import export_ipex, load_exported
from qat.numerics import cpu_has_vnni
from qat.load import EncoderModule, batches, load_encoder
from qat.quant.simulate import fake_quantize
from qat.report import write_report

log = logging.getLogger(__name__)


def parity(reference: dict[str, torch.Tensor], candidate: dict[str, torch.Tensor], texts: list[str],
           cfg: ExportConfig) -> dict[str, Any]:
    """Exported int8 against the fake-quant model it came from, on held-out texts."""
    ref, cand = torch.stack([reference[t] for t in texts]), torch.stack([candidate[t] for t in texts])
    result: dict[str, Any] = cosine_fidelity(ref, cand)
    result.update(max_abs_diff=(ref - cand).abs().max().item(), texts=len(texts),
                  thresholds={"cosine_mean": cfg.parity_mean_cosine, "cosine_min": cfg.parity_min_cosine})
    result["passed"] = result["cosine_mean"] >= cfg.parity_mean_cosine and result["cosine_min"] >= cfg.parity_min_cosine
    return result


def run_pipeline(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    if cfg.train.enabled:
        raise QatError("train.enabled=true but recovery training (QAT) is not implemented yet; expected train=none")
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    set_seed(cfg.seed)
    tracker = Accelerator(cpu=True, log_with="tensorboard", project_dir=str(run_dir))
    tracker.init_trackers("tensorboard")
    seconds: dict[str, float] = {}

    calib_texts = load_texts(cfg.data.calibration)
    data = EvalData(load_texts(cfg.data.heldout), {name: load_task(src) for name, src in cfg.data.tasks.items()})
    encoder = load_encoder(cfg.model)

    start = time.perf_counter()
    qconf = calibrate(encoder, calib_texts, cfg.calib, cfg.quant)
    ptq_dir = write_ptq_artifact(run_dir / "ptq", encoder, qconf, {
        "recipe": asdict(cfg.quant), "calibration": asdict(cfg.calib),
        "calibration_data": {"source": asdict(cfg.data.calibration), "texts": cfg.calib.samples},
    })
    seconds["calibrate"] = time.perf_counter() - start
    log.info("PTQ artifact: %s (int8 ops %s)", ptq_dir, qconf.int8_counts())

    simulated = fake_quantize(EncoderModule(copy.deepcopy(encoder.model)), qconf).eval()
    log.info("recovery training (QAT): not implemented yet, skipped; the exported model is the PTQ model")

    start = time.perf_counter()
    example = next(batches(encoder, data.heldout, 8))
    exported_path = export_ipex(encoder.model, qconf, simulated.weight_qparams(), example, run_dir / "export")
    exported = load_exported(exported_path.path)
    seconds["export"] = time.perf_counter() - start

    start = time.perf_counter()
    texts, size = data.texts(), cfg.eval.batch_size
    tables = {
        "fp32": embed(EncoderModule(encoder.model).eval(), encoder, texts, size),
        "ptq_fakequant": embed(simulated, encoder, texts, size),
        "ptq_int8": embed(exported, encoder, texts, size),
    }
    variants = {name: evaluate(table, tables["fp32"], data) for name, table in tables.items()}
    check = parity(tables["ptq_fakequant"], tables["ptq_int8"], data.heldout, cfg.export)
    seconds["evaluate"] = time.perf_counter() - start

    for name, metrics in variants.items():
        tracker.log({f"eval/{name}/{key}": value for key, value in metrics.items()}, step=0)
    tracker.log({f"parity/{k}": v for k, v in check.items() if isinstance(v, float)}, step=0)
    tracker.end_training()

    report = {
        "model": encoder.source, "run_dir": str(run_dir), "recipe": asdict(cfg.quant),
        "calibration": {**asdict(cfg.calib), "texts": cfg.calib.samples},
        "data": {"heldout_texts": len(data.heldout), "tasks": list(data.tasks)},
        "variants": variants, "parity": check,
        "export": {"graph_int8_ops": exported_path.graph_int8_ops, "qconf_int8_ops": qconf.int8_counts(),
                   "weight_range": qconf.weight_range, "cpu_has_vnni": cpu_has_vnni()},
        "qat": "not implemented yet (skipped); the exported model is the PTQ model",
        "artifacts": {"ptq": str(ptq_dir), "int8_model": str(exported_path.path), "qconf": str(exported_path.qconf_path)},
        "seconds": seconds, "versions": library_versions(),
    }
    path = write_report(run_dir, report)
    if not check["passed"]:
        raise QatError(f"parity check failed: exported int8 vs fake-quant cosine mean {check['cosine_mean']:.6f}, "
                       f"min {check['cosine_min']:.6f}; expected at least {check['thresholds']}; see {path}")
    log.info("report: %s", path)
    return report
