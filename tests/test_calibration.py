"""Range algorithms on collected statistics, statistics collected once, bias correction, mixed calibration data."""
import pytest
import torch
from torch.ao.quantization.observer import HistogramObserver

from qat.ptq import calibrate
from qat.quant.config import Recipe
from qat.ptq.calibration import Statistics, apply_calibration, calibration_batches
from qat.quant.sites import find_sites
from qat.config import MixPart, SourceConfig
from qat.quant.config import CalibConfig, QuantConfig
from qat.data import mix_texts
from qat.base.errors import QatError
from qat.quant.observe import _Recorder, collect_statistics
from qat.quant.quantizer import FakeQuantizer
from qat.quant.ranges import activation_qparams, activation_range


def statistics(tensors: list[torch.Tensor], bins: int = 2048):
    """Two passes over the batches, as collect_statistics does through the model."""
    recorder = _Recorder(2 * bins, channel_sums=False)
    for x in tensors:
        recorder(x)
    recorder.bound = max(-min(recorder.mins), max(recorder.maxs))
    for x in tensors:
        recorder(x)
    return recorder.stats()


@pytest.fixture(scope="module")
def outlier_batches() -> list[torch.Tensor]:
    torch.manual_seed(0)
    batches = [torch.randn(20000) for _ in range(4)]
    batches[2][7] = 100.0
    return batches


def test_algorithms_on_an_outlier(outlier_batches):
    stats = statistics(outlier_batches)
    assert activation_range(stats, 4, "minmax")[1] == 100.0
    assert activation_range(stats, 2, "minmax")[1] < 10, "the first two batches do not hold the outlier"
    clipped = {a: activation_range(stats, 4, a, percentile=99.9)[1] for a in ("percentile", "entropy")}
    assert all(2.0 < hi < 10.0 for hi in clipped.values()), clipped
    assert clipped["percentile"] == pytest.approx(3.09, abs=0.06)  # the 99.9th percentile of N(0, 1)
    # L2 searches keep a lone outlier (clipping 100 to 5 costs more squared error than coarser steps do) ...
    assert activation_range(stats, 4, "mse")[1] > 50 and activation_range(stats, 4, "histogram")[1] > 50
    # ... but clip a heavy tail: for Laplace(0, 1) the 8-bit L2-optimal clip is about 9.89 (Banner et al., ACIQ)
    laplace = statistics([torch.distributions.Laplace(0.0, 1.0).sample((50000,)) for _ in range(2)])
    assert activation_range(laplace, 2, "mse")[1] == pytest.approx(9.89, abs=0.6)
    assert activation_range(laplace, 2, "histogram")[1] < laplace.min_max(2)[1]
    first_lo, first_hi = outlier_batches[0].min().item(), outlier_batches[0].max().item()
    lo, hi = activation_range(stats, 4, "moving_average", averaging_constant=0.01)
    assert abs(hi - first_hi) < 1.0 and abs(lo - first_lo) < 0.1, "a moving average barely moves from batch 0"


def test_histogram_algorithm_matches_torch_histogram_observer(outlier_batches):
    """'histogram' is IPEX's default observer (torch's L2 search), here on our fixed-range histogram."""
    observer = HistogramObserver(bins=2048, dtype=torch.quint8)
    for x in outlier_batches:
        observer(x)
    theirs, _ = observer.calculate_qparams()
    ours, _ = activation_qparams(*activation_range(statistics(outlier_batches), 4, "histogram"), symmetric=False)
    assert ours == pytest.approx(theirs.item(), rel=0.05)


def test_symmetric_activations_center_the_zero_point():
    assert activation_qparams(-1.0, 3.0, symmetric=True) == (pytest.approx(6.0 / 255), 128)
    scale, zero_point = activation_qparams(-1.0, 3.0, symmetric=False)
    assert scale == pytest.approx(4.0 / 255) and zero_point == 64


def test_signed_attention_matmul_inputs_are_symmetric_and_the_softmax_output_stays_affine(tiny_encoder, texts):
    """Queries, keys and values get zero point 128 (signed int8 with zero point 0, which OpenVINO's int8 MatMul
    needs); the softmax output keeps zero point 0 and the Linear inputs keep their affine ranges."""
    zero_points = {}
    for symmetric_matmul in (True, False):
        calib = CalibConfig(samples=32, batch_size=16, symmetric_matmul=symmetric_matmul)
        qconf = calibrate(tiny_encoder, texts, Recipe(QuantConfig(), calib)).qconf
        zero_points[symmetric_matmul] = {
            (op.name, op.index, position): qparams.zero_point for op in qconf.ops if op.kind in ("matmul", "linear")
            for position, qparams in enumerate(op.input_qparams()) if qparams is not None}
    matmul = {key: zp for key, zp in zero_points[True].items() if key[0].endswith(".matmul")}
    assert len(matmul) == 2 * 2 * 2, "two layers, two matmuls, two inputs"
    queries_keys_values = {key: zp for key, zp in matmul.items() if zp != 0}
    assert len(queries_keys_values) == 2 * 3 and set(queries_keys_values.values()) == {128}
    assert all(zero_points[False][key] not in (0, 128) for key in queries_keys_values), "affine without the option"
    linears = {key for key in zero_points[True] if not key[0].endswith(".matmul")}
    assert linears and all(zero_points[True][key] == zero_points[False][key] for key in linears)


def test_statistics_cover_every_quantizable_tensor_once(tiny_encoder, texts):
    calib = CalibConfig(samples=32, batch_size=16)
    calib_batches = calibration_batches(tiny_encoder, texts, calib)
    skeleton = find_sites(tiny_encoder.model, calib_batches[0])
    stats = collect_statistics(tiny_encoder.model, skeleton, calib_batches, bins=64)
    # embeddings: 2 adds (3 embeddings + the first sum); per layer: the QKV input (shared by the 3 Linears and
    # the attention residual add), 4 matmul inputs, 3 more Linear inputs, the first input of each residual add
    assert len(stats) == 4 + 2 * 10
    assert all(len(s.batch_min) == 2 and s.histograms.shape == (2, 128) for s in stats.values())
    with pytest.raises(QatError, match="needs 3 batches but only 2 were observed"):
        apply_calibration(Statistics(tiny_encoder.model, skeleton, stats), CalibConfig(samples=48, batch_size=16), QuantConfig())


def test_bias_correction_absorbs_the_weight_error_and_keeps_the_original(tiny_encoder, texts):
    calib = CalibConfig(samples=32, batch_size=16, bias_correction=True)
    calibration = calibrate(tiny_encoder, texts, Recipe(QuantConfig(weight_bits="7"), calib))
    original = tiny_encoder.model.encoder.layer[0].intermediate.dense
    corrected = calibration.model.encoder.layer[0].intermediate.dense
    assert calibration.model is not tiny_encoder.model and torch.equal(original.weight, corrected.weight)
    calib_batches = calibration_batches(tiny_encoder, texts, calib)
    stats = collect_statistics(tiny_encoder.model, find_sites(tiny_encoder.model, calib_batches[0]), calib_batches, bins=64)
    op = next(op for op in calibration.qconf.ops if op.name == "encoder.layer.0.intermediate.dense")
    mean = stats[op.info["input_tensor_infos"][0]["id"]].channel_mean(2).float()
    expected = (original.weight - FakeQuantizer.for_weight((-64, 63))(original.weight)) @ mean
    torch.testing.assert_close(corrected.bias - original.bias, expected, atol=1e-6, rtol=1e-4)
    assert expected.abs().max() > 0


def test_mixed_sources_keep_their_proportions_in_every_prefix():
    parts = {"a": MixPart(3.0, SourceConfig(kind="builtin", limit=150)),
             "b": MixPart(1.0, SourceConfig(kind="builtin", offset=200, limit=100))}
    texts, origins = mix_texts(parts)
    assert len(texts) == 200 and origins.count("a") == 150 and origins.count("b") == 50
    for n in (4, 10, 41, 100):
        assert abs(origins[:n].count("b") - n / 4) <= 1
    with pytest.raises(QatError, match="data.mix proportion=0"):
        MixPart(0, SourceConfig())
