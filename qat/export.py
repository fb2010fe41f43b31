"""`python -m qat.export source.artifact=<run>/ptq [source.weights=<run>/checkpoints/best_student.safetensors]`:
an export folder with its parity check, from a PTQ artifact (and a trained student's weights)."""
from __future__ import annotations

from qat.jobs.command import run_job
from qat.jobs.kinds import EXPORT


def main() -> None:
    record, _ = run_job(EXPORT)
    print(f"export: {record.path.parent} (parity passed: unfused max |diff| {record.parity.unfused_max_abs_diff:.2e}, "
          f"fused cosine mean {record.parity.cosine_mean:.6f})")


if __name__ == "__main__":
    main()
