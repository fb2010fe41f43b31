"""Every bad input, through the real command-line entry (in-process): exit code 2, one `error:` line naming the
value, and no file of a pre-existing finished run folder changed."""
import errno
import hashlib
import json
import os
import shutil
import sys

import pytest
from accelerate.state import AcceleratorState, GradientState
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

import qat.jobs.run_folder
import qat.search
import qat.sensitivity
import qat.train
from conftest import ONE_TARGET
from qat.jobs.run_folder import LOCK_FILE

TINY = ["model.max_length=32", "calib.samples=64", "+data.heldout.limit=40", "eval.batch_size=32"]


def run_cli(main, argv: list[str], capsys) -> tuple[int, list[str]]:
    """`python -m qat.<job> argv` in this process: its exit code and its `error:` lines."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    capsys.readouterr()
    old_argv, sys.argv = sys.argv, [main.__module__, *argv]
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code
    finally:
        sys.argv = old_argv
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


def snapshot(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_dir):
    """The bad inputs, and a finished run of the tiny model that nothing may change."""
    root = tmp_path_factory.mktemp("bad_input")
    made = {"tiny": tiny_model_dir, "root": root}
    for name, size in (("truncated", 100), ("empty_weights", 0)):
        folder = root / name
        shutil.copytree(tiny_model_dir, folder)
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:size])
        made[name] = folder
    decoder = root / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=100, n_positions=64)).save_pretrained(decoder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(decoder)
    made["gpt2"] = decoder
    made["latin1"] = root / "latin1.txt"
    made["latin1"].write_bytes("caf\xe9 au lait\n".encode("latin-1") * 100)
    made["nan_pairs"] = root / "nan.tsv"
    made["nan_pairs"].write_text("score\tsentence1\tsentence2\nnan\ta b\tc d\n")
    made["word_pairs"] = root / "word.tsv"
    made["word_pairs"].write_text("score\tsentence1\tsentence2\nhigh\ta b\tc d\n")
    made["list_qconf"] = root / "list.json"
    made["list_qconf"].write_text("[1, 2, 3]")
    made["module_qconf"] = root / "module.json"
    made["module_qconf"].write_text(json.dumps({"model:encoder": {"q_op_infos": {"0": {"op_type": "linear"}}}}))
    made["a_file"] = root / "a_file"
    made["a_file"].write_text("not a folder")
    made["foreign"] = root / "foreign"
    made["foreign"].mkdir()
    (made["foreign"] / "notes.txt").write_text("my notes")
    finished = root / "finished"
    code, errors = run_cli(qat.train.main, [f"hydra.run.dir={finished}", f"model.name_or_path={tiny_model_dir}",
                                            *TINY, ONE_TARGET, "train=none"], _NullCapture())
    assert code == 0 and (finished / "report.json").is_file(), errors
    made["finished"] = finished
    started = root / "started"
    shutil.copytree(finished, started)
    (started / "report.json").unlink()
    made["started"] = started
    return made


class _NullCapture:
    """capsys stand-in for the module fixture (pytest's capsys is function-scoped)."""

    def readouterr(self):
        class Out:
            err = ""
        return Out()


CASES = [
    # (id, job, overrides ({name} is a path from `files`), what the error line must say)
    ("model missing", "train", ["model.name_or_path=/nonexistent/model"], "model path '/nonexistent/model' does not exist"),
    ("weights truncated", "train", ["model.name_or_path={truncated}"], "cannot load model"),
    ("weights empty", "train", ["model.name_or_path={empty_weights}"], "cannot load model"),
    ("decoder-only model", "train", ["model.name_or_path={gpt2}"], "(model_type 'gpt2') is not an encoder"),
    ("data not UTF-8", "train", ["data.calibration.kind=file", "+data.calibration.path={latin1}"], "is not UTF-8 text"),
    ("NaN score", "train", ["+data.tasks.t_dev={{kind: file, path: '{nan_pairs}', format: pairs}}"], "has score 'nan'"),
    ("word score", "train", ["+data.tasks.t_dev={{kind: file, path: '{word_pairs}', format: pairs}}"],
     "has a non-numeric score 'high'"),
    ("threads 0", "train", ["threads=0"], "threads=0 is not valid"),
    ("threads -1", "train", ["threads=-1"], "threads=-1 is not valid"),
    ("run dir is a file", "train", ["hydra.run.dir={a_file}"], "is a file; expected a folder"),
    ("qconf is a list", "train", ["ptq.qconf={list_qconf}"], "is not an IPEX qconf summary: its top level is a JSON list"),
    ("qconf op lacks fields", "train", ["ptq.qconf={module_qconf}"], "has no str field 'fqn'"),
    ("artifact missing", "train", ["ptq.artifact=/nonexistent/ptq"], "PTQ artifact '/nonexistent/ptq' does not exist"),
    ("unknown option", "train", ["quant=nonsense"], "Could not find 'quant/nonsense'; expected one of"),
    ("unknown key", "train", ["+calib.sampels=3"], "Key 'sampels' not in 'CalibConfig'"),
    ("bad value", "train", ["calib.algorithm=magic"], "calib.algorithm='magic' is not valid"),
    ("finished run", "train", ["hydra.run.dir={finished}"], "holds a finished run (report.json)"),
    ("finished run resumed", "train", ["hydra.run.dir={finished}", "train.resume=auto"], "holds a finished run"),
    ("started run, no resume", "train", ["hydra.run.dir={started}", "train=none"], "did not finish; expected train.resume=auto"),
    ("resume, other calibration", "train", ["hydra.run.dir={started}", "train=none", "train.resume=auto", "calib=minmax"],
     "was started with calib.algorithm='histogram' (now 'minmax')"),
    ("resume, other recipe", "train", ["hydra.run.dir={started}", "train=none", "train.resume=auto", "quant=full_int8"],
     "quant.ops=['linear', 'matmul'] (now ['linear', 'matmul', 'residual_add', 'embedding_add'])"),
    ("folder of something else", "train", ["hydra.run.dir={foreign}"], "is not empty and holds no qat train run"),
    ("skip names nothing", "train", ["quant.skip=[encoder.layer.9.output.dense]"], "match no quantizable module"),
    ("smoothquant on a restored qconf", "train", ["smoothquant=on", "ptq.qconf={list_qconf}"], "smoothquant=on with ptq.qconf"),
    ("test split chooses", "train", ["recovery.metric=stsb_test/spearman"], "reads a test split"),
    ("metric not measured", "train", ["recovery.metric=wikiqa_dev/map"], "recovery.metric='wikiqa_dev/map' is not measured"),
    ("max length", "train", ["model.max_length=4096"], "model.max_length=4096 exceeds the model's limit"),
    ("no held-out rows", "train", ["data.heldout.offset=100000"], "has no rows"),
    ("too few calibration texts", "train", ["calib.samples=100000"], "calib.samples=100000 but the calibration set has only"),
    ("resume from a non-checkpoint", "train", ["train.resume={root}", "recovery.force=true", "teacher=fp32"],
     "is not a checkpoint"),
    ("alpha auto, smoothquant off", "train", ["smoothquant=off", "smoothquant.alpha=auto"], "smoothquant.alpha=auto with smoothquant off"),
    ("lr not a number", "train", ["train.lr=fast"], "train.lr='fast' is not valid; expected a positive number or 'auto'"),
    ("lr trials as long as the run", "train", ["train.lr=auto", "train.trial_steps=300"],
     "expected candidates and trial_steps < steps"),
    ("patience 0", "train", ["train.patience=0"], "train.patience=0 is not valid; expected a positive count"),
    ("negative minutes", "train", ["train.max_minutes=-5"], "train.max_minutes=-5.0 is not valid; expected a positive"),
    ("training text all evaluated", "train", ["recovery.force=true", "+data.train={{a: {{source: {{offset: 256, limit: 40}}}}}}"],
     "yield no text that is not also evaluated"),
    ("guard on a test split", "train", ["+data.guard.sts_test={{kind: file, path: '{nan_pairs}', format: pairs}}"],
     "data.guard.sts_test reads a test split"),
    ("BEIR folder without qrels", "train", ["+data.tasks.r_dev={{kind: file, path: '{foreign}', format: beir, split: dev}}"],
     "has no qrels/dev.tsv"),
    ("data root moved", "train", ["+data.root=/nonexistent/data",
                                  "+data.tasks.x_dev={{kind: file, path: '/nonexistent/data/x.tsv', format: pairs}}"],
     "data.tasks.x_dev: '/nonexistent/data/x.tsv' does not exist; expected a data file; its folder is "
     "data.root='/nonexistent/data' (or QAT_DATA_ROOT): set data.root=<your data folder>"),
    ("search on test", "search", ["search.objective=stsb_test/spearman"], "search.objective='stsb_test/spearman' reads a test split"),
    ("sensitivity metric", "sensitivity", ["sensitivity.metric=nope"], "sensitivity.metric='nope' is not measured"),
    ("finished search folder", "search", ["hydra.run.dir={finished}"], "holds no qat search run"),
]
MAINS = {"train": qat.train.main, "search": qat.search.main, "sensitivity": qat.sensitivity.main}


@pytest.mark.parametrize("case, job, overrides, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_no_finished_run(case, job, overrides, message, files, tmp_path, capsys):
    before = snapshot(files["finished"])
    argv = [f"hydra.run.dir={tmp_path / 'run'}", f"model.name_or_path={files['tiny']}", *TINY]
    argv += [o.format(**files) for o in overrides]
    code, errors = run_cli(MAINS[job], argv, capsys)
    assert code == 2 and len(errors) == 1, (code, errors)
    assert message in errors[0], errors[0]
    if os.environ.get("QAT_BAD_INPUT_TABLE"):   # the table of messages for a closing note
        with open(os.environ["QAT_BAD_INPUT_TABLE"], "a") as table:
            table.write(f"| {case} | `{' '.join(overrides)}` | {errors[0]} |\n")
    assert snapshot(files["finished"]) == before
    assert not (tmp_path / "run").exists(), "a refused fresh run left its folder"


def test_a_full_disk_is_one_line(files, tmp_path, capsys, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(qat.jobs.run_folder, "write_json", full)
    code, errors = run_cli(qat.train.main, [f"hydra.run.dir={tmp_path / 'run'}", f"model.name_or_path={files['tiny']}",
                                            *TINY], capsys)
    assert code == 2 and len(errors) == 1 and "no space left on the device writing" in errors[0], errors


def test_an_unwritable_location_is_one_line(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(qat.jobs.run_folder.os, "access", lambda path, mode: False)   # root may write anywhere
    code, errors = run_cli(qat.train.main, [f"hydra.run.dir={tmp_path / 'run'}", *TINY], capsys)
    assert code == 2 and len(errors) == 1 and "cannot be written" in errors[0] and "read-only" in errors[0], errors
    assert not (tmp_path / "run").exists()


def test_a_second_job_on_a_locked_folder_is_refused_and_a_stale_lock_taken_over(files, tmp_path, capsys):
    started = tmp_path / "started"
    shutil.copytree(files["started"], started)
    (started / LOCK_FILE).write_text(str(os.getppid()))   # a live process holds it
    argv = [f"hydra.run.dir={started}", f"model.name_or_path={files['tiny']}", *TINY, ONE_TARGET, "train=none", "train.resume=auto"]
    code, errors = run_cli(qat.train.main, argv, capsys)
    assert code == 2 and f"is in use by process {os.getppid()}" in errors[0], errors
    assert not (started / "report.json").exists()
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    (started / LOCK_FILE).write_text(str(dead))   # its process is gone
    code, errors = run_cli(qat.train.main, argv, capsys)
    assert code == 0 and (started / "report.json").is_file() and not (started / LOCK_FILE).exists(), errors


def test_report_json_is_strict_json(files):
    def no_constants(name):
        raise ValueError(f"report.json holds {name}")

    json.loads((files["finished"] / "report.json").read_text(), parse_constant=no_constants)
    from qat.base.atomic import write_json
    path = files["root"] / "nan.json"
    write_json(path, {"a": float("nan"), "b": [float("inf"), 1.0]})
    assert json.loads(path.read_text(), parse_constant=no_constants) == {"a": None, "b": [None, 1.0]}
