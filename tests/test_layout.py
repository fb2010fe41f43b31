"""The package reads as the pipeline: dependencies point down the floors, the three stage folders import none of
each other, and no module imports itself back through others (read from the source, every import counted)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "qat"
# Floors from the top: entries -> jobs -> the three stages -> evaluation -> load/data/config -> quant -> base.
FLOORS = {"entry": 6, "jobs": 5, "ptq": 4, "recovery": 4, "exporters": 4, "evaluation": 3, "inputs": 2, "quant": 1,
          "base": 0}
INPUTS = {"load", "data", "config"}   # the model, the texts and the schemas: one floor
STAGES = {"ptq", "recovery", "exporters"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in {"train", "evaluate", "export", "search", "sensitivity"}:
        return "entry"
    return "inputs" if parts[1] in INPUTS else parts[1]


def imports() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qat"):
                for alias in node.names:   # `from qat import ptq` imports the module qat.ptq
                    target = f"{node.module}.{alias.name}"
                    targets.add(target if target in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("qat")}
        graph[name] = {t for t in targets if t != name and t in modules}
    return graph


def test_dependencies_point_down_and_stages_stay_apart():
    upward = []
    for module, targets in imports().items():
        for target in targets:
            if target == "qat" or room(target) == room(module):
                continue
            if FLOORS[room(target)] >= FLOORS[room(module)]:
                upward.append(f"{module} -> {target}")
    assert not upward, f"imports that climb or cross between stages: {sorted(upward)}"
    assert FLOORS["jobs"] > max(FLOORS[s] for s in STAGES) and len({FLOORS[s] for s in STAGES}) == 1


def test_no_import_circle():
    graph = imports()
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                pytest.fail(f"import circle: {' -> '.join(path[path.index(target):] + [target])}")
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_layout_rule_sees_an_upward_import():
    """The check itself: a stage importing the jobs layer, or another stage, is caught."""
    assert FLOORS[room("qat.jobs.train")] > FLOORS[room("qat.ptq.prepare")]
    assert room("qat.recovery.trainer") in STAGES and room("qat.ptq.calibration") in STAGES
    assert room("qat.train") == "entry" and room("qat.base.errors") == "base"
