"""`python -m qat.sensitivity`: which op groups to leave fp32, ranked by what quantizing them costs; the skip list
is written as a Hydra `quant` option that `python -m qat.train --config-dir <run>/conf quant=sensitive` takes."""
from __future__ import annotations

from qat.jobs.command import run_job
from qat.jobs.kinds import SENSITIVITY


def main() -> None:
    result, run_dir = run_job(SENSITIVITY)
    from qat.jobs.sensitivity import sensitivity_table

    print(sensitivity_table(result))
    print(f"skip {result.skip_groups}; results: {run_dir / 'sensitivity.md'}; "
          f"use: python -m qat.train --config-dir {run_dir / 'conf'} quant=sensitive")


if __name__ == "__main__":
    main()
