"""The job behind `python -m qat.evaluation.metrics`: an int8 model (an export folder, or a TorchScript file with model.*'s
tokenizer) against the fp32 model.* on the configured held-out texts and task sets, and optionally against a
baseline export (target.baseline), written as the run report's variant and difference tables (evaluation.json,
evaluation.md)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
import logging
import time
from pathlib import Path

from qat.base.atomic import write_json, write_text
from qat.config import EvaluateRunConfig
from qat.data import Text
from qat.base.errors import QatError
from qat.evaluation.metrics import Metrics, Table, Variant, evaluate
from qat.exporters.folder import EXPORT_FORMAT, ExportInfo
from qat.exporters.loader import Int8Encoder, load_int8
from qat.load import Encoder
from qat.jobs.report import difference_table, variant_table
from qat.evaluation.session import open_session
from qat.evaluation.significance import EVALUATE_COMPARISONS, Difference, compare_variants

RESULT_FILE = "evaluation.json"
log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    target: str
    runtime: str                        # the runtime that ran the int8 models
    model: str                          # the fp32 reference
    variants: dict[Variant, Metrics]    # fp32, the int8 target and the baseline, if given
    differences: dict[str, dict[str, Difference]]   # 'int8 - fp32' (and 'int8 - baseline') -> task metric -> difference


def _export(key: str, folder: str, encoder: Encoder, backend: str | None) -> Int8Encoder:
    target = load_int8(folder, backend)
    if target.info.kind != encoder.kind:
        raise QatError(f"{key}={folder!r} holds a model of kind {target.info.kind!r} but model.* ({encoder.source}) "
                       f"is of kind {encoder.kind!r}; expected an export of model.*")
    return target


def _target(cfg: EvaluateRunConfig, encoder: Encoder) -> Int8Encoder:
    if cfg.target.folder:
        return _export("target.folder", cfg.target.folder, encoder, cfg.target.backend)
    path = Path(cfg.target.torchscript)
    if not path.is_file():
        raise QatError(f"target.torchscript={str(path)!r} does not exist; expected a TorchScript file")
    from qat.exporters.ipex import load_exported   # an IPEX TorchScript: IPEX registers its int8 kernels

    info = ExportInfo(EXPORT_FORMAT, encoder.kind, encoder.pooling, encoder.max_length, encoder.input_names, {},
                      normalize=encoder.normalize, prompts=encoder.prompts)
    return Int8Encoder(load_exported(path), encoder.tokenizer, info)


def run_evaluation(cfg: EvaluateRunConfig, run_dir: Path) -> Evaluation:
    session = open_session(cfg.model, cfg.data, cfg.eval, seed=cfg.seed, threads=cfg.threads, metrics={},
                           calibration=False)
    target = _target(cfg, session.encoder)
    texts = session.data.texts()
    fp32 = session.fp32_table(texts)
    tables: dict[Variant, Table] = {Variant.FP32: fp32, Variant.INT8: _outputs(target, texts, cfg.eval.batch_size)}
    if cfg.target.baseline:
        baseline = _export("target.baseline", cfg.target.baseline, session.encoder, cfg.target.backend)
        tables[Variant.BASELINE] = _outputs(baseline, texts, cfg.eval.batch_size)
    variants = {variant: evaluate(table, fp32, session.data) for variant, table in tables.items()}
    differences = compare_variants(tables, session.data, EVALUATE_COMPARISONS, cfg.seed)
    result = Evaluation(cfg.target.folder or cfg.target.torchscript, target.backend, session.encoder.source, variants,
                        differences)
    write_json(run_dir / RESULT_FILE, asdict(result))
    heading = f"# {result.target} against fp32 {result.model}" + (f" and {cfg.target.baseline}" if cfg.target.baseline
                                                                    else "")
    write_text(run_dir / "evaluation.md", "\n".join([heading, "", *variant_table(variants, result.runtime), "",
                                                     *difference_table(differences), ""]))
    return result


def _outputs(model: Int8Encoder, texts: list[Text], batch_size: int) -> Table:
    start = time.perf_counter()
    table = dict(zip(texts, model.outputs(texts, batch_size=batch_size, normalize_embeddings=True)))   # scored by cosine
    log.info("int8 (%s): %d texts in %.1f s", model.backend, len(texts), time.perf_counter() - start)
    return table
