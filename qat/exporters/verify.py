"""Export a simulated int8 model and verify it: the export stage's entry, returning what was written and proven."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qat.config import ExportConfig
from qat.data import Text
from qat.evaluation.metrics import Table
from qat.exporters.folder import write_export_folder
from qat.exporters.ipex import export_ipex
from qat.exporters.parity import ParityRecord, check_parity
from qat.load import Encoder, batches
from qat.quant.simulate import FakeQuantModel


@dataclass
class ExportRecord:
    path: Path
    qconf: Path
    graph_int8_ops: dict[str, int]
    parity: ParityRecord


def export_verified(sim: FakeQuantModel, encoder: Encoder, heldout: list[Text], fp32: Table, cfg: ExportConfig,
                    out_dir: Path, batch_size: int, seed: int) -> ExportRecord:
    """A self-contained export folder (IPEX int8 TorchScript of the simulation's current weights and frozen scales,
    tokenizer, qat_model.json), with its parity record."""
    example = next(batches(encoder, heldout, 8))
    result = export_ipex(sim.to_float().eval(), sim.qconf, sim.weight_qparams(), example, out_dir)
    write_export_folder(out_dir, encoder, sim.qconf)
    parity = check_parity(sim, result.path, encoder, heldout, fp32, cfg, batch_size, seed)
    return ExportRecord(result.path, result.qconf_path, result.graph_int8_ops, parity)
