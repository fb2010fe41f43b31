"""OpenVINO int8: the fake-quant model converted by OpenVINO's PyTorch frontend, which turns torch's fake-quant
ops into FakeQuantize nodes with qat's own scales; the CPU plugin's low-precision transformations run them as
int8. The check compiles the model and reads each MatMul / FullyConnected node's runtime precision from the
compiled (runtime) model: an export whose GEMMs would run in floating point fails."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import torch

from qat.base.atomic import TMP_SUFFIX
from qat.base.errors import QatError
from qat.exporters.signature import ExportSignature, NamedInputs

log = logging.getLogger(__name__)
MODEL_DIR = "openvino"
MODEL_FILE = f"{MODEL_DIR}/openvino_model_qint8.xml"
GEMM_LAYERS = ("FullyConnected", "MatMul")
INT8_PRECISIONS = ("u8", "i8")
LAYOUT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze")


def _rt(node: object, key: str) -> str:
    """A runtime-model node's info (layerType, runtimePrecision) as text; '' where the node has none."""
    info = node.get_rt_info()
    if key not in list(info.keys()):
        return ""
    value = info[key]
    return str(value.astype(str) if hasattr(value, "astype") else value)


def _gemm_layer(node: object) -> str:
    """The node's layer type if it runs GEMMs: a FullyConnected or MatMul, or a fused Subgraph made from MatMuls
    (the CPU plugin compiles each attention block, both matmuls and the softmax, into one 'Subgraph+MatMul')."""
    layer = _rt(node, "layerType")
    if layer in GEMM_LAYERS:
        return layer
    if layer == "Subgraph" and "/MatMul" in _rt(node, "originalLayersNames"):
        return "Subgraph+MatMul"
    return ""


def compiled_gemm_precisions(compiled: object) -> dict[str, int]:
    """'<layer type>:<runtime precision>' -> count, for the GEMM nodes of a compiled model's runtime graph."""
    runtime = compiled.get_runtime_model()
    return dict(Counter(f"{_gemm_layer(n)}:{_rt(n, 'runtimePrecision')}" for n in runtime.get_ordered_ops()
                        if _gemm_layer(n)))


def gemm_precisions(path: Path) -> dict[str, int]:
    """The GEMM precisions of the model file as the CPU plugin compiles it."""
    import openvino as ov

    return compiled_gemm_precisions(ov.Core().compile_model(str(path), "CPU"))


def int8_gemms(precisions: dict[str, int]) -> int:
    return sum(count for key, count in precisions.items() if key.split(":")[1] in INT8_PRECISIONS)


def quantize_before_layout(model: object) -> int:
    """Move each per-tensor FakeQuantize above the layout ops (reshape, transpose) between it and the op that makes
    its tensor: per tensor, quantization commutes with them, so the model computes the same. The simulation
    quantizes the attention's queries, keys and values at the matmul, after the heads' reshape and transpose; there
    the CPU plugin runs each FakeQuantize apart in f32 behind a bf16 reorder, and moved up it fuses into the
    FullyConnected that makes the tensor (int8 output). Returns how many moved."""
    from openvino import opset13

    moved = 0
    for fake_quantize in [n for n in model.get_ordered_ops() if n.get_type_name() == "FakeQuantize"]:
        bounds = [fake_quantize.input(k).get_source_output().get_node() for k in range(1, 5)]
        if any(b.get_type_name() != "Constant" or b.get_data().size != 1 for b in bounds):
            continue   # per-channel (weights), or ranges computed in the graph
        layout, source = [], fake_quantize.input(0).get_source_output()
        while source.get_node().get_type_name() in LAYOUT_OPS and len(source.get_target_inputs()) == 1:
            layout.append(source.get_node())
            source = source.get_node().input(0).get_source_output()
        if not layout:
            continue
        scalars = [opset13.constant(b.get_data().reshape(1)) for b in bounds]   # broadcast to any rank
        earlier = opset13.fake_quantize(source, *scalars, fake_quantize.get_attributes()["levels"])
        layout[-1].input(0).replace_source_output(earlier.output(0))
        fake_quantize.output(0).replace(fake_quantize.input(0).get_source_output())
        moved += 1
    model.validate_nodes_and_infer_types()
    return moved


def export_openvino(model: torch.nn.Module, signature: ExportSignature, example: tuple[torch.Tensor, ...],
                    out_dir: Path) -> tuple[Path, dict[str, int]]:
    """Write <out_dir>/openvino/openvino_model_qint8.xml|bin from the fake-quant model and return it with its GEMM
    precisions; refuse (and write nothing) where no GEMM runs in int8."""
    import openvino as ov

    named = NamedInputs(model, signature).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(named, example_input=dict(zip(signature.inputs, example)))
    log.info("OpenVINO: %d FakeQuantize ops moved above their reshape/transpose", quantize_before_layout(converted))
    for port, name in zip(converted.inputs, signature.inputs):
        port.get_tensor().set_names({name})
    converted.outputs[0].get_tensor().set_names({signature.output})
    path = out_dir / MODEL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_DIR}.", suffix=TMP_SUFFIX, dir=out_dir))
    try:
        xml = tmp / path.name
        ov.save_model(converted, str(xml), compress_to_fp16=False)
        precisions = gemm_precisions(xml)
        if not int8_gemms(precisions):
            raise QatError(f"OpenVINO export {path}: the CPU plugin runs its GEMMs as {precisions}, none in "
                           f"{INT8_PRECISIONS}; refusing to save an export that stays floating point")
        for written in (xml.with_suffix(".bin"), xml):   # each file replaced whole (a resumed run exports again)
            os.replace(written, path.parent / written.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported OpenVINO int8 to %s (GEMM runtime precisions: %s)", path, precisions)
    return path, precisions


def load_openvino(path: Path, signature: ExportSignature):
    """The OpenVINO export compiled for the CPU, as a forward."""
    import openvino as ov

    if not path.is_file():
        raise QatError(f"OpenVINO export {str(path)!r} does not exist; expected {MODEL_FILE} in an export folder")
    compiled = ov.Core().compile_model(str(path), "CPU")
    request = compiled.create_infer_request()

    def forward(*inputs: torch.Tensor) -> torch.Tensor:
        result = request.infer({name: tensor.numpy() for name, tensor in zip(signature.inputs, inputs)})
        return torch.from_numpy(result[compiled.output(0)].copy())

    return forward
