"""`python -m qat.train` as a user runs it: the real bundled model end to end, and bad input."""
import json
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

SHORT = ["calib.samples=64", "calib.batch_size=32"]


def run_train(run_dir, *overrides):
    return subprocess.run([sys.executable, "-m", "qat.train", f"hydra.run.dir={run_dir}", *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.ipex
@pytest.mark.slow
def test_default_job_end_to_end_on_the_bundled_model(tmp_path):
    run_dir = tmp_path / "run"
    result = run_train(run_dir, *SHORT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"report: {run_dir / 'report.md'}" in result.stdout
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report["variants"]) == {"fp32", "ptq_fakequant", "ptq_int8"}
    assert report["recovery"]["ptq_loss"] < report["recovery"]["threshold"] and report["training"] is None
    assert report["exports"]["ptq"]["runtimes"]["ipex"]["int8_ops"] == {"linear": 36, "matmul": 12, "add": 0, "linear_weight_only": 0}
    assert report["exports"]["ptq"]["runtimes"]["ipex"]["parity"]["passed"] and report["final"] == "ptq"
    assert report["exports"]["ptq"]["runtimes"]["ipex"]["parity"]["unfused_max_abs_diff"] == 0.0   # the unfused graph is the simulation
    int8 = report["variants"]["ptq_int8"]
    assert 0.95 < int8["cosine_mean"] < 1.0 and report["variants"]["fp32"]["cosine_mean"] == pytest.approx(1.0)
    for name in ("model/model.safetensors", "qconf.json", "metadata.json"):
        assert (run_dir / "ptq" / name).is_file()
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert "| PTQ int8 (exported ipex) |" in (run_dir / "report.md").read_text()

    # A fresh process loads the exported TorchScript (with IPEX imported) and reproduces the reported fidelity.
    check = textwrap.dedent(f"""
        import json, torch
        import intel_extension_for_pytorch
        from qat.config import ModelConfig
        from qat.data import builtin_sentences
        from qat.evaluation.metrics import embed, cosine_fidelity
        from qat.load import load_encoder
        from qat.quant.wrapper import EncoderModule
        encoder = load_encoder(ModelConfig())
        texts = builtin_sentences()[256:]
        exported = torch.jit.load({str(run_dir / 'export' / 'ptq' / 'model_int8.pt')!r})
        int8, fp32 = embed(exported, encoder, texts, 64), embed(EncoderModule(encoder.model).eval(), encoder, texts, 64)
        print(json.dumps(cosine_fidelity(torch.stack([fp32[t] for t in texts]), torch.stack([int8[t] for t in texts]))))
    """)
    fresh = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    reproduced = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert reproduced["cosine_mean"] == pytest.approx(int8["cosine_mean"], abs=1e-4)
    assert reproduced["cosine_min"] == pytest.approx(int8["cosine_min"], abs=1e-4)


@pytest.mark.parametrize("overrides, message", [
    (["model.name_or_path=/nonexistent/model"], "model path '/nonexistent/model' does not exist"),
    (["model.max_length=4096"], "model.max_length=4096 exceeds the model's limit; expected at most 512"),
    (["data.heldout.offset=100000"], "has no rows"),
    (["+data.calibration.path=MISSING_COLUMNS", "data.calibration.kind=file", "data.calibration.format=pairs"],
     "lacks column(s) ['sentence1', 'sentence2']"),
    (["calib.samples=100000"], "calib.samples=100000 but the calibration set has only 256 texts"),
    (["quant.skip=[encoder.layer.9.output.dense]"], "match no quantizable module"),
])
def test_bad_input_is_one_clear_line_and_no_artifact(tmp_path, overrides, message):
    bad_file = tmp_path / "scores_only.tsv"
    bad_file.write_text("score\n1.0\n")
    overrides = [o.replace("MISSING_COLUMNS", str(bad_file)) for o in overrides]
    run_dir = tmp_path / "run"
    result = run_train(run_dir, *overrides)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert not (run_dir / "ptq").exists() and not (run_dir / "report.json").exists()


def test_unknown_group_value_fails(tmp_path):
    result = run_train(tmp_path / "run", "quant=nonsense")
    assert result.returncode != 0
    assert "Could not find 'quant/nonsense'" in result.stderr


@pytest.mark.ipex
def test_importing_ipex_says_nothing_to_the_user():
    """IPEX's kernel-override warnings (C++, on stderr) and torch's "No CUDA runtime is found" stay off a terminal."""
    result = subprocess.run([sys.executable, "-c", "import qat.base.ipex"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stderr[-500:]


@pytest.mark.parametrize("job, arguments, expected", [
    ("export", ["--help"], "Required:\n  source.artifact=<run>/ptq"),
    ("evaluate", ["--help"], "Required:\n  target.folder="),
    ("train", ["--help"], "Groups (group=option):\n  model=minilm"),
    ("export", [], "error: source.artifact is required; expected source.artifact=<value>"),
    ("train", ["calib.samples=-1"], "error: calib.samples=-1 is not valid"),
])
def test_help_and_a_refused_command_import_neither_torch_nor_ipex(job, arguments, expected, tmp_path):
    """`--help` gives the purpose, groups and required keys from the config files; a command refused for its
    values says so; neither loads torch (seconds) or IPEX."""
    argv = arguments if arguments == ["--help"] else [*arguments, f"hydra.run.dir={tmp_path / 'run'}"]
    probe = textwrap.dedent(f"""
        import runpy, sys
        sys.argv = ["qat.{job}", *{argv!r}]
        try:
            runpy.run_module("qat.{job}", run_name="__main__")
        except SystemExit as stop:
            print("loaded:", sorted({{"torch", "intel_extension_for_pytorch"}} & set(sys.modules)), "exit:", stop.code)
        """)
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert expected in result.stdout + result.stderr, result.stdout + result.stderr
    assert "loaded: [] exit:" in result.stdout, result.stdout[-500:]
    assert not (tmp_path / "run").exists()
