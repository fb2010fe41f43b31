"""Every config group composes and validates; bad values are one-line QatErrors."""
import re
import pytest
from hydra import compose, initialize_config_dir

from conftest import REPO
from qat.config import RunConfig, SearchRunConfig, to_run_config
from qat.quant.config import QuantConfig
from qat.base.errors import QatError

GROUPS = {group.name: sorted(p.stem for p in group.glob("*.yaml")) for group in (REPO / "conf").iterdir()
          if group.is_dir() and group.name != "hydra"}   # hydra/: Hydra's own settings, one default for every job


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
    ("+calib.sampels=3", "invalid config at calib.sampels: Key 'sampels' not in 'CalibConfig'"),
    ("calib.symmetric_matmul=maybe", "invalid config at calib.symmetric_matmul: Value 'maybe' is not a valid bool"),
    ("model.pooling=weighted", "model.pooling='weighted'"),
    ("export.parity_min_cosine=1.5", "export.parity_min_cosine=1.5"),
    ("export.parity_unfused_atol=-1", "export.parity_unfused_atol=-1.0 is not valid; expected a number >= 0"),
    ("calib.samples=0", "calib.samples=0"),
    ("calib.percentile=0", "calib.percentile=0.0 is not valid; expected a number in (0, 100]"),
    ("calib.percentile=100.5", "calib.percentile=100.5 is not valid"),
    ("sensitivity.metric=stsb_test/spearman", "reads a test split"),
    ("train.task_weight=-1", "train.task_weight=-1.0 is not valid; expected a non-negative number (0: off)"),
    ("train.rounding_only=maybe", "train.rounding_only='maybe' is not valid; expected true, false or auto"),
    ("train.similarity_weight=-2", "train.similarity_weight=-2 is not valid; expected a non-negative number (0: off) or auto"),
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
    """One list of range algorithms: every name the schema accepts is implemented and has its conf/calib option,
    and no option names another."""
    from qat.quant.config import CALIB_ALGORITHMS
    from qat.quant.ranges import RANGE_ALGORITHMS

    assert set(GROUPS["calib"]) == set(RANGE_ALGORITHMS) == set(CALIB_ALGORITHMS)
    for name in RANGE_ALGORITHMS:
        assert compose_run(f"calib={name}").calib.algorithm == name


@pytest.mark.parametrize("job", ["train", "evaluate", "export", "search", "sensitivity"])
def test_every_job_takes_hydra_settings_from_the_one_default(job):
    from omegaconf import OmegaConf
    from qat.jobs.command import _compose

    cfg = _compose(job, [], hydra_config=True)
    assert OmegaConf.select(cfg, "hydra.output_subdir") is None and not cfg.hydra.job.chdir
    assert list(cfg.hydra.job_logging.handlers) == ["console"]   # the log file is qat's, once the folder is free
    assert OmegaConf.select(cfg, "hydra.run.dir").startswith(f"outputs/{'runs' if job == 'train' else job}/")
    assert "\nhydra:" not in (REPO / "conf" / f"{job}.yaml").read_text() or job == "train"
