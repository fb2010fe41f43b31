"""ONNX Runtime int8: the fake-quant model exported with `torch.onnx.export(..., dynamo=False)`, which writes each
fake-quant op as a QuantizeLinear/DequantizeLinear pair carrying qat's own scales (frozen activation scales,
per-channel weight scales); ONNX Runtime fuses QDQ around MatMul into integer kernels. The check reads the graph
ONNX Runtime actually runs (its optimized model) and counts those kernels: an export that would run fp32 fails."""
from __future__ import annotations

import logging
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import torch

from qat.base.atomic import atomic_path
from qat.base.errors import QatError
from qat.exporters.signature import ExportSignature, NamedInputs

log = logging.getLogger(__name__)
MODEL_FILE = "onnx/model_qint8.onnx"
OPSET = 17
# ONNX Runtime's integer kernels (CPU): what QDQ around a MatMul / Gemm becomes once fused.
INTEGER_KERNELS = frozenset({"QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                             "QGemm", "QAttention", "QLinearAdd", "QLinearMul", "QLinearSoftmax"})


def _session(path: Path, optimized: Path | None = None) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3   # its note that an optimized model is CPU-specific: this one is only read here
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def integer_kernels(path: Path) -> dict[str, int]:
    """The integer kernels in the graph ONNX Runtime runs for this model (its optimized model, read back)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        _session(path, optimized)
        graph = onnx.load(str(optimized)).graph
    return dict(Counter(node.op_type for node in graph.node if node.op_type in INTEGER_KERNELS))


def export_onnx(model: torch.nn.Module, signature: ExportSignature, example: tuple[torch.Tensor, ...],
                out_dir: Path) -> tuple[Path, dict[str, int]]:
    """Write <out_dir>/onnx/model_qint8.onnx from the fake-quant model and return it with its integer kernels;
    refuse (and write nothing) where ONNX Runtime would run no integer kernel."""
    path = out_dir / MODEL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    named = NamedInputs(model, signature).eval()
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the tracer's notes on Python values (masks, shapes) are intended
        torch.onnx.export(named, example, str(tmp), dynamo=False, opset_version=OPSET,
                          input_names=signature.inputs, output_names=[signature.output],
                          dynamic_axes={name: {0: "batch", 1: "sequence"} for name in signature.inputs})
        kernels = integer_kernels(tmp)
        if not kernels:
            raise QatError(f"ONNX export {path}: ONNX Runtime runs no integer kernel for it (expected "
                           f"{sorted(INTEGER_KERNELS)[:3]}...); refusing to save an export that stays fp32")
    log.info("exported ONNX QDQ int8 to %s (ONNX Runtime integer kernels: %s)", path, kernels)
    return path, kernels


def load_onnx(path: Path, signature: ExportSignature):
    """The ONNX export as a forward: (input_ids, attention_mask[, token_type_ids]) -> the model's output."""
    if not path.is_file():
        raise QatError(f"ONNX export {str(path)!r} does not exist; expected {MODEL_FILE} in an export folder")
    session = _session(path)

    def forward(*inputs: torch.Tensor) -> torch.Tensor:
        feeds = {name: tensor.numpy() for name, tensor in zip(signature.inputs, inputs)}
        return torch.from_numpy(session.run([signature.output], feeds)[0])

    return forward
