"""The job behind `python -m qat.export`: a PTQ artifact (and a trained student's weights) into a self-contained
export folder, with its parity check; no calibration, no training."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from qat.ptq.artifact import read_ptq_artifact
from qat.base.atomic import write_json
from qat.config import ExportRunConfig
from qat.data import load_texts
from qat.base.errors import QatError
from qat.evaluation.metrics import Stage, embed
from qat.exporters.parity import parity_texts
from qat.exporters.verify import ExportRecord, check_targets, export_verified
from qat.quant.simulate import FakeQuantModel, simulate
from qat.quant.wrapper import EncoderModule
from qat.evaluation import use_threads

RESULT_FILE = "export.json"
ACCELERATE_MODEL_FILE = "model.safetensors"   # what accelerate's save_state writes into a checkpoint folder


def load_student_weights(sim: FakeQuantModel, weights: Path) -> None:
    """A trained student's state (best_student.safetensors, or a checkpoint folder's model) into the simulation."""
    path = weights / ACCELERATE_MODEL_FILE if weights.is_dir() else weights
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise QatError(f"source.weights={str(weights)!r} cannot be read ({error}); expected a run's "
                       "checkpoints/best_student.safetensors or a checkpoint folder step_*") from None
    missing, unexpected = sim.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise QatError(f"source.weights={str(weights)!r} do not fit the artifact's student (missing {missing[:2]}, "
                       f"unexpected {unexpected[:2]}); expected weights trained from this PTQ artifact")


def run_export(cfg: ExportRunConfig, run_dir: Path) -> ExportRecord:
    use_threads(cfg.threads)
    check_targets(cfg.export.targets)
    artifact = read_ptq_artifact(Path(cfg.source.artifact))
    sim = simulate(artifact.encoder.model, artifact.qconf).eval()
    if cfg.source.weights:
        load_student_weights(sim, Path(cfg.source.weights))
    texts = parity_texts(load_texts(cfg.data.heldout, artifact.encoder.pairs), artifact.encoder.max_length,
                         cfg.export.parity_passages)
    fp32 = embed(EncoderModule(artifact.encoder.model).eval(), artifact.encoder, texts.all(), cfg.eval.batch_size)
    stage = Stage.QAT if cfg.source.weights else Stage.PTQ
    record = export_verified(sim, artifact.encoder, texts, fp32, cfg.export, run_dir / "export" / stage,
                             cfg.eval.batch_size, cfg.seed)
    write_json(run_dir / RESULT_FILE, asdict(record))
    if not record.passed:
        raise QatError(f"parity check failed for {[str(r) for r in record.failed]}: the export in {record.folder} does "
                       f"not compute its fake-quant model; see {run_dir / RESULT_FILE}")
    return record
