"""The job behind `python -m qat.evaluate`: an int8 model (an export folder, or a TorchScript file with model.*'s
tokenizer) against the fp32 model.* on the configured held-out texts and task sets, written as the run report's
variant table (evaluation.json, evaluation.md)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from qat.atomic import write_json, write_text
from qat.config import EvaluateRunConfig
from qat.errors import QatError
from qat.evaluate import Metrics, Table, Variant, evaluate
from qat.export.folder import EXPORT_FORMAT, ExportInfo
from qat.export.ipex import load_exported
from qat.int8_model import Int8Encoder, load_int8
from qat.load import Encoder
from qat.report import variant_table
from qat.session import open_session

RESULT_FILE = "evaluation.json"


@dataclass
class Evaluation:
    target: str
    model: str                          # the fp32 reference
    variants: dict[Variant, Metrics]    # fp32 and the int8 target


def _target(cfg: EvaluateRunConfig, encoder: Encoder) -> Int8Encoder:
    if cfg.target.folder:
        target = load_int8(cfg.target.folder)
        if target.info.kind != encoder.kind:
            raise QatError(f"target.folder={cfg.target.folder!r} holds a model of kind {target.info.kind!r} but model.* "
                           f"({encoder.source}) is of kind {encoder.kind!r}; expected the export of model.*")
        return target
    path = Path(cfg.target.torchscript)
    if not path.is_file():
        raise QatError(f"target.torchscript={str(path)!r} does not exist; expected a TorchScript file")
    info = ExportInfo(EXPORT_FORMAT, encoder.kind, encoder.pooling, encoder.max_length, encoder.input_names, {})
    return Int8Encoder(load_exported(path), encoder.tokenizer, info)


def run_evaluation(cfg: EvaluateRunConfig, run_dir: Path) -> Evaluation:
    session = open_session(cfg.model, cfg.data, cfg.eval, seed=cfg.seed, threads=cfg.threads, metrics={})
    target = _target(cfg, session.encoder)
    texts = session.data.texts()
    fp32 = session.embed(session.fp32(), texts)
    int8: Table = dict(zip(texts, target.outputs(texts, batch_size=cfg.eval.batch_size)))
    variants = {Variant.FP32: evaluate(fp32, fp32, session.data), Variant.INT8: evaluate(int8, fp32, session.data)}
    result = Evaluation(cfg.target.folder or cfg.target.torchscript, session.encoder.source, variants)
    write_json(run_dir / RESULT_FILE, asdict(result))
    write_text(run_dir / "evaluation.md", "\n".join([f"# {result.target} against fp32 {result.model}", "",
                                                     *variant_table(variants), ""]))
    return result
