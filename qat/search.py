"""`python -m qat.search`: calibration search with Optuna's TPE sampler on statistics collected once; the best
setting is written as Hydra options that `python -m qat.train --config-dir <run>/conf calib=searched` takes."""
from __future__ import annotations

from qat.jobs.command import run_job
from qat.jobs.kinds import SEARCH


def main() -> None:
    result, run_dir = run_job(SEARCH)
    from qat.jobs.search import search_table

    print(search_table(result))
    print(f"best {result.objective}={result.best.objective:.6g} "
          f"(IPEX default {result.baseline_ipex_default.metrics[result.objective]:.6g}); "
          f"results: {run_dir / 'search.md'}; use: python -m qat.train --config-dir {run_dir / 'conf'} calib=searched "
          "smoothquant=searched")


if __name__ == "__main__":
    main()
