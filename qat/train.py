"""`python -m qat.train`: the recovery job (conf/train.yaml): PTQ, the recovery decision, training, exports, report."""
from __future__ import annotations

from qat.jobs.command import run_job
from qat.jobs.kinds import TRAIN


def main() -> None:
    report, run_dir = run_job(TRAIN, resumes=lambda cfg: cfg.train.resume is not None)
    if report is not None:   # None on the other processes of an accelerate launch
        from qat.jobs.report import summary

        print(summary(report))
    print(f"report: {run_dir / 'report.md'}")


if __name__ == "__main__":
    main()
