"""Fake quantization and weight qparams against hand-written references, bit for bit."""
import pytest
import torch

from qat.quant.numerics import WEIGHT_RANGES, weight_qparams
from qat.quant.modules import QuantLinear
from qat.quant.quantizer import FakeQuantizer


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def test_weight_scale_is_max_abs_over_half_range():
    w = torch.randn(16, 8)
    for bits, (qmin, qmax) in WEIGHT_RANGES.items():
        scale, zero_point = weight_qparams(w, qmin, qmax)
        torch.testing.assert_close(scale, w.abs().amax(1) / ((qmax - qmin) / 2), atol=0, rtol=0)
        assert zero_point.abs().sum() == 0


def test_activation_fake_quant_matches_reference():
    x = torch.randn(4, 10) * 3
    quantizer = FakeQuantizer(torch.quint8, scale=0.05, zero_point=120)
    inverse = 1.0 / torch.tensor(0.05)
    reference = (torch.clamp(torch.round(x * inverse) + 120, 0, 255) - 120) * 0.05
    torch.testing.assert_close(quantizer(x), reference, atol=1e-6, rtol=0)


def test_weight_fake_quant_matches_reference_and_seven_bit_stays_in_range():
    w = torch.randn(6, 5)
    for qmin, qmax in WEIGHT_RANGES.values():
        scale = w.abs().amax(1, keepdim=True) / ((qmax - qmin) / 2)
        # PyTorch (and IPEX) round x * (1 / scale), round half to even; the channel max sits on a .5 tie.
        ints = torch.clamp(torch.round(w * (1.0 / scale)), -128, 127)
        torch.testing.assert_close(FakeQuantizer.for_weight((qmin, qmax))(w), ints * scale, atol=0, rtol=0)
        assert ints.abs().max() <= qmax + 1


def test_ste_trains_weights_and_leaves_frozen_scales_alone():
    linear = torch.nn.Linear(8, 4)
    quant = QuantLinear.from_float(linear, FakeQuantizer(torch.quint8, scale=0.1, zero_point=128), WEIGHT_RANGES[8])
    before_w, before_scale = quant.weight.detach().clone(), quant.input_quantizer.scale.clone()
    optimizer = torch.optim.SGD(quant.parameters(), lr=0.1)
    quant(torch.randn(32, 8)).pow(2).sum().backward()
    assert quant.weight.grad is not None and quant.weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(quant.weight, before_w)
    assert torch.equal(quant.input_quantizer.scale, before_scale)
    assert all(not name.endswith("scale") for name, _ in quant.named_parameters())
    assert quant.to_float().weight is linear.weight
