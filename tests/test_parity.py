"""The export's parity decision: unfused must be exact; fused must be close or as faithful to fp32."""

import pytest
import torch

from qat.ptq import calibrate
from qat.quant.config import Recipe
from qat.config import ExportConfig
from qat.quant.config import CalibConfig, QuantConfig
from qat.exporters.parity import judge_parity, parity_texts, rounding_noise
from qat.exporters.verify import Runtime, RuntimeExport
from qat.load import batches
from qat.quant.wrapper import EncoderModule
from qat.quant.simulate import simulate

TEXTS = [f"text {i}" for i in range(20)]


def table(vectors: torch.Tensor) -> dict[str, torch.Tensor]:
    return dict(zip(TEXTS, torch.nn.functional.normalize(vectors, dim=-1)))


def check(simulated, fused, fp32, unfused=None):
    return judge_parity(fp32, simulated, fused, unfused if unfused is not None else simulated, simulated, TEXTS,
                        ExportConfig())


@pytest.fixture
def vectors():
    torch.manual_seed(0)
    fp32 = torch.randn(len(TEXTS), 16)
    return fp32, fp32 + 0.3 * torch.randn_like(fp32)   # a simulation with cosine ~0.96 to fp32


def test_close_fused_export_passes(vectors):
    fp32, sim = vectors
    result = check(table(sim), table(sim + 1e-3 * torch.randn_like(sim)), table(fp32))
    assert result.exact_unfused and result.close and result.passed


def test_unfused_mismatch_fails_even_when_fused_is_close(vectors):
    fp32, sim = vectors
    result = check(table(sim), table(sim), table(fp32), unfused=table(sim + 1e-2 * torch.randn_like(sim)))
    assert result.close and not result.exact_unfused and not result.passed
    assert result.unfused_max_abs_diff > 1e-4


def test_fused_rounding_spread_passes_only_if_as_faithful_to_fp32(vectors):
    fp32, sim = vectors
    # Another int8 realisation of the same model: as far from the simulation as the simulation is from fp32 ...
    equally_good = fp32 + 0.3 * torch.randn_like(fp32)
    result = check(table(sim), table(equally_good), table(fp32))
    assert not result.close and result.as_faithful and result.passed
    # ... and one that is worse than the simulation fails.
    worse = fp32 + 0.6 * torch.randn_like(fp32)
    result = check(table(sim), table(worse), table(fp32))
    assert not result.close and not result.as_faithful and not result.passed


def test_the_fidelity_tolerance_widens_to_the_simulations_own_rounding_spread(vectors):
    fp32, sim = vectors
    fused = sim + 0.1 * torch.randn_like(sim)           # another rounding, somewhat less faithful than the simulation
    spread = sim + 0.15 * torch.randn_like(sim)          # how far the simulation moves from itself under noise
    narrow = check(table(sim), table(fused), table(fp32))                    # floor 1: the configured 0.002
    wide = judge_parity(table(fp32), table(sim), table(fused), None, table(spread), TEXTS, ExportConfig())
    drop = narrow.fidelity_to_fp32.fakequant - narrow.fidelity_to_fp32.int8
    assert 0.002 < drop < 1 - wide.rounding_floor.cosine_mean == pytest.approx(wide.thresholds.fidelity_tolerance)
    assert narrow.thresholds.fidelity_tolerance == 0.002 and not narrow.passed
    assert wide.as_faithful and wide.passed


def test_rounding_noise_is_tiny_seeded_and_removed(tiny_encoder, texts):
    qconf = calibrate(tiny_encoder, texts, Recipe(QuantConfig(), CalibConfig(samples=32, batch_size=16))).qconf
    sim = simulate(tiny_encoder.model, qconf).eval()
    fp32 = EncoderModule(tiny_encoder.model).eval()
    ids, mask = next(batches(tiny_encoder, texts[:8], 8))
    with torch.no_grad():
        clean = fp32(ids, mask)
        with rounding_noise(fp32, seed=1):
            noisy = fp32(ids, mask)
        with rounding_noise(fp32, seed=1):
            again = fp32(ids, mask)
        assert not torch.equal(noisy, clean) and torch.equal(noisy, again)
        torch.testing.assert_close(noisy, clean, atol=1e-5, rtol=1e-5)
        assert torch.equal(fp32(ids, mask), clean)
        reference = sim(ids, mask)
        with rounding_noise(sim):   # runs inside the simulation's functional-op bookkeeping without upsetting it
            sim(ids, mask)
        assert torch.equal(sim(ids, mask), reference)


def test_parity_passages_fill_the_serving_length_from_held_out_texts_only():
    heldout = [f"sentence number {i} has six words" for i in range(20)]   # 120 words: room for one passage of 64
    texts = parity_texts(heldout, max_length=64, passages=8)
    assert texts.heldout == heldout and len(texts.passages) == 8 and texts.all() == heldout + texts.passages
    assert all(len(p.split()) >= 64 and set(p.split()) <= set(" ".join(heldout).split()) for p in texts.passages)
    assert [p.split()[2] for p in texts.passages] == ["0", "2", "5", "7", "10", "12", "15", "17"]   # spaced starts
    assert parity_texts(heldout, 64, 0).passages == []
    assert len(parity_texts(heldout[:1], 64, 8).passages) == 1   # one text: one distinct passage, the text repeated
    pairs = parity_texts([(f"query {i}", f"passage {i} about it") for i in range(4)], max_length=16, passages=2)
    assert len(pairs.passages) == 2 and all(isinstance(p, tuple) and len(" ".join(p).split()) >= 16 for p in pairs.passages)


def test_an_export_that_fails_parity_on_serving_length_passages_fails(vectors):
    fp32, sim = vectors
    good = check(table(sim), table(sim), table(fp32))
    bad = check(table(sim), table(fp32 + 0.6 * torch.randn_like(fp32)), table(fp32))
    assert good.passed and not bad.passed
    assert RuntimeExport(Runtime.ONNX, None, {}, good, None).passed
    assert RuntimeExport(Runtime.ONNX, None, {}, good, good).passed
    assert not RuntimeExport(Runtime.ONNX, None, {}, good, bad).passed
