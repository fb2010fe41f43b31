"""Weight-folded equalization inside attention: exact in fp32, undoes an outlier stress, refuses what it cannot do;
SmoothQuant's attention-output factors fold into the value projection."""
import copy
import dataclasses
import json

import pytest
import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer

from conftest import ONE_TARGET
from qat.ptq import calibrate
from qat.ptq import calibration_batches
from qat.quant.config import Recipe
from qat.config import RunConfig
from qat.jobs.command import job_config
from qat.base.errors import QatError
from qat.load import batches
from qat.jobs.train import run_train
from qat.quant.config import CalibConfig, EqualizeConfig, QuantConfig, SmoothQuantConfig
from qat.quant.equalize import attention_projections, equalize, rescale
from qat.quant.simulate import simulate
from qat.quant.smoothquant import smoothed_buffers
from qat.quant.wrapper import EncoderModule

CALIB = CalibConfig(samples=32, batch_size=16)


def stressed(model: nn.Module, factor: float = 300.0) -> nn.Module:
    """The tiny BERT with two channels per layer blown up in Q/K and in V/O (fp32 function unchanged)."""
    model = copy.deepcopy(model)
    for block in attention_projections(model):
        up = torch.ones(model.get_submodule(block.query).out_features)
        up[[3, 20]] = factor
        rescale(model, block, "qk", up)
        rescale(model, block, "vo", 1.0 / up)
    return model


def test_equalization_preserves_the_fp32_function_on_real_and_random_inputs(tiny_encoder, texts):
    calib = calibration_batches(tiny_encoder, texts, CALIB)
    equalized, record = equalize(tiny_encoder.model, calib, EqualizeConfig(enabled=True))
    assert len(record.qk) == len(record.vo) == 2 and min(min(f) for f in record.qk.values()) > 0
    generator = torch.Generator().manual_seed(0)
    random_ids = torch.randint(0, tiny_encoder.tokenizer.vocab_size, (4, 24), generator=generator)
    for ids, mask in [next(batches(tiny_encoder, texts[100:116], 16)), (random_ids, torch.ones_like(random_ids))]:
        with torch.no_grad():
            reference, result = EncoderModule(tiny_encoder.model)(ids, mask), EncoderModule(equalized)(ids, mask)
        torch.testing.assert_close(result, reference, atol=1e-4 * reference.abs().max().item(), rtol=0)
    assert not torch.equal(equalized.encoder.layer[0].attention.self.query.weight,
                           tiny_encoder.model.encoder.layer[0].attention.self.query.weight)


def test_equalization_undoes_an_outlier_stress(tiny_encoder, texts):
    """PTQ error (relative to fp32, last hidden states): the stress multiplies it; equalized, the stressed model
    is as good as the original equalized (the balance is invariant to the stress)."""
    stress = stressed(tiny_encoder.model)
    calib = calibration_batches(tiny_encoder, texts, CALIB)
    ids, mask = next(batches(tiny_encoder, texts[256:288], 32))
    with torch.no_grad():
        reference = EncoderModule(tiny_encoder.model)(ids, mask)

    def ptq_error(model, equalization=EqualizeConfig()):
        encoder = copy.copy(tiny_encoder)
        encoder.model = model
        calibration = calibrate(encoder, texts, Recipe(QuantConfig(ops=["linear", "matmul"], weight_bits="8"), CALIB,
                                                       equalize=equalization))
        with torch.no_grad():
            output = simulate(calibration.model, calibration.qconf).eval()(ids, mask)
        return ((output - reference).norm() / reference.norm()).item()

    on = EqualizeConfig(enabled=True)
    plain, collapsed, recovered = ptq_error(tiny_encoder.model), ptq_error(stress), ptq_error(stress, on)
    assert collapsed > 5 * plain, (plain, collapsed)
    assert recovered == pytest.approx(ptq_error(tiny_encoder.model, on), rel=0.01) and recovered < 1.1 * plain
    a, _ = equalize(stress, calib, on)
    b, _ = equalize(tiny_encoder.model, calib, on)
    torch.testing.assert_close(a.encoder.layer[1].attention.self.query.weight,
                               b.encoder.layer[1].attention.self.query.weight, rtol=1e-4, atol=1e-6)


def test_models_equalization_cannot_handle_are_refused(tiny_encoder, texts):
    calib = calibration_batches(tiny_encoder, texts, CALIB)
    fused = copy.deepcopy(tiny_encoder.model)
    for layer in fused.encoder.layer:
        attention = layer.attention.self
        attention.qkv = nn.Linear(32, 96)
        del attention.query, attention.key, attention.value
    with pytest.raises(QatError, match="has no attention with separate query, key and value Linear projections"):
        equalize(fused, calib, EqualizeConfig(enabled=True))
    odd = copy.deepcopy(tiny_encoder.model)
    odd.config.num_attention_heads = 3
    with pytest.raises(QatError, match=r"projects to 32 channels but the config says 3 heads of hidden size 32"):
        equalize(odd, calib, EqualizeConfig(enabled=True))
    with pytest.raises(QatError, match="equalize.pairs entry='ab' is not valid"):
        EqualizeConfig(pairs=["ab"])


def test_smoothquant_folds_the_attention_output_factors_into_the_value_projection(tiny_encoder, texts):
    calibration = calibrate(tiny_encoder, texts, Recipe(QuantConfig(ops=["linear", "matmul", "add"]), CALIB,
                                                         smoothquant=SmoothQuantConfig(enabled=True)))
    smoothed = smoothed_buffers(calibration.model)
    assert sorted(smoothed) == sorted(f"encoder.layer.{i}.{m}" for i in range(2)
                                      for m in ("attention.self", "intermediate", "output"))
    original, folded = tiny_encoder.model.encoder.layer[0], calibration.model.encoder.layer[0]
    assert not torch.equal(original.attention.self.value.weight, folded.attention.self.value.weight)


def test_equalize_alpha_auto_equalizes_a_stressed_model_and_records_the_choice(tiny_model_dir, tmp_path,
                                                                              fresh_accelerate_state):
    """On the stressed model leaving attention as it is scores worst on the held-out texts, so 'auto' equalizes;
    the choice is in the artifact (a resumed run reads it) and in the report."""
    model_dir = tmp_path / "stressed"
    stressed(AutoModel.from_pretrained(tiny_model_dir)).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(model_dir)
    cfg = job_config("train", RunConfig, [f"model.name_or_path={model_dir}", "model.max_length=32", "calib.samples=64", ONE_TARGET,
                                          "+data.heldout.limit=40", "equalize=on", "equalize.candidates=[null,0.5]",
                                          "train=none"])
    report = run_train(cfg, tmp_path / "run")
    choice = report.equalize_choice
    assert set(choice.scores) == {"off", "0.5"} and choice.scores["0.5"] < choice.scores["off"], choice
    assert choice.alpha == 0.5 and report.equalize.enabled and report.equalize.alpha == 0.5
    metadata = json.loads((tmp_path / "run" / "ptq" / "metadata.json").read_text())["equalize"]
    assert metadata["choice"] == dataclasses.asdict(choice) and metadata["factors"]["qk"]
    assert "attention equalization (qk/vo) alpha 0.5 (auto" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.ipex
def test_a_recovery_run_on_an_equalized_model_exports_what_it_trained(tiny_model_dir, tmp_path, fresh_accelerate_state):
    cfg = job_config("train", RunConfig, [f"model.name_or_path={tiny_model_dir}", "model.max_length=32", "calib.samples=64", ONE_TARGET,
                                          "+data.heldout.limit=40", "equalize=on", "equalize.alpha=0.5", "smoothquant=on", "quant=full_int8",
                                          "recovery.force=true", "train.steps=3", "train.lr=1e-5", "train.batch_size=16", "teacher=fp32"])
    report = run_train(cfg, tmp_path / "run")
    assert report.final == "qat" and report.equalize.enabled
    for export in report.exports.values():
        assert export.runtimes["ipex"].parity.unfused_max_abs_diff == 0.0 and export.runtimes["ipex"].parity.passed
    metadata = (tmp_path / "run" / "ptq" / "metadata.json").read_text()
    assert '"qk"' in metadata and '"vo"' in metadata
