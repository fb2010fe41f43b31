"""Calibration, qconf recipe edits, the fake-quant simulation and its match to IPEX's unfused int8 graph."""

import copy

import pytest
import torch

from qat.ptq import calibrate
from qat.quant.config import Recipe
from qat.quant.config import CalibConfig, QuantConfig
from qat.base.errors import QatError
from qat.load import batches
from qat.quant.wrapper import EncoderModule
from qat.quant.modules import QuantLinear
from qat.quant.qconf import Qconf
from qat.quant.simulate import simulate

CALIB = CalibConfig(samples=32, batch_size=16)


@pytest.fixture
def qconf(tiny_encoder, texts) -> Qconf:
    return calibrate(tiny_encoder, texts, Recipe(QuantConfig(ops=["linear", "matmul", "add"], weight_bits="8"), CALIB)).qconf


def test_calibrated_qconf_classifies_every_op(qconf):
    kinds = [op.kind for op in qconf.ops]
    # 2 layers: 6 Linear, 2 matmuls, a mask add and 2 residual adds each; 2 embedding adds
    assert kinds.count("linear") == 12 and kinds.count("matmul") == 4
    assert kinds.count("mask_add") == 2 and kinds.count("residual_add") == 4 and kinds.count("embedding_add") == 2
    assert qconf.int8_counts() == {"linear": 12, "matmul": 4, "residual_add": 4, "embedding_add": 2}
    assert not any(op.quantized for op in qconf.ops if op.kind == "mask_add")
    assert qconf.weight_range == (-128, 127)


def test_recipe_op_kinds_and_skip_patterns(qconf):
    edited = qconf.with_recipe(QuantConfig(ops=["linear"], skip=[r"encoder\.layer\.1\.output\.dense", "encoder.layer.0.attention"]))
    int8 = {op.name for op in edited.ops if op.quantized}
    assert "encoder.layer.1.output.dense" not in int8 and "encoder.layer.0.attention.self.query" not in int8
    assert "encoder.layer.1.attention.self.query" in int8
    assert edited.int8_counts() == {"linear": 12 - 1 - 4, "matmul": 0, "residual_add": 0, "embedding_add": 0}
    with pytest.raises(QatError, match="match no quantizable module"):
        edited.with_recipe(QuantConfig(skip=["encoder.layer.7.output.dense"]))
    # A functional op is named after its owner and family, so a skip entry can name it without the owner's Linear.
    edited = edited.with_recipe(QuantConfig(ops=["linear", "add"], skip=["encoder.layer.0.output.add"]))
    int8 = {op.name for op in edited.ops if op.quantized}
    assert "encoder.layer.0.output.dense" in int8 and "encoder.layer.0.output.add" not in int8
    assert "encoder.layer.1.output.add" in int8 and "embeddings.add" in int8


def test_one_tensor_has_one_scale(qconf):
    """Q, K and V read one tensor; a qconf giving it two scales cannot be exported faithfully."""
    assert len(qconf.input_qparams_by_id()) > 0
    broken = qconf.copy()
    key = next(op for op in broken.ops if op.name == "encoder.layer.0.attention.self.key")
    key.info["input_tensor_infos"][0]["scale"] = [key.info["input_tensor_infos"][0]["scale"][0] * 2]
    with pytest.raises(QatError, match=f"quantizes tensor {key.info['input_tensor_infos'][0]['id']} with"):
        broken.input_qparams_by_id()


def test_activation_scale_clamp_is_simulated_and_exported_alike(tiny_encoder, texts, tmp_path, ipex_export):
    clamped = calibrate(tiny_encoder, texts, Recipe(QuantConfig(ops=["linear", "matmul"], scale_max=0.01), CALIB)).qconf
    scales = [q.scale for op in clamped.ops for q in op.input_qparams() if q is not None]
    assert scales and max(scales) <= 0.01
    # an fp32 input (the mask add's) is left as it is
    assert all(op.info["input_tensor_infos"][1]["scale"][0] > 0.01 for op in clamped.ops if op.kind == "mask_add")
    sim = simulate(tiny_encoder.model, clamped).eval()
    result = ipex_export.export_ipex(sim.to_float(), clamped, sim.weight_qparams(),
                                     next(batches(tiny_encoder, texts[:4], 4)), tmp_path)
    ids, mask = next(batches(tiny_encoder, texts[40:52], 12))
    with torch.no_grad(), torch.jit.optimized_execution(False):
        torch.testing.assert_close(ipex_export.load_exported(result.path)(ids, mask), sim(ids, mask), atol=1e-5, rtol=0)
    with pytest.raises(QatError, match="scale_min=0.5 > quant.scale_max=0.1"):
        QuantConfig(scale_min=0.5, scale_max=0.1)


def test_seven_bit_weights_are_recorded_in_the_qconf(tiny_encoder, texts):
    narrow = calibrate(tiny_encoder, texts, Recipe(QuantConfig(weight_bits="7"), CALIB)).qconf
    assert narrow.weight_range == (-64, 63)
    weight = tiny_encoder.model.encoder.layer[0].attention.self.query.weight
    query = next(op for op in narrow.ops if op.name == "encoder.layer.0.attention.self.query")
    expected = weight.detach().abs().amax(1) / 63.5
    assert query.info["weight_tensor_infos"][0]["scale"] == pytest.approx(expected.tolist(), rel=1e-6)


def test_simulation_swaps_quantized_linears_and_stays_close_to_fp32(tiny_encoder, qconf, texts):
    sim = simulate(tiny_encoder.model, qconf).eval()
    assert sum(isinstance(m, QuantLinear) for m in sim.modules()) == 12
    ids, mask = next(batches(tiny_encoder, texts[:8], 8))
    with torch.no_grad():
        reference, simulated = EncoderModule(tiny_encoder.model)(ids, mask), sim(ids, mask)
    assert not torch.equal(reference, simulated)
    assert torch.nn.functional.cosine_similarity(reference.flatten(1), simulated.flatten(1)).min() > 0.9


def test_simulation_equals_ipex_unfused_int8_graph_exactly(tiny_encoder, qconf, texts, tmp_path, ipex_export):
    """Every op of the full-operator recipe, simulated, matches IPEX's converted graph bit for bit."""
    sim = simulate(tiny_encoder.model, qconf).eval()
    example = next(batches(tiny_encoder, texts[:4], 4))
    result = ipex_export.export_ipex(tiny_encoder.model, qconf, sim.weight_qparams(), example, tmp_path)
    assert result.graph_int8_ops == {"linear": 12, "matmul": 4, "add": 6, "linear_weight_only": 0}
    exported = ipex_export.load_exported(result.path)
    ids, mask = next(batches(tiny_encoder, texts[40:52], 12))
    with torch.no_grad(), torch.jit.optimized_execution(False):
        torch.testing.assert_close(exported(ids, mask), sim(ids, mask), atol=1e-5, rtol=0)


def test_symmetric_attention_inputs_reach_ipex_as_signed_int8(tiny_encoder, qconf, texts, tmp_path, ipex_export):
    """Queries, keys and values (quint8 with zero point 128) are exported as qint8 with zero point 0: the same
    values, multiplied by oneDNN as s8 without a reorder; the softmax output and the Linear inputs stay quint8."""
    sim = simulate(tiny_encoder.model, qconf).eval()
    example = next(batches(tiny_encoder, texts[:4], 4))
    result = ipex_export.export_ipex(tiny_encoder.model, qconf, sim.weight_qparams(), example, tmp_path)
    exported = Qconf.read(result.qconf_path)
    dtypes = {(op.kind, qparams.dtype, qparams.zero_point) for op in exported.ops if op.quantized
              for qparams in op.input_qparams() if qparams is not None}
    assert {("matmul", torch.qint8, 0), ("matmul", torch.quint8, 0)} <= dtypes
    assert not any(kind != "matmul" and dtype == torch.qint8 for kind, dtype, _ in dtypes)
    assert all(zero_point != 128 for kind, _, zero_point in dtypes if kind == "matmul")
    module = ipex_export.load_exported(result.path)
    codes = [node.inputsAt(3).toIValue() for node in module.graph.findAllNodes("aten::quantize_per_tensor")]
    assert codes.count(12) == 2 * 3, "two layers' queries, keys and values (c10::ScalarType::QInt8 is 12)"


def test_skipped_linears_are_really_fp32_in_the_export(tiny_encoder, qconf, texts, tmp_path, ipex_export):
    """A skipped Linear must keep fp32 weights too: IPEX quantizes weights unless the qconf says otherwise."""
    skipped = qconf.with_recipe(QuantConfig(ops=["linear", "residual_add"], skip=[r"encoder\.layer\.\d+\.output\.dense"]))
    sim = simulate(tiny_encoder.model, skipped).eval()
    example = next(batches(tiny_encoder, texts[:4], 4))
    result = ipex_export.export_ipex(sim.to_float(), skipped, sim.weight_qparams(), example, tmp_path)
    assert result.graph_int8_ops == {"linear": 10, "matmul": 0, "add": 4, "linear_weight_only": 0}
    ids, mask = next(batches(tiny_encoder, texts[60:70], 10))
    with torch.no_grad(), torch.jit.optimized_execution(False):
        torch.testing.assert_close(ipex_export.load_exported(result.path)(ids, mask), sim(ids, mask), atol=1e-5, rtol=0)


def test_the_context_matmul_can_stay_floating_point(tiny_encoder, qconf, texts, tmp_path, ipex_export):
    """quant.context_matmul=false: each attention's probabilities-times-values matmul runs in floating point, in
    the simulation and in IPEX's graph alike; the scores matmul stays int8."""
    context = qconf.context_matmuls()
    assert [name for name in (op.name for op in qconf.ops if (op.state_key, op.index) in context)] == [
        "encoder.layer.0.attention.self.matmul", "encoder.layer.1.attention.self.matmul"]
    floating = qconf.with_recipe(QuantConfig(ops=["linear", "matmul"], context_matmul=False))
    assert floating.int8_counts() == {"linear": 12, "matmul": 2, "residual_add": 0, "embedding_add": 0}
    assert not any(op.quantized for op in floating.ops if (op.state_key, op.index) in context)
    assert floating.context_in_float() and not qconf.context_in_float()
    sim = simulate(tiny_encoder.model, floating).eval()
    result = ipex_export.export_ipex(sim.to_float(), floating, sim.weight_qparams(),
                                     next(batches(tiny_encoder, texts[:4], 4)), tmp_path)
    assert result.graph_int8_ops == {"linear": 12, "matmul": 2, "add": 0, "linear_weight_only": 0}
    ids, mask = next(batches(tiny_encoder, texts[40:52], 12))
    with torch.no_grad(), torch.jit.optimized_execution(False):
        torch.testing.assert_close(ipex_export.load_exported(result.path)(ids, mask), sim(ids, mask), atol=1e-5, rtol=0)
    one_matmul = copy.deepcopy(qconf.data)
    for key, index in context:
        del one_matmul[key]["q_op_infos"][str(index)]
    with pytest.raises(QatError, match=r"quant.context_matmul=false, but qconf <memory> has no module that runs two"):
        Qconf(one_matmul).with_recipe(QuantConfig(context_matmul=False))


def test_unpadded_batches_run_the_same_ops(tiny_encoder, qconf):
    sim = simulate(tiny_encoder.model, qconf).eval()
    ids, mask = next(batches(tiny_encoder, ["one single sentence"], 1))
    assert mask.all()
    with torch.no_grad():
        assert sim(ids, mask).shape == (1, ids.shape[1], 32)


def test_qconf_of_another_architecture_is_rejected(tiny_encoder, qconf, tiny_model_dir, tmp_path, texts, ipex_export):
    from transformers import BertConfig, BertModel

    deeper = BertModel(BertConfig(vocab_size=tiny_encoder.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=3,
                                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=64),
                       add_pooling_layer=False)
    deeper.config._attn_implementation = "eager"
    example = next(batches(tiny_encoder, texts[:4], 4))
    with pytest.raises(QatError, match="does not match the model"):
        ipex_export.export_ipex(deeper.eval(), qconf, {}, example, tmp_path)
    missing = qconf.copy()
    del missing.data["model:encoder:layer:1:output"]["q_op_infos"]["1"]
    with pytest.raises(QatError, match="does not match the model"):
        sim = simulate(tiny_encoder.model, Qconf(missing.data))
        sim(*example)


def test_qconf_read_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(QatError, match="not valid JSON"):
        Qconf.read(bad)
    bad.write_text('{"model": {"nothing": 1}}')
    with pytest.raises(QatError, match="not an IPEX qconf"):
        Qconf.read(bad)
    with pytest.raises(QatError, match="does not exist"):
        Qconf.read(tmp_path / "missing.json")
