"""Export a simulated int8 model for each target runtime and verify each export: the export stage's entry,
returning what was written and proven. Every runtime gets the same fake-quant model (frozen activation scales,
the trained weights with their per-channel scales, SmoothQuant and equalization folded, the skip list); an
export that does not run int8, or does not compute its simulation, fails loudly."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from qat.base.errors import QatError
from qat.config import RUNTIME_PACKAGES, ExportConfig
from qat.data import Text
from qat.evaluation.metrics import Forward, Table, embed
from qat.exporters import onnx, openvino
from qat.exporters.folder import write_export_folder
from qat.exporters.loader import runtime_forward
from qat.exporters.parity import ParityRecord, judge_parity, simulated_tables, unfused
from qat.exporters.signature import ExportSignature
from qat.load import Encoder, batches
from qat.quant.simulate import FakeQuantModel


class Runtime(StrEnum):
    IPEX = "ipex"
    OPENVINO = "openvino"
    ONNX = "onnx"


def check_targets(targets: list[str]) -> None:
    """Every export target can be built here: checked before a job calibrates or trains, not after."""
    for runtime in map(Runtime, targets):
        missing = [name for name in RUNTIME_PACKAGES[runtime] if importlib.util.find_spec(name) is None]
        if missing:
            extra = "ipex" if runtime is Runtime.IPEX else "runtimes"
            raise QatError(f"export target {str(runtime)!r} cannot be built on this machine: {', '.join(missing)} "
                           f"is not installed; expected the {extra} extra (pip install -e '.[{extra}]') or "
                           "export.targets without it ([auto]: every target installed here)")


@dataclass
class RuntimeExport:
    """One runtime's export: the model file, the evidence that the runtime runs it in int8 (IPEX: int8 ops of the
    frozen graph; OpenVINO: the compiled GEMMs' runtime precisions; ONNX Runtime: its integer kernels), parity."""

    runtime: Runtime
    path: Path
    int8_ops: dict[str, int]
    parity: ParityRecord


@dataclass
class ExportRecord:
    folder: Path
    runtimes: dict[Runtime, RuntimeExport]

    @property
    def passed(self) -> bool:
        return all(export.parity.passed for export in self.runtimes.values())

    @property
    def failed(self) -> list[Runtime]:
        return [runtime for runtime, export in self.runtimes.items() if not export.parity.passed]


def _exported(runtime: Runtime, sim: FakeQuantModel, signature: ExportSignature, example: tuple,
              out_dir: Path) -> tuple[Path, dict[str, int], Forward, Forward | None]:
    """Write one runtime's export; return it with its int8 evidence, its forward, and its unfused forward (IPEX)."""
    if runtime is Runtime.IPEX:
        from qat.exporters import ipex   # IPEX is imported only where it is a target

        result = ipex.export_ipex(sim.to_float().eval(), sim.qconf, sim.weight_qparams(), example, out_dir)
        return (result.path, result.graph_int8_ops, runtime_forward(result.path, runtime, signature, example),
                unfused(ipex.load_exported(result.path)))   # a fresh module: see unfused()
    export = onnx.export_onnx if runtime is Runtime.ONNX else openvino.export_openvino
    path, evidence = export(sim.frozen(), signature, example, out_dir)
    return path, evidence, runtime_forward(path, runtime, signature), None


def export_verified(sim: FakeQuantModel, encoder: Encoder, heldout: list[Text], fp32: Table, cfg: ExportConfig,
                    out_dir: Path, batch_size: int, seed: int) -> ExportRecord:
    """A self-contained export folder (one model file per target, the tokenizer, qat_model.json and the
    sentence-transformers layout), with each export's parity record. `fp32` holds fp32 outputs of `heldout`."""
    example = next(batches(encoder, heldout, 8))
    signature = ExportSignature.of(encoder)
    if Runtime.IPEX in map(Runtime, cfg.targets):
        # Importing IPEX replaces some of torch's CPU kernels: the simulation that IPEX's unfused graph must equal
        # exactly runs on the same kernels.
        from qat.exporters import ipex  # noqa: F401
    simulated = simulated_tables(sim, encoder, heldout, batch_size, seed)
    runtimes = {}
    for runtime in map(Runtime, cfg.targets):
        path, evidence, fused, unfused_forward = _exported(runtime, sim, signature, example, out_dir)
        unfused_table = None if unfused_forward is None else embed(unfused_forward, encoder, heldout, batch_size)
        parity = judge_parity(fp32, simulated.plain, embed(fused, encoder, heldout, batch_size), unfused_table,
                              simulated.noisy, heldout, cfg)
        runtimes[runtime] = RuntimeExport(runtime, path, evidence, parity)
    write_export_folder(out_dir, encoder, sim.qconf,
                        {str(runtime): export.path.relative_to(out_dir) for runtime, export in runtimes.items()})
    return ExportRecord(out_dir, runtimes)
