"""Calibration search (Optuna) and per-group sensitivity on tiny models."""
import json

import pytest
import torch
from omegaconf import OmegaConf

import qat.ptq.calibration
from qat.config import (DataConfig, EvalConfig, ModelConfig, RecoveryConfig, SearchConfig, SearchRunConfig,
                        SensitivityConfig, SensitivityRunConfig, SourceConfig, SpaceConfig)
from qat.quant.config import CalibConfig, QuantConfig, SmoothQuantConfig
from qat.base.errors import QatError
from qat.jobs.search import run_search
from qat.ptq.search_space import optimize
from qat.jobs.sensitivity import run_sensitivity

FAST_CALIB = CalibConfig(samples=32, batch_size=16, bins=256)


def tiny_data() -> DataConfig:
    return DataConfig(calibration=SourceConfig(limit=64), heldout=SourceConfig(offset=256, limit=40))


def test_search_finds_the_known_best_of_a_synthetic_objective():
    """Known optimum: mse with 3 batches; the wide stage runs only when the narrow best misses the bound."""
    cost = {"minmax": 2.0, "histogram": 0.5, "mse": 0.0, "percentile": 1.0}

    calls = []

    def objective(params):
        calls.append(params)
        return {"emd_heldout_pairs": cost[params.algorithm] + 0.01 * abs(params.batches - 3)}

    narrow = SpaceConfig(algorithm=["histogram", "percentile"], batches=[1, 8])
    wide = SpaceConfig(algorithm=["minmax", "histogram", "mse", "percentile"], batches=[1, 8])
    records = optimize(objective, SearchConfig(trials=30, bound=0.1, narrow=narrow, wide=wide), seed=0)
    best = min(records, key=lambda r: r.objective)
    assert best.params.algorithm == "mse" and best.params.batches == 3
    assert {r.stage for r in records} == {"narrow", "wide"} and len(records) == 60
    assert len(calls) == len({r.params for r in records}), "a repeated point is not re-measured"
    loose = optimize(objective, SearchConfig(trials=5, bound=10.0, narrow=narrow, wide=wide), seed=0)
    assert {r.stage for r in loose} == {"narrow"}


def test_search_collects_statistics_once_and_writes_a_usable_recipe(tiny_model_dir, tmp_path, monkeypatch):
    calls = []
    collect = qat.ptq.calibration.collect_statistics
    monkeypatch.setattr(qat.ptq.calibration, "collect_statistics", lambda *a, **k: calls.append(1) or collect(*a, **k))
    space = SpaceConfig(algorithm=["minmax", "percentile", "mse"], percentile=[99.0, 100.0], batches=[1, 2],
                        bias_correction=[False, True], symmetric=[False, True])
    cfg = SearchRunConfig(model=ModelConfig(str(tiny_model_dir), max_length=32), data=tiny_data(), calib=FAST_CALIB,
                          eval=EvalConfig(batch_size=32), search=SearchConfig(trials=4, narrow=space, wide=space))
    result = run_search(cfg, tmp_path)
    assert calls == [1] and len(result.trials) == 8
    assert result.best.objective == min(t.objective for t in result.trials)
    saved = json.loads((tmp_path / "search.json").read_text())
    assert saved["baseline_ipex_default"]["params"]["algorithm"] == "histogram"
    searched = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CalibConfig),
                                                   OmegaConf.load(tmp_path / "conf" / "calib" / "searched.yaml")))
    assert searched.algorithm == result.best.params.algorithm
    assert searched.samples == result.best.params.batches * FAST_CALIB.batch_size


def test_search_refuses_more_batches_than_the_calibration_split_holds(tiny_model_dir, tmp_path):
    space = SpaceConfig(batches=[1, 5])
    cfg = SearchRunConfig(model=ModelConfig(str(tiny_model_dir), max_length=32), data=tiny_data(), calib=FAST_CALIB,
                          search=SearchConfig(trials=1, narrow=space, wide=space))
    with pytest.raises(QatError, match="asks for 5 calibration batches of 16 .80 texts. but the calibration set has 64"):
        run_search(cfg, tmp_path)


@pytest.mark.parametrize("kwargs, message", [
    ({"algorithm": []}, "search space algorithm is empty"),
    ({"percentile": [99.0, 100.5]}, "percentile 100.5 is not valid; expected a number in \\(0, 100\\]"),
    ({"percentile": [0.0]}, "percentile 0.0 is not valid"),
    ({"algorithm": ["kl"]}, "search space algorithm='kl' is not valid"),
    ({"batches": [4, 2]}, "expected \\[value\\] or \\[low, high\\] with low <= high"),
])
def test_bad_search_spaces_are_refused(kwargs, message):
    with pytest.raises(QatError, match=message):
        SpaceConfig(**kwargs)


def edited_model(tiny_model_dir, out_dir, edit):
    """The tiny model after `edit(model)`, saved with its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        edit(model)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out_dir)
    return out_dir


def test_sensitivity_puts_a_deliberately_fragile_group_first(tiny_model_dir, tmp_path):
    """A huge activation outlier in one FFN: one GELU channel of layer 1 made ~60 while the rest stay below 1,
    so the int8 step of the FFN-out input swallows every other channel."""
    def edit(model):
        model.encoder.layer[1].intermediate.dense.bias[5] = 60.0

    fragile_dir = edited_model(tiny_model_dir, tmp_path / "fragile", edit)
    cfg = SensitivityRunConfig(model=ModelConfig(str(fragile_dir), max_length=32), data=tiny_data(), calib=FAST_CALIB,
                    eval=EvalConfig(batch_size=32), quant=QuantConfig(ops=["linear"], skip=["encoder.layer.0.intermediate.dense"]),
                    sensitivity=SensitivityConfig(metric="cosine_mean", max_skip=2), recovery=RecoveryConfig(threshold=0.0))
    result = run_sensitivity(cfg, tmp_path / "run")
    assert result.ranking[0].group == "encoder.layer.1.output.dense"
    groups = {r.group for r in result.ranking}
    assert groups == {f"encoder.layer.{i}.{g}" for i in range(2)
                      for g in ("attention.self.qkv", "attention.output.dense", "intermediate.dense", "output.dense")
                      } - {"encoder.layer.0.intermediate.dense"}, "the user's own skip list stays fp32 and is not ranked"
    assert result.skip[0] == "encoder.layer.1.output.dense"
    assert result.prefixes[1].loss < result.prefixes[0].loss
    for name in ("sensitivity.json", "sensitivity.md", "sensitivity.png", "conf/quant/sensitive.yaml"):
        assert (tmp_path / "run" / name).is_file()
    skipped = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(QuantConfig),
                                                  OmegaConf.load(tmp_path / "run" / "conf" / "quant" / "sensitive.yaml")))
    assert skipped.skip == ["encoder.layer.0.intermediate.dense"] + result.skip
    assert list((tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*"))


def test_sensitivity_ranks_a_residual_add_apart_from_its_linear(tiny_model_dir, tmp_path):
    """Massive activations in two FFN-out channels of layer 1 (+-200, while the FFN's other outputs are scaled to
    matter; the LayerNorm after the add drops both channels, as an encoder's later layers ignore theirs): the
    residual add that reads them is the fragile op, and the skip list leaves only that add fp32, its Linear int8."""
    def edit(model):
        out = model.encoder.layer[1].output
        out.dense.weight *= 20
        out.dense.bias[5], out.dense.bias[6] = 200.0, -200.0
        out.LayerNorm.weight[5:7] = 0.0
        out.LayerNorm.bias[5:7] = 0.0
        out.LayerNorm.weight *= 10

    fragile_dir = edited_model(tiny_model_dir, tmp_path / "fragile", edit)
    cfg = SensitivityRunConfig(model=ModelConfig(str(fragile_dir), max_length=32), data=tiny_data(), calib=FAST_CALIB,
                               eval=EvalConfig(batch_size=32), quant=QuantConfig(ops=["linear", "residual_add"]),
                               sensitivity=SensitivityConfig(metric="cosine_mean", top_k=1),
                               recovery=RecoveryConfig(threshold=0.0))
    result = run_sensitivity(cfg, tmp_path / "run")
    groups = {r.group for r in result.ranking}
    assert {"encoder.layer.1.output.add", "encoder.layer.1.output.dense"} <= groups
    assert result.ranking[0].group == "encoder.layer.1.output.add"
    assert result.skip == ["encoder.layer.1.output.add"]
    assert result.prefixes[1].loss < result.prefixes[0].loss


def test_search_over_smoothquant_alpha_collects_statistics_once_per_alpha(tiny_model_dir, tmp_path, monkeypatch):
    calls = []
    collect = qat.ptq.calibration.collect_statistics
    monkeypatch.setattr(qat.ptq.calibration, "collect_statistics", lambda *a, **k: calls.append(1) or collect(*a, **k))
    space = SpaceConfig(algorithm=["minmax"], batches=[2], alpha=[0.3, 0.5])
    cfg = SearchRunConfig(model=ModelConfig(str(tiny_model_dir), max_length=32), data=tiny_data(), calib=FAST_CALIB,
                          eval=EvalConfig(batch_size=32), smoothquant=SmoothQuantConfig(enabled=True),
                          search=SearchConfig(trials=6, bound=1.0, narrow=space, wide=space))
    result = run_search(cfg, tmp_path)
    alphas = {round(t.params.alpha, 2) for t in result.trials}
    assert alphas <= {0.3, 0.35, 0.4, 0.45, 0.5} and result.statistics_collections == len(alphas) + 1  # + baseline
    # one collection before SmoothQuant (every alpha migrates from it), and one on the migrated model per alpha
    assert len(calls) == 1 + len(alphas)
    searched = OmegaConf.load(tmp_path / "conf" / "smoothquant" / "searched.yaml")
    assert searched.enabled and searched.alpha == result.best.params.alpha


def test_sensitivity_refuses_a_skip_list_naming_no_module(tiny_model_dir, tmp_path):
    cfg = SensitivityRunConfig(model=ModelConfig(str(tiny_model_dir), max_length=32), data=tiny_data(), calib=FAST_CALIB,
                               quant=QuantConfig(skip=["encoder.layer.9.output"]))
    with pytest.raises(QatError, match=r"quant.skip entries \['encoder.layer.9.output'\] match no quantizable module"):
        run_sensitivity(cfg, tmp_path)
