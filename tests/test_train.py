"""Recovery training: distillation loss, exact resume, NaN guard, fingerprint check, end to end."""
import copy
import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DataLoaderConfiguration
from safetensors.torch import load_file

from conftest import ONE_TARGET, REPO
from qat.base.settings import Settings
from qat.ptq import calibrate
from qat.quant.config import Recipe
from qat.config import TrainConfig
from qat.quant.config import CalibConfig, QuantConfig
from qat.data import PairSet
from qat.recovery.distill import MSE_LOSS, distillation_loss, ranking_loss, record_blocks, similarity_loss
from qat.quant.structure import transformer_blocks
from qat.base.errors import QatError
from qat.evaluation.metrics import EvalData, embed, evaluate
from qat.load import batches, pool
from qat.quant.wrapper import EncoderModule
from qat.quant.modules import QuantLinear
from qat.quant.numerics import weight_qparams
from qat.quant.simulate import simulate
from qat.recovery.trainer import (SIMILARITY_WEIGHT, STATE_FILE, BlockSchedule, LengthGroupedSampler, StartingPoint,
                                  Trainer, check_loss_terms, resolve_resume, similarity_weight)


@pytest.fixture
def qconf(tiny_encoder, texts):
    return calibrate(tiny_encoder, texts, Recipe(QuantConfig(ops=["linear", "matmul", "add"]), CalibConfig(samples=32, batch_size=16))).qconf


def make_trainer(tiny_encoder, qconf, texts, run_dir, settings=None, evaluate_hook=None, start=None, task=None,
                 **train):
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True))
    torch.manual_seed(0)
    partial = qconf.with_recipe(QuantConfig(ops=["linear", "matmul"]))
    teacher = simulate(tiny_encoder.model, partial).eval()
    student = simulate(tiny_encoder.model, qconf)
    dev = EvalData(texts[200:216])
    reference = embed(EncoderModule(tiny_encoder.model).eval(), tiny_encoder, dev.texts(), 16)

    def evaluate_dev(model):
        metrics = evaluate(embed(model, tiny_encoder, dev.texts(), 16), reference, dev)
        if evaluate_hook:
            evaluate_hook(metrics)
        return metrics

    metric = train.pop("metric", "cosine_mean")
    cfg = TrainConfig(**{"steps": 6, "batch_size": 8, "lr": 1e-3, "eval_every": 100, "save_every": 3,
                         "rounding_only": False, **train})
    return Trainer(accelerator, student, teacher, tiny_encoder, texts[:64], cfg, run_dir / "checkpoints", Settings(settings or {"calib.algorithm": "histogram"}), 0,
                   evaluate_dev, metric, start=start, task=task)


def test_blocks_are_found_and_loss_is_zero_when_student_equals_teacher(tiny_encoder, qconf, texts):
    sim = simulate(tiny_encoder.model, qconf).eval()
    same = copy.deepcopy(sim)
    assert len(transformer_blocks(sim)) == 2
    ids, mask = next(batches(tiny_encoder, texts[:8], 8))
    with torch.no_grad(), record_blocks(sim) as a, record_blocks(same) as b:
        pa, pb = pool(sim(ids, mask), mask, "mean"), pool(same(ids, mask), mask, "mean")
    loss = distillation_loss(a, b, pa, pb, mask, 1.0, 1.0)
    assert len(a) == 2 and loss.total.item() == pytest.approx(0.0, abs=1e-7)
    shifted = distillation_loss([x + 0.1 for x in a], b, pa, pb, mask, 1.0, 0.0)
    assert shifted.total.item() > 0 and all(x.item() > 0 for x in shifted.blocks)


def test_training_changes_weights_not_scales(tiny_encoder, qconf, texts, tmp_path):
    trainer = make_trainer(tiny_encoder, qconf, texts, tmp_path)
    student = trainer.accelerator.unwrap_model(trainer.student)
    weights = student.encoder.model.encoder.layer[0].output.dense.weight.detach().clone()
    buffers = {k: v.clone() for k, v in student.state_dict().items() if k.endswith(("scale", "zero_point"))}
    result = trainer.train(None)
    assert result.state.step == 6
    assert not torch.equal(weights, student.encoder.model.encoder.layer[0].output.dense.weight)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in buffers.items()) and buffers


def test_rounding_only_training_moves_each_weight_at_most_to_the_other_rounding_of_its_ptq_step(
        tiny_encoder, qconf, texts, tmp_path):
    trainer = make_trainer(tiny_encoder, qconf, texts, tmp_path, lr=0.05, rounding_only=True)   # a step far too large
    student = trainer.accelerator.unwrap_model(trainer.student)
    linears = {name: m for name, m in student.named_modules() if isinstance(m, QuantLinear)}
    before = {name: m.weight.detach().clone() for name, m in linears.items()}
    scales = {name: weight_qparams(w, *linears[name].weight_quantizer.weight_range)[0][:, None] for name, w in before.items()}
    trainer.train(None)
    moved = 0
    for name, m in linears.items():
        step, cell = scales[name], torch.floor(before[name] / scales[name])
        position = m.weight.detach() / step - cell   # inside the PTQ cell: [0, 1] steps above its floor
        assert position.min() >= -1e-4 and position.max() <= 1 + 1e-4, name
        moved += int((torch.round(m.weight.detach() / step) != torch.round(before[name] / step)).sum())
    assert moved > 0   # some weights did change the way they round


def test_the_trainer_refuses_an_unresolved_rounding_only(tiny_encoder, qconf, texts, tmp_path):
    with pytest.raises(QatError, match="train.rounding_only='auto' reached the trainer unresolved"):
        make_trainer(tiny_encoder, qconf, texts, tmp_path, rounding_only="auto")


def test_resume_after_interruption_reproduces_the_uninterrupted_run(tiny_encoder, qconf, texts, tmp_path):
    full = make_trainer(tiny_encoder, qconf, texts, tmp_path / "full", eval_every=4)
    full.train(None)
    expected = full.accelerator.unwrap_model(full.student).state_dict()

    def kill_at_step_4(metrics):
        if killed.state.step == 4:
            raise KeyboardInterrupt("killed")

    killed = make_trainer(tiny_encoder, qconf, texts, tmp_path / "resumed", evaluate_hook=kill_at_step_4, eval_every=4)
    with pytest.raises(KeyboardInterrupt):
        killed.train(None)
    checkpoint = resolve_resume("auto", tmp_path / "resumed" / "checkpoints")
    assert json.loads((checkpoint / STATE_FILE).read_text())["step"] == 3
    resumed = make_trainer(tiny_encoder, qconf, texts, tmp_path / "resumed", eval_every=4)
    assert resumed.train(checkpoint).state.step == 6
    got = resumed.accelerator.unwrap_model(resumed.student).state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=0, rtol=0, msg=key)


def test_nan_loss_stops_with_step_and_keeps_a_finite_best(tiny_encoder, qconf, texts, tmp_path):
    trainer = make_trainer(tiny_encoder, qconf, texts, tmp_path, save_every=100)
    transformer_blocks(trainer.teacher)[0].register_forward_hook(lambda module, args, out: out * float("nan"))
    with pytest.raises(QatError, match=r"loss became nan at step 1; stopped without saving. Last good checkpoint: none"):
        trainer.train(None)
    best = load_file(str(tmp_path / "checkpoints" / "best_student.safetensors"))
    assert all(torch.isfinite(t).all() for t in best.values() if t.is_floating_point())
    assert not list((tmp_path / "checkpoints").glob("step_*"))


def test_int8_teacher_must_differ_from_the_student(tiny_model_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "qat.train", f"hydra.run.dir={tmp_path / 'run'}", f"model.name_or_path={tiny_model_dir}",
         "model.max_length=32", "calib.samples=64", ONE_TARGET, "recovery.force=true", "teacher=int8"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert "is the student itself" in result.stderr.splitlines()[-1]


def test_the_automatic_teacher_is_fp32_where_the_student_runs_the_teacher_recipe(tiny_encoder, qconf):
    from qat.config import TeacherConfig
    from qat.recovery.train import build_teacher

    fp32 = torch.nn.Identity()
    default = TeacherConfig(kind="auto")
    assert build_teacher(default, tiny_encoder.model, qconf.with_recipe(QuantConfig()), fp32) == (fp32, "fp32")
    full = qconf.with_recipe(QuantConfig(ops=["linear", "matmul", "add"]))
    teacher, kind = build_teacher(default, tiny_encoder.model, full, fp32)
    assert kind == "int8" and teacher is not fp32


def test_resume_from_another_config_is_refused(tiny_encoder, qconf, texts, tmp_path):
    make_trainer(tiny_encoder, qconf, texts, tmp_path, steps=3).train(None)
    other = make_trainer(tiny_encoder, qconf, texts, tmp_path, settings={"calib.algorithm": "minmax"})
    with pytest.raises(QatError, match=r"belongs to another model or config \(calib.algorithm='histogram' \(now 'minmax'\)\)"):
        other.train(resolve_resume("auto", tmp_path / "checkpoints"))
    with pytest.raises(QatError, match="is not a checkpoint"):
        resolve_resume(str(tmp_path), tmp_path / "checkpoints")


@pytest.mark.ipex
@pytest.mark.slow
def test_recovery_run_end_to_end(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "qat.train", f"hydra.run.dir={run_dir}", f"model.name_or_path={tiny_model_dir}",
         "model.max_length=32", "calib.samples=64", ONE_TARGET, "quant=full_int8", "recovery.force=true", "train.steps=4", "train.batch_size=16",
         "train.eval_every=2", "train.save_every=2", "train.lr=1e-4", "train.bf16=true", "export.parity_min_cosine=0.9",
         "export.parity_mean_cosine=0.9"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["final"] == "qat" and report["training"]["step"] == 4
    assert {"fp32", "ptq_fakequant", "ptq_int8", "qat_fakequant", "qat_int8"} == set(report["variants"])
    assert (run_dir / "export" / "qat" / "model_int8.pt").is_file()
    assert report["training"]["best_step"] in (0, 2, 4)
    # bf16 training, fp32 simulation: the exported graph (unfused) computes exactly the trained student
    assert report["exports"]["qat"]["runtimes"]["ipex"]["parity"]["unfused_max_abs_diff"] == 0.0


@pytest.mark.ipex
def test_layer_norm_gradients_are_right_with_ipex_imported():
    """IPEX registers a layer_norm kernel without autograd and torch warns; the gradients must still be exact."""
    import qat.base.ipex  # noqa: F401

    torch.manual_seed(0)
    x, w, b = (torch.randn(shape, requires_grad=True) for shape in ((4, 7, 32), (32,), (32,)))
    g = torch.randn(4, 7, 32)
    (torch.nn.functional.layer_norm(x, (32,), w, b, 1e-12) * g).sum().backward()
    grads = [t.grad.clone() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    manual = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-12) * w + b
    (manual * g).sum().backward()
    for got, expected in zip(grads, (x.grad, w.grad, b.grad)):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.ipex
@pytest.mark.slow
def test_sensitivity_stage_and_smoothquant_in_the_job(tiny_model_dir, tmp_path):
    """`sensitivity.enabled=true` runs the stage first and its skip list joins the recipe; SmoothQuant migrates;
    a calibration mix is recorded in the PTQ artifact's metadata."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "qat.train", f"hydra.run.dir={run_dir}", f"model.name_or_path={tiny_model_dir}",
         "model.max_length=32", "calib.samples=64", ONE_TARGET, "train=none", "sensitivity.enabled=true", "sensitivity.top_k=1",
         "smoothquant=on", "smoothquant.alpha=0.5", "+data.mix={a: {proportion: 3, source: {limit: 150}}, b: {proportion: 1, source: {offset: 150, limit: 100}}}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    sensitivity = json.loads((run_dir / "sensitivity" / "sensitivity.json").read_text())
    report = json.loads((run_dir / "report.json").read_text())
    assert sensitivity["skip"] and report["recipe"]["skip"] == sensitivity["skip"]
    metadata = json.loads((run_dir / "ptq" / "metadata.json").read_text())
    assert metadata["smoothquant"]["enabled"] and metadata["recipe"]["skip"] == sensitivity["skip"]
    mix = metadata["calibration_data"]["mix"]
    assert (mix["a"]["texts"], mix["b"]["texts"]) == (48, 16) and mix["a"]["proportion"] == 3
    assert report["exports"]["ptq"]["runtimes"]["ipex"]["parity"]["passed"]
    assert report["smoothquant"]["enabled"] and "SmoothQuant alpha 0.5" in (run_dir / "report.md").read_text()


def test_length_grouped_batches_are_seeded_by_epoch_and_pad_little():
    lengths = [(i * 37) % 101 for i in range(200)]
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(200)) and list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    spread = [max(lengths[i] for i in first[b:b + 8]) - min(lengths[i] for i in first[b:b + 8]) for b in range(0, 200, 8)]
    assert max(spread) < 30 < 100


@pytest.mark.parametrize("dev_gain, heldout_drop, guard_drop, emd_rise, best_step",
                         [(10.0, 0.0, 0.5, 0.0, 0), (10.0, 0.01, 0.0, 0.0, 0), (10.0, 0.0, 0.0, 0.001, 0),
                          (-0.1, -0.01, 0.0, 0.0, 0), (10.0, 0.0, 0.0, 0.0, 6)])
def test_a_checkpoint_below_ptq_on_any_floor_is_never_kept(tiny_encoder, qconf, texts, tmp_path, dev_gain,
                                                           heldout_drop, guard_drop, emd_rise, best_step):
    """After the start the dev task measure moves by `dev_gain` per evaluation; held-out and guard fidelity (scripted
    here: cosine, and the EMD of the similarity scores) fall below PTQ's or stay at it. A checkpoint below PTQ on
    the dev measure is not kept either, however faithful (noise 0 here: any drop counts)."""
    def script(metrics):
        step = len(seen)
        seen.append(step)
        metrics["sts_dev/spearman"] = 50.0 + dev_gain * step
        metrics["cosine_mean"] = 0.95 - (heldout_drop if step else 0.0)
        metrics["guard/cosine_mean"] = 0.9 - (guard_drop if step else 0.0)
        metrics["emd_heldout_pairs"] = 0.01 + (emd_rise if step else 0.0)
        metrics["guard/emd"] = 0.02

    seen = []
    trainer = make_trainer(tiny_encoder, qconf, texts, tmp_path, evaluate_hook=script, eval_every=3,
                           metric="sts_dev/spearman")
    result = trainer.train(None)
    assert seen == [0, 1, 2] and result.state.floors == pytest.approx(
        {"sts_dev/spearman": 50.0, "cosine_mean": 0.95, "guard/cosine_mean": 0.9, "emd_heldout_pairs": 0.01,
         "guard/emd": 0.02})
    assert result.state.best_step == best_step


@pytest.mark.parametrize("noise, best_step", [(0.0, 3), (1.0, 6)])
def test_where_the_dev_measure_is_level_fidelity_decides(tiny_encoder, qconf, texts, tmp_path, noise, best_step):
    """Step 3 is 0.5 better on dev than step 6, step 6 is more faithful: with a dev noise of 1.0 the two are level
    and fidelity decides; without noise the dev measure does."""
    def script(metrics):
        step = len(seen)
        seen.append(step)
        metrics.update(scripted(step))

    def scripted(step):
        return {"sts_dev/spearman": [50.0, 60.0, 59.5][step], "cosine_mean": [0.95, 0.96, 0.97][step],
                "guard/cosine_mean": 0.9}

    seen = [0]   # step 0 is the PTQ model's, measured before training
    trainer = make_trainer(tiny_encoder, qconf, texts, tmp_path, evaluate_hook=script, eval_every=3,
                           metric="sts_dev/spearman", start=StartingPoint(scripted(0), noise))
    assert trainer.train(None).state.best_step == best_step


def test_patience_and_max_minutes_stop_early_and_say_why(tiny_encoder, qconf, texts, tmp_path):
    def never_better(metrics):
        metrics["cosine_mean"] = 0.5

    trainer = make_trainer(tiny_encoder, qconf, texts, tmp_path / "patience", evaluate_hook=never_better, eval_every=1,
                           patience=2)
    state = trainer.train(None).state
    assert (state.step, state.stopped, state.best_step) == (2, "patience", 0)
    assert (tmp_path / "patience" / "checkpoints" / "step_000002").is_dir()
    timed = make_trainer(tiny_encoder, qconf, texts, tmp_path / "timed", max_minutes=1e-6).train(None).state
    assert (timed.step, timed.stopped) == (1, "max_minutes")
    assert [row["step"] for row in timed.history] == [0, 1]   # the step it stopped at is evaluated, a candidate too


def test_step_0_reuses_the_ptq_metrics_measured_before_training(tiny_encoder, qconf, texts, tmp_path):
    measured = []
    fresh = make_trainer(tiny_encoder, qconf, texts, tmp_path / "fresh", evaluate_hook=measured.append, steps=2)
    expected = fresh.train(None).state
    assert len(measured) == 2   # step 0 and the end
    again = []
    reused = make_trainer(tiny_encoder, qconf, texts, tmp_path / "reused", evaluate_hook=again.append, steps=2,
                          start=StartingPoint(measured[0]))
    state = reused.train(None).state
    assert again == measured[1:]   # only the end is measured; step 0 is the metrics given
    assert (state.best_step, state.best_metric, state.floors) == (expected.best_step, expected.best_metric,
                                                                  expected.floors)


def test_the_ranking_loss_asks_only_for_the_order_of_the_labels():
    labels = torch.tensor([0.0, 2.5, 5.0])
    ordered, reversed_ = torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.9, 0.5, 0.1])
    assert ranking_loss(ordered, labels).item() < 0.01 and ranking_loss(reversed_, labels).item() > 10
    assert ranking_loss(ordered, labels).item() == pytest.approx(ranking_loss(ordered, labels / 5).item())
    assert ranking_loss(reversed_, torch.zeros(3)).item() == pytest.approx(0.0)   # tied labels ask nothing
    # a score head's logits are ranked on their own scale (1), cosines on CoSENT's (20)
    assert ranking_loss(ordered, labels, MSE_LOSS).item() > ranking_loss(ordered, labels).item()


def test_the_task_loss_is_added_drawn_the_same_for_a_batch_and_learnt(tiny_encoder, qconf, texts, tmp_path):
    task = PairSet(texts[:48], texts[48:96], [float(i % 6) for i in range(48)])
    trainer = make_trainer(tiny_encoder, qconf, texts, tmp_path, task=task, task_weight=0.5, steps=12,
                           similarity_weight=0)
    loss = trainer.loss(next(iter(trainer.loader)))
    assert loss.total.item() == pytest.approx(torch.stack(loss.blocks).sum().item() + loss.output.item()
                                              + 0.5 * loss.task.item(), rel=1e-5)
    with torch.no_grad():
        drawn = [trainer.task_loss().item() for _ in range(2)]
        trainer.state.batch_in_epoch = 1
        other = trainer.task_loss().item()
    assert drawn[0] == drawn[1] != other   # a resumed run draws the same pairs for the same batch

    def mean_task_loss():
        with torch.no_grad():
            values = []
            for batch in range(6):
                trainer.state.batch_in_epoch = batch
                values.append(trainer.task_loss().item())
        trainer.state.batch_in_epoch = 0
        return sum(values) / len(values)

    before = mean_task_loss()
    trainer.train(None)
    assert mean_task_loss() < before
    # off by default: no task term
    plain = make_trainer(tiny_encoder, qconf, texts, tmp_path / "plain", task=task)
    assert plain.loss(next(iter(plain.loader))).task is None


def test_the_similarity_loss_sees_a_shift_shared_by_all_embeddings_that_the_cosine_term_barely_sees():
    teacher = torch.nn.functional.normalize(torch.randn(16, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    shifted = teacher + 0.3 / 32 ** 0.5   # every embedding moves the same way: every similarity rises
    per_text = 1 - torch.nn.functional.cosine_similarity(shifted, teacher).mean()
    assert similarity_loss(teacher, teacher).item() == 0.0 and per_text.item() < 0.05
    assert similarity_loss(shifted, teacher).item() > 10 * per_text.item()
    assert similarity_loss(2.0 * teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)   # cosines: scale-free
    assert similarity_loss(teacher[:1], teacher[:1]).item() == 0.0   # one text, no pair


def test_the_similarity_term_is_added_for_embeddings_and_auto_leaves_it_out_for_score_models(
        tiny_encoder, qconf, texts, tmp_path):
    trainer = make_trainer(tiny_encoder, qconf, texts, tmp_path, similarity_weight=2.0)
    loss = trainer.loss(next(iter(trainer.loader)))
    assert loss.similarity.item() > 0
    assert loss.total.item() == pytest.approx(torch.stack(loss.blocks).sum().item() + loss.output.item()
                                              + 2.0 * loss.similarity.item(), rel=1e-5)
    off = make_trainer(tiny_encoder, qconf, texts, tmp_path / "off", similarity_weight=0)
    assert off.loss(next(iter(off.loader))).similarity is None
    assert make_trainer(tiny_encoder, qconf, texts, tmp_path / "auto").similarity_weight == SIMILARITY_WEIGHT > 0
    assert similarity_weight(dataclasses.replace(tiny_encoder, kind="scores"), "auto") == 0.0


def test_a_base_size_encoder_trains_one_step_under_the_bf16_path(tmp_path, texts, fresh_accelerate_state):
    """A 12-layer, 768-wide BERT (random weights, base-model size): one training step under bf16 autocast where
    the CPU computes bf16 natively (train.bf16=auto), fp32 elsewhere; the loss is finite and the weights move."""
    from conftest import save_bert
    from qat.config import ModelConfig
    from qat.jobs.train import training_bf16
    from qat.load import load_encoder

    save_bert(tmp_path / "base", hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    encoder = load_encoder(ModelConfig(str(tmp_path / "base"), max_length=32))
    qconf = calibrate(encoder, texts, Recipe(QuantConfig(), CalibConfig(samples=8, batch_size=8))).qconf
    bf16 = training_bf16("auto")
    accelerator = Accelerator(cpu=True, mixed_precision="bf16" if bf16 else "no",
                              dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True))
    student = simulate(encoder.model, qconf)
    weight = "encoder.model.encoder.layer.0.attention.self.query.weight"
    before = student.get_parameter(weight).detach().clone()
    dev = EvalData(texts[200:204])
    reference = embed(EncoderModule(encoder.model).eval(), encoder, dev.texts(), 4)
    trainer = Trainer(accelerator, student, EncoderModule(encoder.model).eval(), encoder, texts[:4],
                      TrainConfig(steps=1, batch_size=4, lr=1e-4, eval_every=100, save_every=100, bf16=bf16,
                                  rounding_only=False),
                      tmp_path / "checkpoints", Settings({}), 0,
                      lambda model: evaluate(embed(model, encoder, dev.texts(), 4), reference, dev), "cosine_mean")
    result = trainer.train(None)
    assert result.state.step == 1 and torch.isfinite(torch.tensor(result.state.history[-1]["cosine_mean"]))
    assert not torch.equal(before, accelerator.unwrap_model(trainer.student).get_parameter(weight).detach())


def test_record_blocks_can_end_a_forward_pass_at_a_block(tiny_encoder, qconf, texts):
    sim = simulate(tiny_encoder.model, qconf).eval()
    ids, mask = next(batches(tiny_encoder, texts[:8], 8))
    with torch.no_grad(), record_blocks(sim) as every:
        sim(ids, mask)
    reached = None
    with torch.no_grad(), record_blocks(sim, last=0) as first:
        reached = sim(ids, mask)   # stopped inside: never assigned
    assert reached is None and len(first) == 1 and torch.equal(first[0], every[0])
    with torch.no_grad(), record_blocks(sim) as again:   # the hooks are gone, the simulation runs whole again
        sim(ids, mask)
    assert len(again) == 2 and torch.equal(again[1], every[1])


def test_sequential_blocks_train_one_block_after_another_each_on_its_own_output(tiny_encoder, qconf, texts, tmp_path):
    trainer = make_trainer(tiny_encoder, qconf, texts, tmp_path, blocks="sequential", steps=6, lr=1e-2)
    student = trainer.accelerator.unwrap_model(trainer.student)
    layers = student.encoder.model.encoder.layer

    def weights(layer):
        return [p.detach().clone() for p in layer.parameters()]

    first, second = weights(layers[0]), weights(layers[1])
    trainer.train(None, stop_at=3)   # block 0's share: steps 1-3
    assert not all(torch.equal(a, b) for a, b in zip(first, weights(layers[0])))
    assert all(torch.equal(a, b) for a, b in zip(second, weights(layers[1])))
    after_first = weights(layers[0])
    trainer.train(None)              # block 1's share: steps 4-6; block 0 no longer moves
    assert trainer.state.step == 6
    assert all(torch.equal(a, b) for a, b in zip(after_first, weights(layers[0])))
    assert not all(torch.equal(a, b) for a, b in zip(second, weights(layers[1])))


def test_each_block_gets_its_own_share_and_lr_schedule():
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)])
    schedule = BlockSchedule(model, 10)
    assert [schedule.block(step) for step in range(10)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = schedule.scheduler(optimizer, warmup_ratio=0.34)   # one warm-up step per share of 3 (of 4: 1)
    factors = []
    for _ in range(10):
        factors.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert factors[0] == factors[3] == factors[6] == 0.0        # each share warms up from 0
    assert factors[1] == factors[4] == 1.0 and factors[2] == pytest.approx(0.5)
    assert factors[8] > factors[9] > 0.0                         # the last share (4 steps) decays to its end
    with pytest.raises(QatError, match="train.steps=2 with train.blocks=sequential leaves some"):
        BlockSchedule(model, 2)


def test_sequential_blocks_refuse_terms_on_the_outputs(tiny_encoder):
    with pytest.raises(QatError, match="train.blocks=sequential trains each block on its own output alone"):
        check_loss_terms(tiny_encoder, TrainConfig(blocks="sequential", task_weight=1.0))
    check_loss_terms(tiny_encoder, TrainConfig(blocks="sequential"))   # similarity auto: 0 for sequential blocks
    assert similarity_weight(tiny_encoder, "auto", "sequential") == 0.0
    with pytest.raises(QatError, match="train.blocks='blockwise' is not valid"):
        TrainConfig(blocks="blockwise")
