"""SmoothQuant migration: the fp32 function is unchanged, outliers stop hurting int8, and IPEX runs it as simulated."""
import copy

import pytest
import torch

from qat.ptq.artifact import read_ptq_artifact, write_ptq_artifact
from qat.ptq import calibrate
from qat.quant.config import Recipe
from qat.base.errors import QatError
from qat.load import batches
from qat.quant.config import CalibConfig, QuantConfig, SmoothQuantConfig
from qat.quant.simulate import simulate
from qat.quant.smoothquant import smoothed_buffers
from qat.quant.wrapper import EncoderModule
from qat.jobs.report import _alpha
from qat.ptq.trials import AlphaChoice, _choose

CALIB = CalibConfig(samples=32, batch_size=16)
FULL = QuantConfig(ops=["linear", "matmul", "add"])
SMOOTH = SmoothQuantConfig(enabled=True, alpha=0.5)


def with_outlier(model: torch.nn.Module, factor: float = 200.0) -> torch.nn.Module:
    """Function-preserving outlier: one value channel of layer 0 times `factor`, the attention-output input
    column divided by it (attention is linear in V), so that int8 of that Linear's input is wrecked. (With the
    attention matmuls in int8 the outlier would wreck the PV matmul's input too, which no Linear-side migration
    can help: the test quantizes Linears only.)"""
    model = copy.deepcopy(model)
    attention = model.encoder.layer[0].attention
    with torch.no_grad():
        attention.self.value.weight[3] *= factor
        attention.self.value.bias[3] *= factor
        attention.output.dense.weight[:, 3] /= factor
    return model


def random_batch(vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (6, 20), generator=generator)
    mask = torch.ones_like(ids)
    mask[3:, 12:] = 0
    return ids, mask


def test_migration_keeps_the_fp32_function_on_real_and_random_inputs(tiny_encoder, texts):
    calibration = calibrate(tiny_encoder, texts, Recipe(FULL, CALIB, smoothquant=SMOOTH))
    smoothed = smoothed_buffers(calibration.model)
    # The attention output's factors fold into the value projection: no runtime multiply there.
    assert set(smoothed) == {f"encoder.layer.{i}.{m}" for i in range(2) for m in ("attention.self", "intermediate", "output")}
    assert not smoothed_buffers(tiny_encoder.model), "the original model is left alone"
    original, migrated = EncoderModule(tiny_encoder.model).eval(), EncoderModule(calibration.model).eval()
    with torch.no_grad():
        for ids, mask in [next(batches(tiny_encoder, texts[100:130], 30)), random_batch(tiny_encoder.tokenizer.vocab_size)]:
            torch.testing.assert_close(migrated(ids, mask), original(ids, mask), atol=1e-5, rtol=1e-5)
    weight = calibration.model.encoder.layer[0].intermediate.dense.weight
    assert not torch.allclose(weight, tiny_encoder.model.encoder.layer[0].intermediate.dense.weight)


def test_smoothquant_rescues_int8_from_an_activation_outlier(tiny_encoder, texts):
    """The relative error of the outlier Linear's output, int8 against fp32, with and without migration."""
    outlier = copy.copy(tiny_encoder)
    outlier.model = with_outlier(tiny_encoder.model)
    ids, mask = next(batches(outlier, texts[256:288], 32))

    def dense_output(model: torch.nn.Module, inner: torch.nn.Module) -> torch.Tensor:
        seen = []
        hook = inner.get_submodule("encoder.layer.0.attention.output.dense").register_forward_hook(
            lambda m, a, out: seen.append(out))
        with torch.no_grad():
            model(ids, mask)
        hook.remove()
        return seen[0]

    reference = dense_output(EncoderModule(outlier.model).eval(), outlier.model)

    def relative_error(smoothquant):
        calibration = calibrate(outlier, texts, Recipe(QuantConfig(ops=["linear"]), CALIB,
                                                          smoothquant=smoothquant or SmoothQuantConfig()))
        sim = simulate(calibration.model, calibration.qconf).eval()
        return ((dense_output(sim, sim.encoder.model) - reference).norm() / reference.norm()).item()

    naive, smoothed = relative_error(None), relative_error(SMOOTH)
    assert naive > 0.2 and smoothed < naive / 4, (naive, smoothed)


def test_smoothed_full_operator_export_matches_its_simulation(tiny_encoder, texts, tmp_path, ipex_export):
    calibration = calibrate(tiny_encoder, texts, Recipe(FULL, CALIB, smoothquant=SMOOTH))
    sim = simulate(calibration.model, calibration.qconf).eval()
    result = ipex_export.export_ipex(sim.to_float(), calibration.qconf, sim.weight_qparams(),
                                     next(batches(tiny_encoder, texts[:4], 4)), tmp_path)
    assert result.graph_int8_ops["linear"] == 12 and result.graph_int8_ops["add"] == 6
    ids, mask = next(batches(tiny_encoder, texts[40:52], 12))
    with torch.no_grad(), torch.jit.optimized_execution(False):
        torch.testing.assert_close(ipex_export.load_exported(result.path)(ids, mask), sim(ids, mask), atol=1e-5, rtol=0)


def test_the_ptq_artifact_carries_the_migration(tiny_encoder, texts, tmp_path):
    calibration = calibrate(tiny_encoder, texts, Recipe(QuantConfig(), CALIB, smoothquant=SMOOTH))
    encoder = copy.copy(tiny_encoder)
    encoder.model = calibration.model
    artifact = read_ptq_artifact(write_ptq_artifact(tmp_path / "ptq", encoder, calibration.qconf, calibration.metadata))
    assert set(smoothed_buffers(artifact.encoder.model)) == set(smoothed_buffers(calibration.model))
    ids, mask = next(batches(tiny_encoder, texts[:8], 8))
    with torch.no_grad():
        torch.testing.assert_close(EncoderModule(artifact.encoder.model)(ids, mask), EncoderModule(tiny_encoder.model)(ids, mask),
                                   atol=1e-5, rtol=1e-5)


def test_bad_smoothquant_settings_are_refused(tiny_encoder, texts):
    with pytest.raises(QatError, match=r"smoothquant.alpha=1.5 is not valid; expected a number in \[0, 1\]"):
        SmoothQuantConfig(alpha=1.5)
    with pytest.raises(QatError, match="selects no int8 Linear"):
        calibrate(tiny_encoder, texts,
                  Recipe(QuantConfig(), CALIB, smoothquant=SmoothQuantConfig(enabled=True, modules=["pooler"])))


def test_an_alpha_closest_on_held_out_texts_but_far_on_the_guard_is_not_chosen():
    # fake-quant distances to fp32 of three SmoothQuant alphas on WikiQA's held-out texts and the guard, rounded
    distances = {0.4: (0.0080, 0.033), 0.5: (0.0083, 0.022), 0.6: (0.0094, 0.019), None: (0.0, 0.0)}

    def measure(alpha):
        return {"emd_heldout_pairs": distances[alpha][0], "guard/emd": distances[alpha][1]}

    choice = _choose("smoothquant", [0.4, 0.5, 0.6], measure)
    assert choice.alpha == 0.5 and choice.objective == "emd_heldout_pairs, guard/emd"
    assert choice.scores == pytest.approx({"0.4": 0.033 / 0.019, "0.5": 0.022 / 0.019, "0.6": 0.0094 / 0.0080})
    assert choice.distances["guard/emd"]["0.6"] == 0.019
    held_out_only = _choose("smoothquant", [0.4, 0.5, 0.6], lambda alpha: {"emd_heldout_pairs": distances[alpha][0]})
    assert held_out_only.alpha == 0.4 and held_out_only.objective == "emd_heldout_pairs"   # no guard
    # a candidate at distance 0 (fp32 itself) is the best on its side, written 'off'
    off = _choose("equalize", [0.4, None], measure)
    assert off.alpha is None and off.scores == {"0.4": float("inf"), "off": 1.0}
    assert _alpha(0.5, choice).startswith("0.5 (auto: emd_heldout_pairs / guard/emd by alpha: 0.4 0.00800 / 0.03300,")
    # a PTQ artifact written before the guard took part records held-out distances as its scores
    older = AlphaChoice("emd_heldout_pairs", {"0.4": 0.008, "0.5": 0.0083}, 0.4)
    assert _alpha(0.4, older) == "0.4 (auto: held-out emd_heldout_pairs by alpha: 0.4 0.00800, 0.5 0.00830)"


def test_an_empty_candidate_list_is_refused():
    with pytest.raises(QatError, match=r"smoothquant.candidates=\[\] is not valid; expected one or more alphas"):
        SmoothQuantConfig(enabled=True, alpha="auto", candidates=[])
