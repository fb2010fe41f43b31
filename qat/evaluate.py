"""`python -m qat.evaluate target.folder=<export folder>`: score an int8 model against fp32 on the configured data."""
from __future__ import annotations

from qat.jobs.command import run_job
from qat.jobs.kinds import EVALUATE


def main() -> None:
    result, run_dir = run_job(EVALUATE)
    from qat.jobs.report import difference_table, variant_table

    print("\n".join([*variant_table(result.variants, result.runtime), "", *difference_table(result.differences),
                     f"results: {run_dir / 'evaluation.md'}"]))


if __name__ == "__main__":
    main()
