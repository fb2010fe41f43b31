"""ONNX Runtime int8: the fake-quant model exported with `torch.onnx.export(..., dynamo=False)`, which writes each
fake-quant op as a QuantizeLinear/DequantizeLinear pair carrying qat's own scales (frozen activation scales,
per-channel weight scales); each weight's QuantizeLinear is then computed once and its int8 result stored in the
file. ONNX Runtime fuses QDQ around MatMul into integer kernels. The check reads the graph ONNX Runtime actually
runs (its optimized model) and counts those kernels: an export that would run fp32 fails."""
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
from qat.quant.simulate import FakeQuantModel

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


def store_int8_weights(path: Path, weight_range: tuple[int, int]) -> int:
    """Replace each QuantizeLinear of a constant weight by the int8 tensor it computes, rounded and clamped as the
    simulation does (x * (1 / scale), half to even, into `weight_range`: 7-bit weights stay in [-64, 63], where
    QuantizeLinear alone would saturate at the int8 bounds). The file then holds the trained integers, not fp32
    weights (all-MiniLM-L6-v2: 90.6 MB -> 58.8 MB). Returns how many weights were stored as int8."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}

    def constant(name: str) -> onnx.TensorProto | None:
        """The initializer behind a name, through the Identity nodes the exporter puts on shared constants."""
        while name not in initializers and name in producers and producers[name].op_type == "Identity":
            name = producers[name].input[0]
        return initializers.get(name)

    folded = [node for node in graph.node
              if node.op_type == "QuantizeLinear" and all(constant(name) is not None for name in node.input)]
    for node in folded:
        weight, scale, zero_point = (numpy_helper.to_array(constant(name)) for name in node.input)
        shape = [1] * weight.ndim
        if scale.ndim:
            shape[next((a.i for a in node.attribute if a.name == "axis"), 1)] = -1
        inverse = (np.float32(1.0) / scale.astype(np.float32)).reshape(shape)
        integers = np.rint(weight.astype(np.float32) * inverse) + zero_point.reshape(shape).astype(np.float32)
        stored = np.clip(integers, *weight_range).astype(zero_point.dtype)
        graph.initializer.append(numpy_helper.from_array(stored, node.output[0]))
        graph.node.remove(node)
    outputs = {output.name for output in graph.output}
    while unused := [node for node in graph.node if node.op_type == "Identity" and not outputs & set(node.output)
                     and not any(node.output[0] in other.input for other in graph.node)]:
        for node in unused:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input} | outputs
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(path))
    return len(folded)


def export_onnx(model: FakeQuantModel, signature: ExportSignature, example: tuple[torch.Tensor, ...],
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
        stored = store_int8_weights(tmp, model.qconf.weight_range) if model.qconf.weight_range is not None else 0
        kernels = integer_kernels(tmp)
        if not kernels:
            raise QatError(f"ONNX export {path}: ONNX Runtime runs no integer kernel for it (expected "
                           f"{sorted(INTEGER_KERNELS)[:3]}...); refusing to save an export that stays fp32")
    log.info("exported ONNX QDQ int8 to %s (%d int8 weights stored; ONNX Runtime integer kernels: %s)", path, stored,
             kernels)
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
