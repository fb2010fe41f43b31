"""The OpenVINO export's graph edit: a per-tensor FakeQuantize moves above the reshape/transpose that feed it and
the model computes the same; per-channel ones and tensors read elsewhere stay where they are."""
import numpy as np
import pytest

ov = pytest.importorskip("openvino")
from openvino import opset13 as ops  # noqa: E402

from qat.exporters.openvino import quantize_before_layout  # noqa: E402


def fake_quantize(source, low: np.ndarray, high: np.ndarray):
    return ops.fake_quantize(source, ops.constant(low), ops.constant(high), ops.constant(low), ops.constant(high), 256)


def heads_model(per_channel_low: bool = False, branch: bool = False) -> ov.Model:
    """x @ W, split into 4 heads of 8 and transposed, then fake-quantized: the simulation's queries."""
    x = ops.parameter([2, 5, 32], np.float32, name="x")
    weight = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32)
    projected = ops.matmul(x, ops.constant(weight), False, False)
    heads = ops.reshape(projected, ops.constant(np.array([2, 5, 4, 8], dtype=np.int64)), False)
    transposed = ops.transpose(heads, ops.constant(np.array([0, 2, 1, 3], dtype=np.int64)))
    low = np.full((1, 4, 1, 1), -3.0, np.float32) if per_channel_low else np.array([[[[-3.0]]]], np.float32)
    quantized = fake_quantize(transposed, low, np.array([[[[2.9]]]], np.float32))
    outputs = [ops.result(quantized)] + ([ops.result(ops.relu(heads))] if branch else [])
    return ov.Model(outputs, [x])


def run(model: ov.Model, x: np.ndarray) -> np.ndarray:
    return ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({"x": x})[0]


def producer_of_fake_quantize(model: ov.Model) -> str:
    node = next(n for n in model.get_ordered_ops() if n.get_type_name() == "FakeQuantize")
    return node.input(0).get_source_output().get_node().get_type_name()


def test_a_per_tensor_fake_quantize_moves_above_reshape_and_transpose_and_computes_the_same():
    x = np.random.default_rng(1).standard_normal((2, 5, 32)).astype(np.float32)
    model = heads_model()
    before = run(model, x)
    assert producer_of_fake_quantize(model) == "Transpose"
    assert quantize_before_layout(model) == 1
    assert producer_of_fake_quantize(model) == "MatMul"
    np.testing.assert_array_equal(run(model, x), before)
    assert model.get_output_shape(0) == [2, 4, 5, 8]


def test_per_channel_ranges_stay_and_a_reshape_read_elsewhere_is_not_passed():
    per_channel = heads_model(per_channel_low=True)
    assert quantize_before_layout(per_channel) == 0 and producer_of_fake_quantize(per_channel) == "Transpose"
    branched = heads_model(branch=True)
    x = np.random.default_rng(1).standard_normal((2, 5, 32)).astype(np.float32)
    before = run(branched, x)
    # The reshape also feeds another op: the FakeQuantize passes the transpose (read by it alone), not the reshape.
    assert quantize_before_layout(branched) == 1 and producer_of_fake_quantize(branched) == "Reshape"
    np.testing.assert_array_equal(run(branched, x), before)
