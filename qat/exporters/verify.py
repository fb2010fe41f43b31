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
from qat.exporters.parity import ParityRecord, ParityTexts, Simulated, judge_parity, simulated_tables, unfused
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
    frozen graph; OpenVINO: the compiled GEMMs' runtime precisions; ONNX Runtime: its integer kernels), parity on
    the held-out texts and on passages of the serving length (None where none were asked for)."""

    runtime: Runtime
    path: Path
    int8_ops: dict[str, int]
    parity: ParityRecord
    passage_parity: ParityRecord | None

    @property
    def passed(self) -> bool:
        return self.parity.passed and (self.passage_parity is None or self.passage_parity.passed)


@dataclass
class ExportRecord:
    folder: Path
    runtimes: dict[Runtime, RuntimeExport]

    @property
    def passed(self) -> bool:
        return all(export.passed for export in self.runtimes.values())

    @property
    def failed(self) -> list[Runtime]:
        return [runtime for runtime, export in self.runtimes.items() if not export.passed]


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


def export_verified(sim: FakeQuantModel, encoder: Encoder, texts: ParityTexts, fp32: Table, cfg: ExportConfig,
                    out_dir: Path, batch_size: int, seed: int) -> ExportRecord:
    """A self-contained export folder (one model file per target, the tokenizer, qat_model.json and the
    sentence-transformers layout), with each export's parity records. `fp32` holds fp32 outputs of `texts.all()`."""
    example = next(batches(encoder, texts.heldout, 8))
    signature = ExportSignature.of(encoder)
    if Runtime.IPEX in map(Runtime, cfg.targets):
        # Importing IPEX replaces some of torch's CPU kernels: the simulation that IPEX's unfused graph must equal
        # exactly runs on the same kernels.
        from qat.exporters import ipex  # noqa: F401
    # Each set embedded on its own, in the same batches by every model: padding to another length changes the
    # GEMMs' shapes, hence their summation order, and exactness could not be asked.
    heldout_sims = simulated_tables(sim, encoder, texts.heldout, batch_size, seed)
    passage_sims = simulated_tables(sim, encoder, texts.passages, batch_size, seed) if texts.passages else None

    def judged(fused: Forward, unfused_forward: Forward | None, judged_texts: list[Text],
               sims: Simulated) -> ParityRecord:
        unfused_table = None if unfused_forward is None else embed(unfused_forward, encoder, judged_texts, batch_size)
        return judge_parity(fp32, sims.plain, embed(fused, encoder, judged_texts, batch_size), unfused_table,
                            sims.noisy, judged_texts, cfg)

    runtimes = {}
    for runtime in map(Runtime, cfg.targets):
        path, evidence, fused, unfused_forward = _exported(runtime, sim, signature, example, out_dir)
        runtimes[runtime] = RuntimeExport(
            runtime, path, evidence, judged(fused, unfused_forward, texts.heldout, heldout_sims),
            None if passage_sims is None else judged(fused, unfused_forward, texts.passages, passage_sims))
    write_export_folder(out_dir, encoder, sim.qconf,
                        {str(runtime): export.path.relative_to(out_dir) for runtime, export in runtimes.items()})
    return ExportRecord(out_dir, runtimes)
