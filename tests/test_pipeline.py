"""The recovery job called in-process: one session, statistics collected once, typed results."""
import json
import shutil

import pytest
import torch

import qat.ptq
import qat.ptq.calibration
from conftest import ONE_TARGET
from qat.ptq import calibrate
from qat.quant.config import Recipe
import qat.recovery
from qat.config import RecoveryConfig, RunConfig, SearchRunConfig, SensitivityRunConfig
from qat.jobs.command import job_config
from qat.base.errors import QatError
from qat.evaluation.metrics import Variant
from qat.jobs.train import run_train
from qat.quant.config import CalibConfig, QuantConfig
from qat.quant.simulate import simulate
from qat.jobs.report import RunReport
from qat.evaluation.session import open_session


def tiny_overrides(tiny_model_dir) -> list[str]:
    return [f"model.name_or_path={tiny_model_dir}", "model.max_length=32", "calib.samples=64",
            "+data.heldout.limit=40", "eval.batch_size=32"]


@pytest.mark.ipex
def test_sensitivity_stage_reuses_the_calibration_and_the_job_never_rereads_its_artifact(
        tiny_model_dir, tmp_path, monkeypatch, fresh_accelerate_state):
    collections = []
    collect = qat.ptq.calibration.collect_statistics
    monkeypatch.setattr(qat.ptq.calibration, "collect_statistics", lambda *a, **k: collections.append(1) or collect(*a, **k))
    monkeypatch.setattr(qat.ptq, "read_ptq_artifact", lambda path: pytest.fail(f"the job read back {path}"))
    cfg = job_config("train", RunConfig, tiny_overrides(tiny_model_dir) + [ONE_TARGET,
        "train=none", "quant=full_int8", "sensitivity.enabled=true", "sensitivity.top_k=1"])
    report = run_train(cfg, tmp_path / "run")
    assert isinstance(report, RunReport) and collections == [1]
    sensitivity = json.loads((tmp_path / "run" / "sensitivity" / "sensitivity.json").read_text())
    assert report.recipe.skip == sensitivity["skip"] and len(report.recipe.skip) >= 1
    assert set(report.variants) == {Variant.FP32, Variant.PTQ_FAKEQUANT, Variant.PTQ_INT8}
    ipex = report.exports["ptq"].runtimes["ipex"]
    assert ipex.parity.passed and ipex.parity.unfused_max_abs_diff == 0.0
    # Parity at the serving length: 8 passages of 32 tokens, judged apart, exact unfused as on the held-out texts.
    assert ipex.passage_parity.texts == 8 and ipex.passage_parity.unfused_max_abs_diff == 0.0 and ipex.passed
    assert "on 8 passages of 32 tokens (passed)" in (tmp_path / "run" / "report.md").read_text()
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["recipe"]["skip"] == sensitivity["skip"] and saved["variants"]["ptq_int8"] == report.variants[Variant.PTQ_INT8]
    assert saved["exports"]["ptq"]["runtimes"]["ipex"]["parity"]["rounding_floor"].keys() == {"cosine_mean", "cosine_min"}
    assert json.loads((tmp_path / "run" / "ptq" / "metadata.json").read_text())["recipe"]["skip"] == sensitivity["skip"]


def test_a_metric_that_is_not_measured_is_refused_before_calibration(tiny_model_dir):
    cfg = job_config("sensitivity", SensitivityRunConfig, tiny_overrides(tiny_model_dir) + ["sensitivity.metric=wikiqa_dev/map"])
    with pytest.raises(QatError, match=r"sensitivity.metric='wikiqa_dev/map' is not measured on this data; expected one of"):
        open_session(cfg.model, cfg.data, cfg.eval, seed=0, threads=None,
                     metrics={"sensitivity.metric": cfg.sensitivity.metric})


def test_test_splits_never_drive_a_choice():
    with pytest.raises(QatError, match=r"recovery.metric='stsb_test/spearman' reads a test split"):
        job_config("train", RunConfig, ["recovery.metric=stsb_test/spearman"])


def test_simulate_copies_the_model_and_qconf_recipes_are_new_objects(tiny_encoder, texts):
    qconf = calibrate(tiny_encoder, texts, Recipe(QuantConfig(ops=["linear"]), CalibConfig(samples=32, batch_size=16))).qconf
    before = {k: v.clone() for k, v in tiny_encoder.model.state_dict().items()}
    sim = simulate(tiny_encoder.model, qconf)
    with torch.no_grad():
        for parameter in sim.parameters():
            parameter.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in tiny_encoder.model.state_dict().items())
    assert not any(type(m).__name__ == "QuantLinear" for m in tiny_encoder.model.modules())
    partial = qconf.with_recipe(QuantConfig(ops=["linear"], skip=["encoder.layer.0.output.dense"]))
    assert partial is not qconf and partial.int8_counts()["linear"] == qconf.int8_counts()["linear"] - 1


def test_smoothquant_alpha_auto_picks_the_closest_candidate_on_held_out_texts_and_records_it(
        tiny_model_dir, tmp_path, monkeypatch, fresh_accelerate_state):
    collections = []
    collect = qat.ptq.calibration.collect_statistics
    monkeypatch.setattr(qat.ptq.calibration, "collect_statistics", lambda *a, **k: collections.append(1) or collect(*a, **k))
    cfg = job_config("train", RunConfig, tiny_overrides(tiny_model_dir) + [ONE_TARGET,
        "train=none", "quant=full_int8", "smoothquant=on", "smoothquant.candidates=[0.2,0.5,0.8]",
        "equalize=on", "equalize.candidates=[null]"])
    assert cfg.smoothquant.alpha == cfg.equalize.alpha == "auto"
    report = run_train(cfg, tmp_path / "run")
    choice = report.smoothquant_choice
    assert choice.objective == "emd_heldout_pairs, guard/emd" and set(choice.scores) == {"0.2", "0.5", "0.8"}
    assert choice.scores[str(choice.alpha)] == min(choice.scores.values()) and report.smoothquant.alpha == choice.alpha
    assert len(collections) == 1 + 3   # before SmoothQuant once, after it once per candidate; the PTQ reuses its own
    for name in ("emd_heldout_pairs", "guard/emd"):
        # relative 1e-4: importing IPEX (for the export, after the trials when this test runs alone) swaps some CPU kernels
        assert report.variants[Variant.PTQ_FAKEQUANT][name] == pytest.approx(choice.distances[name][str(choice.alpha)],
                                                                             rel=1e-4)
    metadata = qat.ptq.read(tmp_path / "run" / "ptq").metadata
    assert metadata.smoothquant.choice == choice   # a resumed run reads, not rechooses
    # equalization's only candidate here is 'off': the model is left as it was, and the run says so
    assert report.equalize_choice.alpha is None and not report.equalize.enabled
    assert metadata.equalize.choice == report.equalize_choice and metadata.equalize.factors is None
    assert not metadata.equalize.enabled and metadata.smoothquant.alpha == choice.alpha
    text = (tmp_path / "run" / "report.md").read_text()
    assert f"SmoothQuant alpha {choice.alpha} (auto" in text and "attention equalization (qk/vo) alpha off (auto" in text


@pytest.mark.parametrize("floor", [-1.0, 1.0])
def test_smoothquant_auto_migrates_only_where_ptq_without_it_is_past_the_fidelity_floor(
        tiny_model_dir, tmp_path, monkeypatch, fresh_accelerate_state, floor):
    collections = []
    collect = qat.ptq.calibration.collect_statistics
    monkeypatch.setattr(qat.ptq.calibration, "collect_statistics", lambda *a, **k: collections.append(1) or collect(*a, **k))
    cfg = job_config("train", RunConfig, tiny_overrides(tiny_model_dir) + [ONE_TARGET,
        "train=none", "quant=full_int8", "smoothquant=auto", "smoothquant.candidates=[0.5,0.8]",
        f"recovery.min_cosine={floor}"])
    report = run_train(cfg, tmp_path / "run")
    text = (tmp_path / "run" / "report.md").read_text()
    metadata = qat.ptq.read(tmp_path / "run" / "ptq").metadata
    if floor < 0:   # every PTQ keeps a floor of -1: no migration is tried
        assert collections == [1] and report.smoothquant_choice is None and not report.smoothquant.enabled
        assert "(SmoothQuant off by smoothquant=auto: PTQ without it keeps the fidelity floor, cosine_mean held-out" in text
        assert not metadata.smoothquant.enabled and metadata.smoothquant.auto == report.smoothquant_auto
        return
    choice = report.smoothquant_choice   # no int8 model reaches a cosine of 1: 'off' and both alphas are trials
    assert len(collections) == 1 + 2 and set(choice.scores) == {"off", "0.5", "0.8"}
    assert choice.scores["off" if choice.alpha is None else str(choice.alpha)] == min(choice.scores.values())
    assert report.smoothquant.enabled == (choice.alpha is not None) and metadata.smoothquant.choice == choice
    assert "by smoothquant=auto: PTQ without it is past the fidelity floor on held-out and guard, cosine_mean" in text
    fakequant = report.variants[Variant.PTQ_FAKEQUANT]   # the PTQ model is the chosen trial's
    assert fakequant["emd_heldout_pairs"] == pytest.approx(choice.distances["emd_heldout_pairs"][
        "off" if choice.alpha is None else str(choice.alpha)], rel=1e-4)


def test_smoothquant_auto_is_refused_by_a_search_whose_alpha_is_searched():
    with pytest.raises(QatError, match="smoothquant=auto in a search"):
        job_config("search", SearchRunConfig, ["smoothquant=auto"])


def test_smoothquant_alpha_auto_needs_smoothquant_on():
    with pytest.raises(QatError, match="smoothquant.alpha=auto with smoothquant off; expected smoothquant=on"):
        job_config("train", RunConfig, ["smoothquant=off", "smoothquant.alpha=auto"])


def test_lr_auto_runs_a_trial_per_candidate_continues_the_best_and_a_resume_does_not_choose_again(
        tiny_model_dir, tmp_path, monkeypatch, fresh_accelerate_state):
    overrides = tiny_overrides(tiny_model_dir) + [
        ONE_TARGET, "recovery.force=true", "train.lr=auto", "train.lr_candidates=[1e-4,1e-3]", "train.trial_steps=2",
        "train.steps=4", "train.eval_every=2", "train.batch_size=8", "teacher=fp32", "~data.guard"]
    report = run_train(job_config("train", RunConfig, overrides), tmp_path / "run")
    training = report.training
    choice = training.lr_choice
    assert set(choice.trials) == {"0.0001", "0.001"} and choice.trial_steps == 2 and training.lr == choice.lr
    scores = {lr: t.metric for lr, t in choice.trials.items()}
    held = {lr: value for lr, value in scores.items() if value is not None}   # None: less faithful than PTQ
    assert choice.lr == (float(max(held, key=held.get)) if held else min(map(float, scores))) and training.step == 4
    assert training.seconds >= sum(t.seconds for t in choice.trials.values())
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / "lr_trials" / "choice.json").is_file() and (checkpoints / "step_000004").is_dir()
    assert "(auto: dev cosine_mean after 2 steps by lr:" in (tmp_path / "run" / "report.md").read_text()

    # killed after the trials, before the continuation saved anything: the resume reads the choice
    shutil.rmtree(checkpoints / "step_000004")
    trained = []
    train = qat.recovery.Trainer.train
    monkeypatch.setattr(qat.recovery.Trainer, "train", lambda self, start, stop_at=None: trained.append(stop_at) or
                        train(self, start, stop_at))
    resumed = run_train(job_config("train", RunConfig, overrides + ["train.resume=auto"]), tmp_path / "run")
    assert trained == [None] and resumed.training.lr_choice == choice and resumed.training.step == 4
    assert resumed.variants[Variant.QAT_FAKEQUANT] == pytest.approx(report.variants[Variant.QAT_FAKEQUANT])


def test_the_fidelity_gate_trains_a_model_whose_dev_task_measure_is_level():
    fp32 = {"sts_dev/spearman": 88.11, "cosine_mean": 1.0, "guard/cosine_mean": 1.0}
    level = {"sts_dev/spearman": 88.15, "cosine_mean": 0.93, "guard/cosine_mean": 0.99}   # all-mpnet-base-v2's PTQ
    decision = qat.recovery.decide_recovery(RecoveryConfig(metric="sts_dev/spearman"), True, fp32, level, pairs=False)
    assert decision.train and decision.gates == ["fidelity"] and decision.fidelity.past_floor() == ["held-out"]
    assert "Fidelity gate: cosine_mean held-out 0.9300, guard 0.9900 (floor 0.9800)" in decision.describe()
    assert qat.recovery.rounding_only("auto", decision) and not qat.recovery.rounding_only(False, decision)
    lost = qat.recovery.decide_recovery(RecoveryConfig(metric="sts_dev/spearman"), True, fp32,
                                        {**level, "sts_dev/spearman": 80.0}, pairs=False)
    assert lost.gates == ["task", "fidelity"] and not qat.recovery.rounding_only("auto", lost)   # the weights need room
    assert qat.recovery.rounding_only(True, lost)
    faithful = {**level, "cosine_mean": 0.99}
    assert not qat.recovery.decide_recovery(RecoveryConfig(metric="sts_dev/spearman"), True, fp32, faithful, False).train
    off = RecoveryConfig(metric="sts_dev/spearman", min_cosine=None)
    assert not qat.recovery.decide_recovery(off, True, fp32, level, pairs=False).train


def test_a_job_trains_when_only_fidelity_is_past_the_floor(tiny_model_dir, tmp_path, fresh_accelerate_state):
    overrides = tiny_overrides(tiny_model_dir) + [
        ONE_TARGET, "recovery.threshold=0.99", "recovery.min_cosine=1.0", "train.lr=1e-4", "train.steps=2",
        "train.eval_every=2", "train.batch_size=8", "teacher=fp32"]
    report = run_train(job_config("train", RunConfig, overrides), tmp_path / "run")
    assert report.recovery.gates == ["fidelity"] and report.training is not None and report.final == "qat"
    assert report.recovery.ptq_loss < 0.99 and report.recovery.fidelity.heldout < 1.0
    assert report.training.rounding_only   # train.rounding_only=auto: the fidelity gate alone trained
    assert "Decision: trained by the fidelity gate." in (tmp_path / "run" / "report.md").read_text()
    assert "each weight re-rounded within its PTQ quantization step" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.parametrize("noise, chosen", [(0.0, 1e-4), (0.5, 3e-5)])
def test_lr_trials_level_within_the_dev_noise_are_decided_by_fidelity(noise, chosen):
    """all-mpnet-base-v2's trials after 30 steps (STS-B dev sample Spearman, held-out cosine): 1e-4 leads on dev by
    0.08, inside a noise of 0.5, and is the least faithful; 1e-6 fell below PTQ."""
    from qat.config import TrainConfig
    from qat.recovery.train import LrTrial, _best_lr

    trials = {"1e-06": LrTrial(None, 1.0, 0.92), "1e-05": LrTrial(89.16, 1.0, 0.9516),
              "3e-05": LrTrial(89.35, 1.0, 0.9531), "0.0001": LrTrial(89.44, 1.0, 0.9507)}
    choice = _best_lr(TrainConfig(), "stsb_dev/spearman", trials, noise, "cosine_mean")
    assert choice.lr == chosen
