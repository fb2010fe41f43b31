"""`python -m qat.export source.artifact=<run>/ptq [source.weights=<run>/checkpoints/best_student.safetensors]`:
an export folder with its parity check, from a PTQ artifact (and a trained student's weights)."""
from __future__ import annotations

from qat.jobs.command import run_job
from qat.jobs.kinds import EXPORT


def main() -> None:
    record, _ = run_job(EXPORT)
    print(f"export: {record.folder} (parity passed: "
          + "; ".join(f"{runtime} cosine to its simulation {made.parity.cosine_mean:.6f}"
                      + ("" if made.passage_parity is None else
                         f", on serving-length passages {made.passage_parity.cosine_mean:.6f}")
                      for runtime, made in record.runtimes.items()) + ")")


if __name__ == "__main__":
    main()
