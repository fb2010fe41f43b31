"""The five jobs, declared once: the config they read (conf/<name>.yaml, validated by `schema`), the file that
says a run finished, whether a run can resume, and the function that runs it (imported only once the config is
valid, so that `--help` and a refused command stay quick)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qat.config import EvaluateRunConfig, ExportRunConfig, RunConfig, SearchRunConfig, SensitivityRunConfig


@dataclass(frozen=True)
class JobKind:
    name: str
    schema: type
    finished_marker: str
    resumable: bool
    runner: str    # 'module:function' taking (config, run_dir)

    def run(self, config: Any, run_dir: Path) -> Any:
        module, function = self.runner.split(":")
        return getattr(importlib.import_module(module), function)(config, run_dir)


TRAIN = JobKind("train", RunConfig, "report.json", True, "qat.jobs.train:run_train")
EVALUATE = JobKind("evaluate", EvaluateRunConfig, "evaluation.json", False, "qat.jobs.evaluate:run_evaluation")
EXPORT = JobKind("export", ExportRunConfig, "export.json", False, "qat.jobs.export:run_export")
SEARCH = JobKind("search", SearchRunConfig, "search.json", False, "qat.jobs.search:run_search")
SENSITIVITY = JobKind("sensitivity", SensitivityRunConfig, "sensitivity.json", False,
                      "qat.jobs.sensitivity:run_sensitivity")
