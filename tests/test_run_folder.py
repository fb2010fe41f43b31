"""A run killed at a checkpoint boundary resumes: its stale lock is taken over, its leftovers removed, and the
report counts all of its training time."""
import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import ONE_TARGET, REPO
from qat.jobs.run_folder import LOCK_FILE, SETTINGS_FILE
from qat.recovery.trainer import STATE_FILE


def train_command(run_dir, tiny_model_dir, *extra):
    return [sys.executable, "-m", "qat.train", f"hydra.run.dir={run_dir}", f"model.name_or_path={tiny_model_dir}",
            "model.max_length=32", "calib.samples=64", ONE_TARGET, "+data.heldout.limit=40", "recovery.force=true", "teacher=fp32",
            "train.steps=60", "train.lr=1e-5", "train.batch_size=16", "train.save_every=2", "train.eval_every=30", *extra]


@pytest.mark.slow
def test_a_killed_run_resumes_cleanly(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    job = subprocess.Popen(train_command(run_dir, tiny_model_dir), cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((run_dir / "checkpoints").glob(f"step_*/{STATE_FILE}")) and time.time() < deadline:
        assert job.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert (run_dir / LOCK_FILE).read_text() == str(job.pid) and not (run_dir / "report.json").exists()
    killed_at = max(json.loads(p.read_text())["step"] for p in (run_dir / "checkpoints").glob(f"step_*/{STATE_FILE}"))
    leftover = run_dir / "ptq" / ".qconf.json.killed.tmp"     # what a kill during an atomic write leaves
    leftover.write_text("{half a fi")

    refused = subprocess.run(train_command(run_dir, tiny_model_dir), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "did not finish; expected train.resume=auto" in refused.stderr.splitlines()[-1]
    resumed = subprocess.run(train_command(run_dir, tiny_model_dir, "train.resume=auto"), cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"taking over the stale lock of process {job.pid}" in resumed.stdout + resumed.stderr
    assert not leftover.exists() and not list(run_dir.rglob("*.tmp")) and not (run_dir / LOCK_FILE).exists()
    report = json.loads((run_dir / "report.json").read_text())
    training = report["training"]
    assert training["step"] == 60 and killed_at < 60
    checkpoint = json.loads(max((run_dir / "checkpoints").glob(f"step_*/{STATE_FILE}")).read_text())
    assert training["seconds"] >= checkpoint["seconds"] > 0, "training time counts the steps before the kill too"
    assert training["seconds_per_step"] == pytest.approx(training["seconds"] / 60)
    assert json.loads((run_dir / SETTINGS_FILE).read_text())["job"] == "train"
    assert "Trained 60 steps" in (run_dir / "report.md").read_text()
