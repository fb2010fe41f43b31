"""`python -m qat.train`: the recovery job, composed by Hydra from conf/train.yaml."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from qat.config import RunConfig
from qat.entry import run_job
from qat.run_folder import JobKind

if TYPE_CHECKING:
    from qat.report import RunReport


JOB = JobKind("train", finished_marker="report.json", resumable=True)


def train(cfg: RunConfig, run_dir: Path) -> RunReport:
    from qat.pipeline import run_pipeline  # heavy imports (IPEX, transformers) only after the config is valid

    return run_pipeline(cfg, run_dir)


def main() -> None:
    report, run_dir = run_job(JOB, RunConfig, train, resumes=lambda cfg: cfg.train.resume is not None)
    if report is not None:   # None on the other processes of an accelerate launch
        from qat.report import summary  # imports IPEX: only once the job ran, so a refusal stays quick and quiet

        print(summary(report))
    print(f"report: {run_dir / 'report.md'}")


if __name__ == "__main__":
    main()
