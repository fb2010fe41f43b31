"""The quant core's own schemas: the int8 recipe, the calibration, SmoothQuant. The run configuration composes
them; nothing here knows of it. Validation errors name the value and what was expected."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qat.base.errors import QatError, check_choice, check_positive

# The op kinds a recipe can put in int8 (qconf.py classifies every IPEX op into one of them, or another kind
# that never goes int8, such as the attention-mask add).
OP_KINDS = ("linear", "matmul", "residual_add", "embedding_add")
OP_ALIASES = {"add": ("residual_add", "embedding_add")}
# The range algorithms by name (qat.quant.ranges.RANGE_ALGORITHMS implements each; conf/calib/ has one option per
# name); named here so that reading a config does not import torch.
CALIB_ALGORITHMS = ("minmax", "moving_average", "histogram", "percentile", "entropy", "mse")
AUTO = "auto"


@dataclass
class QuantConfig:
    """Which op kinds run in int8, which modules stay fp32 (exact names or regular expressions), the weight
    range (8 bits, or 7 on CPUs without VNNI whose int8 GEMM saturates; 'auto' picks by this CPU), and an
    optional clamp of the frozen activation scales (a limited range: finer steps, clipped outliers).

    `context_matmul=false` leaves the attention's second product (the softmax's probabilities times the values)
    in floating point where `matmul` is int8: on long inputs most probabilities lie below one uint8 step, and
    OpenVINO's own CPU patterns leave that matmul unquantized too."""

    ops: list[str] = field(default_factory=lambda: ["linear", "matmul"])
    skip: list[str] = field(default_factory=list)
    weight_bits: str = "auto"
    scale_min: float | None = None
    scale_max: float | None = None
    context_matmul: bool = True

    def __post_init__(self) -> None:
        check_choice("quant.weight_bits", self.weight_bits, ("auto", "8", "7"))
        check_positive("quant.scale_min", self.scale_min)
        check_positive("quant.scale_max", self.scale_max)
        if self.scale_min is not None and self.scale_max is not None and self.scale_min > self.scale_max:
            raise QatError(f"quant.scale_min={self.scale_min} > quant.scale_max={self.scale_max}; expected min <= max")
        if not self.ops:
            raise QatError("quant.ops is empty; expected at least one of " + str(list(OP_KINDS) + list(OP_ALIASES)))
        for op in self.ops:
            check_choice("quant.ops entry", op, OP_KINDS + tuple(OP_ALIASES))

    def op_kinds(self) -> frozenset[str]:
        """The ops list with aliases ('add') expanded."""
        return frozenset(kind for op in self.ops for kind in OP_ALIASES.get(op, (op,)))


@dataclass
class CalibConfig:
    """Activation calibration over `samples` texts in batches of `batch_size`: a range algorithm (a name of
    ranges.RANGE_ALGORITHMS; 'histogram' is IPEX's default L2 search), symmetric or affine quint8 activations, and
    optional bias correction of the weight quantization error (the Linear biases absorb (W - Q(W)) E[x]).

    `symmetric_matmul` makes the signed inputs of the attention matmuls (queries, keys, values) symmetric: quint8
    with zero point 128 is signed int8 with zero point 0, which OpenVINO's CPU plugin needs to run those matmuls
    in int8 (with a zero point it runs them in floating point behind separate FakeQuantize ops), and which the
    IPEX export hands to oneDNN as s8 (no reorder, no zero-point correction)."""

    algorithm: str = "histogram"
    bins: int = 2048
    samples: int = 256
    batch_size: int = 32
    percentile: float = 99.99
    averaging_constant: float = 0.01
    symmetric: bool = False
    symmetric_matmul: bool = True
    bias_correction: bool = False

    def __post_init__(self) -> None:
        check_choice("calib.algorithm", self.algorithm, CALIB_ALGORITHMS)
        check_positive("calib.bins", self.bins)
        check_positive("calib.samples", self.samples)
        check_positive("calib.batch_size", self.batch_size)
        if not 0.0 < self.percentile <= 100.0:
            raise QatError(f"calib.percentile={self.percentile} is not valid; expected a number in (0, 100]")
        if not 0.0 < self.averaging_constant <= 1.0:
            raise QatError(f"calib.averaging_constant={self.averaging_constant} is not valid; expected a number in (0, 1]")

    @property
    def batches(self) -> int:
        return -(-self.samples // self.batch_size)


def check_alpha(group: str, alpha: Any, enabled: bool) -> None:
    """A migration strength: a number in [0, 1], or 'auto' (which needs the group on)."""
    if alpha == AUTO:
        if not enabled:
            raise QatError(f"{group}.alpha=auto with {group} off; expected {group}=on (or enabled=true)")
    elif isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise QatError(f"{group}.alpha={alpha!r} is not valid; expected a number in [0, 1] or 'auto'")


@dataclass
class SmoothQuantConfig:
    """SmoothQuant migration before calibration (smoothquant.py): `alpha` in [0, 1] moves that much of each input
    channel's range into the weights; `modules` (regular expressions) choose the owner modules whose int8 Linears
    are smoothed ('.*': all of them). `enabled='auto'`: only where the PTQ model without it is past the fidelity
    floor, and then 'off' is one more candidate (see qat.ptq.trials)."""

    enabled: Any = False   # true, false, or 'auto'
    alpha: Any = 0.5    # a number, or 'auto': the job picks one of `candidates` before calibration
    candidates: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    modules: list[str] = field(default_factory=lambda: [".*"])

    def __post_init__(self) -> None:
        if self.enabled not in (True, False, AUTO):
            raise QatError(f"smoothquant.enabled={self.enabled!r} is not valid; expected true, false or auto")
        check_alpha("smoothquant", self.alpha, bool(self.enabled))
        if not self.candidates or not all(0.0 <= a <= 1.0 for a in self.candidates):
            raise QatError(f"smoothquant.candidates={self.candidates} is not valid; expected one or more alphas in "
                           "[0, 1]")
        if not self.modules:
            raise QatError("smoothquant.modules is empty; expected regular expressions of module paths, e.g. ['.*']")


EQUALIZE_PAIRS = ("qk", "vo")


@dataclass
class EqualizeConfig:
    """Weight-folded equalization inside attention before calibration (equalize.py): the Q/K channel pairs and the
    V/O pairs, each rescaled per channel by the balance max|X|^alpha / max|W|^(1 - alpha). `alpha='auto'` picks
    one of `candidates` before calibration, where None is the model left as it is (equalization is not free of
    rounding: on a model without outliers in those pairs it may only move the int8 error around)."""

    enabled: bool = False
    alpha: Any = 0.5    # a number, or 'auto'
    candidates: list[float | None] = field(default_factory=lambda: [None, 0.3, 0.4, 0.5, 0.6, 0.7])
    pairs: list[str] = field(default_factory=lambda: list(EQUALIZE_PAIRS))

    def __post_init__(self) -> None:
        check_alpha("equalize", self.alpha, self.enabled)
        if not self.candidates or not all(a is None or 0.0 <= a <= 1.0 for a in self.candidates):
            raise QatError(f"equalize.candidates={self.candidates} is not valid; expected one or more alphas in "
                           "[0, 1] (null: not equalized)")
        if not self.pairs:
            raise QatError(f"equalize.pairs is empty; expected some of {list(EQUALIZE_PAIRS)}")
        for pair in self.pairs:
            check_choice("equalize.pairs entry", pair, EQUALIZE_PAIRS)


@dataclass
class Recipe:
    """What a PTQ model is made with: the int8 recipe, its calibration, and the two outlier migrations."""

    quant: QuantConfig = field(default_factory=QuantConfig)
    calib: CalibConfig = field(default_factory=CalibConfig)
    smoothquant: SmoothQuantConfig = field(default_factory=SmoothQuantConfig)
    equalize: EqualizeConfig = field(default_factory=EqualizeConfig)
