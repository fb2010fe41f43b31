"""`python -m qat.export source.artifact=<run>/ptq [source.weights=<run>/checkpoints/best_student.safetensors]`."""
from __future__ import annotations

from qat.config import ExportRunConfig
from qat.entry import run_job
from qat.run_folder import JobKind


def main() -> None:
    from qat.export.job import run_export  # heavy imports (IPEX) only after the config is valid

    record, run_dir = run_job(JobKind("export", finished_marker="export.json", resumable=False), ExportRunConfig,
                              lambda cfg, out: run_export(cfg, out))
    print(f"export: {record.path.parent} (parity passed: unfused max |diff| {record.parity.unfused_max_abs_diff:.2e}, "
          f"fused cosine mean {record.parity.cosine_mean:.6f})")


if __name__ == "__main__":
    main()
