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
    purpose: str
    required: tuple[str, ...] = ()   # keys without a default, as the command line gives them

    def run(self, config: Any, run_dir: Path) -> Any:
        module, function = self.runner.split(":")
        return getattr(importlib.import_module(module), function)(config, run_dir)


TRAIN = JobKind("train", RunConfig, "report.json", True, "qat.jobs.train:run_train",
                "The recovery run: PTQ int8 model, the recovery decision, training if needed, exports, report.")
EVALUATE = JobKind("evaluate", EvaluateRunConfig, "evaluation.json", False, "qat.jobs.evaluate:run_evaluation",
                   "Score an exported int8 model against its fp32 model on the data group's sets (test sets too).",
                   ("target.folder=<run>/export/qat (an export folder; or target.torchscript=<file>)",))
EXPORT = JobKind("export", ExportRunConfig, "export.json", False, "qat.jobs.export:run_export",
                 "Export a PTQ artifact (and trained weights) to int8 runtimes, with the parity check.",
                 ("source.artifact=<run>/ptq (a run's PTQ artifact)",))
SEARCH = JobKind("search", SearchRunConfig, "search.json", False, "qat.jobs.search:run_search",
                 "Search calibration settings (Optuna) for the PTQ model closest to fp32 on dev data.")
SENSITIVITY = JobKind("sensitivity", SensitivityRunConfig, "sensitivity.json", False,
                      "qat.jobs.sensitivity:run_sensitivity",
                      "Rank the recipe's op groups by what int8 costs them and write a skip list.")


def job_help(kind: JobKind, conf_dir: Path) -> str:
    """`python -m qat.<job> --help`: the purpose, the usage from conf/<job>.yaml's head, the groups it reads with
    their options, and the required keys; read from the config files alone (no torch, no Hydra run)."""
    from omegaconf import OmegaConf

    path = conf_dir / f"{kind.name}.yaml"
    head = [line.removeprefix("#").strip() for line in path.read_text().splitlines()]
    head = head[:next((i for i, line in enumerate(path.read_text().splitlines()) if not line.startswith("#")), 0)]
    groups = []
    for entry in OmegaConf.to_container(OmegaConf.load(path)).get("defaults", []):
        if isinstance(entry, dict):
            [(group, default)] = entry.items()
            if group != "hydra":
                options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
                groups.append(f"  {group}={default if default is not None else '(none)'}   options: {', '.join(options)}")
    required = [f"  {key}" for key in kind.required] or ["  none"]
    return "\n".join([f"python -m qat.{kind.name}: {kind.purpose}", "", *head, "", "Groups (group=option):", *groups, "",
                      "Required:", *required, "", f"Every setting with its value: python -m qat.{kind.name} --cfg job "
                      "[overrides]; reference: docs/CONFIGURATION.md; Hydra's own flags: --hydra-help."])
