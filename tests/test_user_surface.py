"""What a user touches: the int8 model API on an export folder, the stand-alone evaluate and export entry points,
and progress bars that stay off when the output is not a terminal."""
import json
import sys

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from conftest import HAS_IPEX

import qat.base.progress
from qat import load_int8
from qat.config import ModelConfig, RunConfig
from qat.jobs.command import job_config
from qat.base.errors import QatError
from qat.evaluation.metrics import embed
from qat.evaluate import main as evaluate_main
from qat.export import main as export_main
from qat.exporters.folder import INFO_FILE
from qat.load import batches, load_encoder
from qat.jobs.train import run_train

TINY = ["model.max_length=32", "calib.samples=64", "+data.heldout.limit=40", "eval.batch_size=32"]
# OpenVINO is left to tests/test_architectures.py: an OpenVINO export made in this module's fixture leaves pytest's
# capture of a later capsys test closed ("I/O operation on closed file"; not seen outside pytest).
RUNTIMES = ["export.targets=[ipex,onnx]"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir):
    """A finished recovery run of the tiny model, called in-process."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    run_dir = tmp_path_factory.mktemp("surface") / "run"
    cfg = job_config("train", RunConfig, [f"model.name_or_path={tiny_model_dir}", *TINY, "quant=full_int8",
                                          "recovery.force=true", "train.steps=4", "train.lr=1e-5", "train.batch_size=16",
                                          "train.eval_every=2", "train.save_every=2", *RUNTIMES])
    report = run_train(cfg, run_dir)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return run_dir, report


@pytest.mark.ipex
def test_an_export_folder_is_self_contained_and_encode_matches_the_pipeline(trained_run, tiny_model_dir, texts,
                                                                             ipex_export):
    run_dir, report = trained_run
    folder = run_dir / "export" / "qat"
    info = json.loads((folder / INFO_FILE).read_text())
    assert info["pooling"] == "mean" and info["max_length"] == 32 and info["kind"] == "embedding"
    assert info["input_names"] == ["input_ids", "attention_mask"] and info["int8_ops"]["residual_add"] > 0
    assert (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()
    model = load_int8(folder)
    sample = texts[300:316]
    encoder = load_encoder(ModelConfig(str(tiny_model_dir), max_length=32))
    # One batch both ways (the same padding), so the int8 kernels see the same shapes; both warmed up, so fused.
    warmup = next(batches(encoder, sample[:2], 2))
    expected = embed(ipex_export.load_exported(folder / "model_int8.pt", warmup), encoder, sample, 64)
    got = model.encode(sample, batch_size=64)
    assert isinstance(got, np.ndarray) and got.shape == (16, 32)
    np.testing.assert_allclose(got, torch.stack([expected[t] for t in sample]).numpy(), atol=1e-5)
    # Length-sorted batches of 3 come back in the caller's order.
    small = model.encode(sample, batch_size=3, convert_to_tensor=True)
    assert small.shape == (16, 32)
    assert torch.nn.functional.cosine_similarity(small, torch.from_numpy(got)).min() > 0.999
    reversed_rows = model.encode(sample[::-1], batch_size=3, convert_to_tensor=True)
    torch.testing.assert_close(reversed_rows.flip(0), small, atol=1e-5, rtol=0)
    assert model.encode(sample[0]).shape == (32,)


@pytest.mark.ipex
def test_an_export_of_another_format_is_refused(trained_run, tmp_path):
    import shutil

    folder = tmp_path / "old"
    shutil.copytree(trained_run[0] / "export" / "ptq", folder)
    info = json.loads((folder / INFO_FILE).read_text())
    (folder / INFO_FILE).write_text(json.dumps({**info, "format": 0}))
    with pytest.raises(QatError, match=r"has format 0 \(made by qat .*\); this qat reads format 1"):
        load_int8(folder)
    with pytest.raises(QatError, match="is not a qat export folder"):
        load_int8(tmp_path)


def run_main(main, argv, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", ["qat", *argv])
    main()
    return capsys.readouterr().out


@pytest.mark.ipex
def test_export_and_evaluate_stand_alone(trained_run, tmp_path, monkeypatch, capsys):
    run_dir, report = trained_run
    out = run_main(export_main, [f"hydra.run.dir={tmp_path / 'export'}", f"source.artifact={run_dir / 'ptq'}",
                                 f"source.weights={run_dir / 'checkpoints' / 'best_student.safetensors'}",
                                 "+data.heldout.limit=40", "eval.batch_size=32", *RUNTIMES], monkeypatch, capsys)
    runtimes = json.loads((tmp_path / "export" / "export.json").read_text())["runtimes"]
    assert list(runtimes) == ["ipex", "onnx"] and all(r["parity"]["passed"] for r in runtimes.values())
    assert runtimes["ipex"]["parity"]["unfused_max_abs_diff"] == 0.0 and "export:" in out
    # The stand-alone export of the trained weights computes what the job's own QAT export computes.
    trained = report.exports["qat"].runtimes["ipex"].parity.fidelity_to_fp32.fakequant
    assert runtimes["ipex"]["parity"]["fidelity_to_fp32"]["fakequant"] == pytest.approx(trained, abs=1e-6)

    exported = tmp_path / "export" / "export" / "qat"
    out = run_main(evaluate_main, [f"hydra.run.dir={tmp_path / 'evaluate'}", f"target.folder={exported}",
                                   f"model.name_or_path={run_dir / 'ptq' / 'model'}", "model.max_length=32",
                                   "+data.heldout.limit=40", "eval.batch_size=32"], monkeypatch, capsys)
    evaluation = json.loads((tmp_path / "evaluate" / "evaluation.json").read_text())
    assert set(evaluation["variants"]) == {"fp32", "int8"} and "| int8 (exported ipex) |" in out
    assert 0.5 < evaluation["variants"]["int8"]["cosine_mean"] < 1.0

    # Against a baseline export on a labelled set: each model's metrics, and the differences with intervals.
    sentences = [f"sentence number {i} about {topic}" for i, topic in enumerate(["rain", "cats", "trains", "tea"] * 6)]
    rows = [f"{i % 5}\t{sentences[i]}\t{sentences[-1 - i]}" for i in range(len(sentences))]
    (tmp_path / "sts.tsv").write_text("score\tsentence1\tsentence2\n" + "\n".join(rows) + "\n")
    out = run_main(evaluate_main, [f"hydra.run.dir={tmp_path / 'compare'}", f"target.folder={exported}",
                                   f"target.baseline={run_dir / 'export' / 'ptq'}",
                                   f"model.name_or_path={run_dir / 'ptq' / 'model'}", "model.max_length=32",
                                   "+data.heldout.limit=40", "eval.batch_size=32",
                                   f"+data.tasks.sts_dev={{kind: file, path: {tmp_path / 'sts.tsv'}, format: pairs}}"],
                   monkeypatch, capsys)
    evaluation = json.loads((tmp_path / "compare" / "evaluation.json").read_text())
    variants, differences = evaluation["variants"], evaluation["differences"]
    assert set(variants) == {"fp32", "int8", "baseline"} and set(differences) == {"int8 - fp32", "int8 - baseline"}
    difference = differences["int8 - baseline"]["sts_dev/spearman"]
    assert difference["value"] == pytest.approx(variants["int8"]["sts_dev/spearman"] - variants["baseline"]["sts_dev/spearman"])
    assert difference["low"] <= difference["value"] <= difference["high"] and "| int8 - fp32 | int8 - baseline |" in out


def test_progress_is_off_when_not_a_terminal(monkeypatch):
    monkeypatch.setattr(qat.base.progress.sys.stderr, "isatty", lambda: False, raising=False)
    assert qat.base.progress.progress(range(3), desc="x").disable
    monkeypatch.setattr(qat.base.progress.sys.stderr, "isatty", lambda: True, raising=False)
    assert not qat.base.progress.progress(range(3), desc="x").disable


@pytest.mark.ipex
def test_every_runtime_of_an_export_folder_runs_int8_and_encodes_alike(trained_run, texts):
    """The folder holds an IPEX and an ONNX export of the one trained model (OpenVINO's: tests/test_architectures.py),
    each checked to run int8 (the report's evidence) and to compute its simulation; load_int8 runs either."""
    run_dir, report = trained_run
    folder = run_dir / "export" / "qat"
    record = report.exports["qat"]
    assert list(record.runtimes) == ["ipex", "onnx"] and record.passed
    assert record.runtimes["onnx"].int8_ops.get("MatMulIntegerToFloat", 0) + record.runtimes["onnx"].int8_ops.get(
        "QLinearMatMul", 0) >= 12   # 12 Linears of the tiny BERT, and the attention matmuls
    assert (folder / "onnx" / "model_qint8.onnx").is_file()
    sample = texts[300:316]
    ipex, onnx = (load_int8(folder, backend=backend).encode(sample) for backend in ("ipex", "onnx"))
    assert (ipex * onnx).sum(-1).min() > 0.98   # normalised rows
    with pytest.raises(QatError, match=r"backend='openvino' is not exported in .*; expected one of \['ipex', 'onnx'\]"):
        load_int8(folder, backend="openvino")


@pytest.mark.ipex
def test_an_export_folder_has_the_sentence_transformers_layout(trained_run):
    """config.json with model_type, modules Transformer -> Pooling -> Normalize, the max length and the pooling:
    what SentenceTransformer(folder, backend="onnx" | "openvino") reads before it loads the model file."""
    from sentence_transformers import models

    folder = trained_run[0] / "export" / "qat"
    assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert all(hasattr(models, m["type"].rsplit(".", 1)[1]) for m in modules)
    assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == 32
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    assert pooling["word_embedding_dimension"] == 32 and (folder / "2_Normalize").is_dir()


def test_a_target_this_machine_cannot_build_is_one_line_before_any_work(tiny_model_dir, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else find_spec(name, *a))
    cfg = job_config("train", RunConfig, [f"model.name_or_path={tiny_model_dir}", *TINY, "export.targets=[openvino,onnx]"])
    with pytest.raises(QatError, match="export target 'openvino' cannot be built on this machine: openvino is not "
                                       "installed"):
        run_train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "ptq").exists()
    # the default, [auto], is every target installed here
    assert job_config("train", RunConfig, []).export.targets == (["ipex", "onnx"] if HAS_IPEX else ["onnx"])
    with pytest.raises(QatError, match=r"export.targets entry='tflite' is not valid; expected one of \['ipex', "
                                       r"'openvino', 'onnx'\], or export.targets=\[auto\]"):
        job_config("train", RunConfig, ["export.targets=[ipex,tflite]"])
