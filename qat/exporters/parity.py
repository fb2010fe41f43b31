"""Does an exported int8 model compute what its fake-quant simulation computes?

OpenVINO and ONNX Runtime run one graph, fused by their own int8 kernels: it passes when it is close to the
simulation, or as faithful to fp32 as the simulation (below). IPEX runs one frozen graph two ways, so parity asks two questions. Unfused (the graph as converted), every int8
op is quantize -> dequantize -> the fp32 op: the simulation's own arithmetic, so the two must agree to float
tolerance; that proves the scales, the weights and the set of int8 ops are the same. Fused (oneDNN Graph and
IPEX kernels, from the second call on: the first call of a loaded module is warmed up here), GEMMs accumulate in int32 and requantize in their own order: an
activation near a rounding boundary lands one step away, and where scales are coarse (the full-operator recipe's
residual adds, whose inputs carry MiniLM's outlier channels) one step moves a token's LayerNorm output visibly,
and later layers amplify it. That is rounding, not another model: the simulation spreads as far from itself
when its Linear outputs get 1-ulp noise (`rounding_floor`). So the fused model passes when it is close to the
simulation, or when it is as faithful to fp32 as the simulation is: its mean cosine to fp32 no further below the
simulation's than `export.parity_fidelity_tolerance` or, where rounding spreads wider, than the simulation moves
from itself under that noise (1 - the floor's mean cosine; on passages of the serving length with int8 residual
adds it is several times the tolerance, and another rounding lands that far either side).

Embeddings are compared text by text (cosine); a score model's outputs are compared output by output over the
held-out pairs (the cosine of the two score columns, both centred on the reference's mean), since a cosine of
one score with another says nothing.

Parity is judged twice, on the held-out texts and on passages as long as the model serves (the held-out texts
packed to max-length words), apart: short sentences fill a fraction of the positions, and an export can round
differently where the attention spreads over hundreds of tokens (each probability near the int8 step).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from qat.config import ExportConfig
from qat.data import Text, packed, word_count
from qat.evaluation.metrics import Forward, Table, cosine_fidelity, embed, stack_texts
from qat.load import Encoder
from qat.quant.simulate import FakeQuantModel


@dataclass
class Fidelity:
    cosine_mean: float
    cosine_min: float


@dataclass
class FidelityToFp32:
    """Mean cosine to fp32 of the simulation and of the fused export."""

    fakequant: float
    int8: float


@dataclass
class ParityThresholds:
    cosine_mean: float
    cosine_min: float
    unfused_atol: float
    fidelity_tolerance: float   # export.parity_fidelity_tolerance, or the simulation's rounding spread if wider


@dataclass
class ParityRecord:
    """One export's parity with its simulation, on pooled embeddings of the held-out texts; `passed` decides."""

    cosine_mean: float              # fused export against the simulation
    cosine_min: float
    max_abs_diff: float
    unfused_max_abs_diff: float | None   # unfused export against the simulation: float tolerance (IPEX only)
    rounding_floor: Fidelity        # the simulation against itself with 1-ulp noise on its Linear outputs
    fidelity_to_fp32: FidelityToFp32
    texts: int
    thresholds: ParityThresholds
    exact_unfused: bool
    close: bool
    as_faithful: bool
    passed: bool


def unfused(exported: torch.jit.ScriptModule) -> Forward:
    """The exported graph run as converted, without IPEX's and oneDNN Graph's fusions. Needs a freshly loaded
    module: once a module has run optimized, its executor keeps the fused plan."""
    def forward(*inputs: torch.Tensor) -> torch.Tensor:
        with torch.jit.optimized_execution(False):
            return exported(*inputs)
    return forward


@contextlib.contextmanager
def rounding_noise(model: nn.Module, seed: int = 0) -> Iterator[None]:
    """Multiply every Linear output by (1 + 2^-23 * N(0, 1)): what another GEMM kernel's summation order does."""
    generator = torch.Generator().manual_seed(seed)

    def perturb(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        # Outside the simulation's TorchFunctionMode: this is not one of the model's ops.
        with torch._C.DisableTorchFunction():
            return output * (1 + torch.randn(output.shape, generator=generator) * 2.0 ** -23)

    hooks = [m.register_forward_hook(perturb) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def _fidelity(reference: Table, candidate: Table, texts: list[Text]) -> Fidelity:
    reference_rows, candidate_rows = stack_texts(reference, texts), stack_texts(candidate, texts)
    if isinstance(texts[0], str):
        return Fidelity(**cosine_fidelity(reference_rows, candidate_rows))
    centre = reference_rows.mean(0)
    return Fidelity(**cosine_fidelity((reference_rows - centre).T, (candidate_rows - centre).T))


def _max_abs_diff(a: Table, b: Table, texts: list[Text]) -> float:
    return max((a[t] - b[t]).abs().max().item() for t in texts)


def judge_parity(fp32: Table, simulated: Table, fused: Table, unfused_export: Table | None, noisy: Table,
                 texts: list[Text], cfg: ExportConfig) -> ParityRecord:
    """The parity record from pooled embeddings of the held-out texts (every table from the same batches, so
    exactness can be asked): fp32, the simulation, the fused export, the unfused export (None for a runtime that
    has no unfused path), and the simulation under rounding noise."""
    agreement, fidelity = _fidelity(simulated, fused, texts), FidelityToFp32(
        _fidelity(fp32, simulated, texts).cosine_mean, _fidelity(fp32, fused, texts).cosine_mean)
    unfused_diff = None if unfused_export is None else _max_abs_diff(unfused_export, simulated, texts)
    exact = unfused_diff is None or unfused_diff <= cfg.parity_unfused_atol
    close = agreement.cosine_mean >= cfg.parity_mean_cosine and agreement.cosine_min >= cfg.parity_min_cosine
    floor = _fidelity(simulated, noisy, texts)
    tolerance = max(cfg.parity_fidelity_tolerance, 1.0 - floor.cosine_mean)
    as_faithful = fidelity.int8 >= fidelity.fakequant - tolerance
    return ParityRecord(
        agreement.cosine_mean, agreement.cosine_min, _max_abs_diff(fused, simulated, texts), unfused_diff,
        floor, fidelity, len(texts),
        ParityThresholds(cfg.parity_mean_cosine, cfg.parity_min_cosine, cfg.parity_unfused_atol, tolerance),
        exact, close, as_faithful, exact and (close or as_faithful))


@dataclass
class ParityTexts:
    """What parity is judged on: the held-out texts, and the same texts packed into passages of the serving length
    (empty where `export.parity_passages` is 0)."""

    heldout: list[Text]
    passages: list[Text]

    def all(self) -> list[Text]:
        return self.heldout + self.passages


def parity_texts(heldout: list[Text], max_length: int, passages: int) -> ParityTexts:
    """The held-out texts, and `passages` passages of at least `max_length` words (a word is at least one token, so
    each fills every position the model serves): passage k reads the held-out texts in a circle from the k-th of
    evenly spaced starts, so a short held-out set still gives that many distinct passages."""
    laps = -(-max_length // max(sum(map(word_count, heldout)), 1)) + 1

    def passage(start: int) -> Text:
        return packed((heldout[start:] + heldout[:start]) * laps, max_length)[0]

    starts = [k * len(heldout) // passages for k in range(passages)] if heldout else []
    return ParityTexts(heldout, list(dict.fromkeys(map(passage, starts))))


@dataclass
class Simulated:
    """The simulation's pooled outputs on the held-out texts, plain and under rounding noise: what every export of
    it is judged against (measured once per model, whatever the number of runtimes)."""

    plain: Table
    noisy: Table


def simulated_tables(sim: FakeQuantModel, encoder: Encoder, texts: list[Text], batch_size: int, seed: int) -> Simulated:
    plain = embed(sim.eval(), encoder, texts, batch_size)
    with rounding_noise(sim, seed):
        noisy = embed(sim, encoder, texts, batch_size)
    return Simulated(plain, noisy)


__all__ = ["ParityRecord", "ParityTexts", "Simulated", "judge_parity", "parity_texts", "rounding_noise", "simulated_tables",
           "unfused"]
