"""Does the exported int8 model compute what its fake-quant simulation computes?

IPEX runs one frozen graph two ways, so parity asks two questions. Unfused (the graph as converted), every int8
op is quantize -> dequantize -> the fp32 op: the simulation's own arithmetic, so the two must agree to float
tolerance; that proves the scales, the weights and the set of int8 ops are the same. Fused (oneDNN Graph and
IPEX kernels, from the second call on), GEMMs accumulate in int32 and requantize in their own order: an
activation near a rounding boundary lands one step away, and where scales are coarse (the full-operator recipe's
residual adds, whose inputs carry MiniLM's outlier channels) one step moves a token's LayerNorm output visibly,
and later layers amplify it. That is rounding, not another model: the simulation spreads as far from itself
when its Linear outputs get 1-ulp noise (`rounding_floor`). So the fused model passes when it is close to the
simulation, or when it is as faithful to fp32 as the simulation is.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from qat.config import ExportConfig
from qat.evaluate import Forward, cosine_fidelity, stack_texts

Table = dict[str, torch.Tensor]


def unfused(exported: torch.jit.ScriptModule) -> Forward:
    """The exported graph run as converted, without IPEX's and oneDNN Graph's fusions. Needs a freshly loaded
    module: once a module has run optimized, its executor keeps the fused plan."""
    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.jit.optimized_execution(False):
            return exported(input_ids, attention_mask)
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


def _fidelity(reference: Table, candidate: Table, texts: list[str]) -> dict[str, float]:
    return cosine_fidelity(stack_texts(reference, texts), stack_texts(candidate, texts))


def parity(fp32: Table, simulated: Table, fused: Table, texts: list[str], *, heldout_simulated: Table,
           heldout_unfused: Table, heldout_noisy: Table, cfg: ExportConfig) -> dict[str, Any]:
    """The parity record of one export (its 'passed' decides the run), from pooled embeddings of the held-out
    texts: fp32, simulation and fused export from the evaluation pass; simulation, unfused export and simulation
    under rounding noise from one pass over the held-out texts alone (same batches, so exactness can be asked)."""
    unfused_diff = max((heldout_unfused[t] - heldout_simulated[t]).abs().max().item() for t in texts)
    result: dict[str, Any] = {
        **_fidelity(simulated, fused, texts),
        "max_abs_diff": max((fused[t] - simulated[t]).abs().max().item() for t in texts),
        "unfused_max_abs_diff": unfused_diff,
        "rounding_floor": _fidelity(heldout_simulated, heldout_noisy, texts),
        "fidelity_to_fp32": {"fakequant": _fidelity(fp32, simulated, texts)["cosine_mean"],
                             "int8": _fidelity(fp32, fused, texts)["cosine_mean"]},
        "texts": len(texts),
        "thresholds": {"cosine_mean": cfg.parity_mean_cosine, "cosine_min": cfg.parity_min_cosine,
                       "unfused_atol": cfg.parity_unfused_atol, "fidelity_tolerance": cfg.parity_fidelity_tolerance},
    }
    fidelity = result["fidelity_to_fp32"]
    result["exact_unfused"] = unfused_diff <= cfg.parity_unfused_atol
    result["close"] = result["cosine_mean"] >= cfg.parity_mean_cosine and result["cosine_min"] >= cfg.parity_min_cosine
    result["as_faithful"] = fidelity["int8"] >= fidelity["fakequant"] - cfg.parity_fidelity_tolerance
    result["passed"] = result["exact_unfused"] and (result["close"] or result["as_faithful"])
    return result


__all__ = ["parity", "rounding_noise", "unfused"]
