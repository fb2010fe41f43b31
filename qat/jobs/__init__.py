"""The jobs behind the commands (train, evaluate, export, search, sensitivity), the run folder they claim, and
the report. Import a job's module directly: each pulls in the stages it runs."""
from qat.jobs.kinds import EVALUATE, EXPORT, SEARCH, SENSITIVITY, TRAIN, JobKind

__all__ = ["EVALUATE", "EXPORT", "JobKind", "SEARCH", "SENSITIVITY", "TRAIN"]
