"""Every config group composes and validates; bad values are one-line QatErrors."""
import re
import pytest
from hydra import compose, initialize_config_dir

from conftest import REPO
from qat.config import RunConfig, SearchRunConfig, to_run_config
from qat.quant.config import QuantConfig
from qat.errors import QatError

GROUPS = {group.name: sorted(p.stem for p in group.glob("*.yaml")) for group in (REPO / "conf").iterdir() if group.is_dir()}


def compose_run(*overrides: str) -> RunConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return to_run_config(compose(config_name="train", overrides=list(overrides)))


def test_groups_are_the_documented_ones():
    assert set(GROUPS) == {"model", "data", "quant", "smoothquant", "calib", "train", "teacher", "export", "eval",
                           "experiment", "equalize"}


@pytest.mark.parametrize("group, option", [(g, o) for g, options in GROUPS.items() for o in options])
def test_every_option_composes(group, option):
    assert isinstance(compose_run(f"{group}={option}"), RunConfig)


def test_defaults_are_ipex_default_recipe():
    cfg = compose_run()
    assert cfg.quant.op_kinds() == {"linear", "matmul"} and cfg.calib.algorithm == "histogram"
    assert cfg.model.name_or_path == "bundled:all-MiniLM-L6-v2" and cfg.train.enabled and not cfg.recovery.force
    assert QuantConfig(ops=["add"]).op_kinds() == {"residual_add", "embedding_add"}


@pytest.mark.parametrize("override, message", [
    ("calib.algorithm=magic", "calib.algorithm='magic'"),
    ("quant.ops=[conv]", "quant.ops entry='conv'"),
    ("quant.ops=[]", "quant.ops is empty"),
    ("+calib.sampels=3", "invalid config: Key 'sampels' not in 'CalibConfig'"),
    ("model.pooling=max", "model.pooling='max'"),
    ("export.parity_min_cosine=1.5", "export.parity_min_cosine=1.5"),
    ("export.parity_unfused_atol=-1", "export.parity_unfused_atol=-1.0 is not valid; expected a number >= 0"),
    ("calib.samples=0", "calib.samples=0"),
    ("calib.percentile=0", "calib.percentile=0.0 is not valid; expected a number in (0, 100]"),
    ("calib.percentile=100.5", "calib.percentile=100.5 is not valid"),
    ("sensitivity.metric=stsb_test/spearman", "reads a test split"),
    ("train.task_weight=-1", "train.task_weight=-1.0 is not valid; expected a non-negative number (0: off)"),
    ("equalize.alpha=auto", "equalize.alpha=auto with equalize off; expected equalize=on"),
])
def test_bad_values(override, message):
    with pytest.raises(QatError, match=re.escape(message)):
        compose_run(override)


def test_bad_equalize_candidates():
    with pytest.raises(QatError, match=re.escape("equalize.candidates=[None, 1.5] is not valid; expected one or more alphas")):
        compose_run("equalize=on", "equalize.candidates=[null,1.5]")


@pytest.mark.parametrize("config_name, schema", [("search", SearchRunConfig), ("sensitivity", RunConfig)])
def test_stage_configs_compose(config_name, schema):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = to_run_config(compose(config_name=config_name, overrides=["data=stsb"]), schema)
    assert isinstance(cfg, schema) and cfg.data.tasks


def test_search_objective_on_test_is_refused():
    with pytest.raises(QatError, match="search.objective='stsb_test/spearman' reads a test split"):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            to_run_config(compose(config_name="search", overrides=["search.objective=stsb_test/spearman"]), SearchRunConfig)


def test_calib_options_mirror_the_range_algorithms():
    """One registry of range algorithms: every name has its conf/calib option, and no option names another."""
    from qat.quant.ranges import RANGE_ALGORITHMS

    assert set(GROUPS["calib"]) == set(RANGE_ALGORITHMS)
    for name in RANGE_ALGORITHMS:
        assert compose_run(f"calib={name}").calib.algorithm == name


def test_the_quant_core_imports_nothing_above_it():
    """qat/quant/ depends on numerics, errors, atomic writes and the IPEX backend only: never on the run
    configuration, the loaders or the stages that use it."""
    import ast

    allowed = {"qat.numerics", "qat.errors", "qat.atomic", "qat.ipex_backend"}
    for path in (REPO / "qat" / "quant").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qat"):
                assert node.module.startswith("qat.quant") or node.module in allowed, f"{path.name} imports {node.module}"
