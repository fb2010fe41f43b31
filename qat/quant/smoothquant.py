"""SmoothQuant migration (Xiao et al., 2022): move activation outliers into the weights before calibration.

Per input channel j of a group of int8 Linears that share one input (Q/K/V share theirs), with X the calibration
inputs and W the group's weights: s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha). The weights become W[:, j] * s_j
and the input is multiplied by 1 / s_j, so the fp32 function is unchanged while the int8 input range shrinks.

Where the 1/s goes: the attention output projection's input is the context P·V, linear in V, so its 1/s folds
into the value projection's rows and bias: nothing is left to compute at run time. Elsewhere it cannot fold: in
a post-LayerNorm encoder such as BERT every LayerNorm output also feeds a residual add, so folding 1/s into the
LayerNorm (before Q/K/V and FFN in) would rescale the residual stream too and change the function, and the FFN
out's input is GELU's output, which no weight before GELU can scale (GELU is not homogeneous). There the
multiply happens inside the module that owns the Linear(s), on that module's first input, right before the
Linear; this is where IPEX's own SmoothQuant puts its `mul` too. A group whose owner's first input is not the
tensor its Linears read (an input passed by keyword, a module owning Linears that read different tensors) is left
unsmoothed and named in the artifact and the report. It stays fp32 (IPEX has no int8 mul), its
output gets its own int8 scale, and the residual add keeps the unscaled tensor.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qat.base.errors import QatError
from qat.quant.config import QuantConfig, SmoothQuantConfig
from qat.quant.equalize import attention_projections, check_function
from qat.quant.qconf import Qconf, QuantOp
from qat.quant.stats import Batch, TensorStats
from qat.quant.structure import block_paths
from qat.quant.wrapper import EncoderModule

SMOOTH_BUFFER = "smooth_inv_scale"
_SMOOTHED_CLASSES: dict[type, type] = {}


class _SmoothedInput:
    """Mixin: the module's first input times the per-channel 1/s buffer, then the module's own forward."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not args:   # e.g. DistilBERT's attention gets query, key and value by keyword: no one input to scale
            raise QatError(f"SmoothQuant cannot multiply the input of {type(self).__bases__[1].__name__} at run time: "
                           "its caller passes no positional input; expected smoothquant.modules to leave it out")
        return super().forward(args[0] * getattr(self, SMOOTH_BUFFER), *args[1:], **kwargs)  # type: ignore[misc]


def smooth_input(module: nn.Module, inv_scale: torch.Tensor) -> None:
    """Make `module` multiply its first input by `inv_scale` (same parameters and path; one buffer more)."""
    if isinstance(module, _SmoothedInput):
        raise QatError(f"module {type(module).__name__} is already smoothed; expected one migration per model")
    base = type(module)
    if base not in _SMOOTHED_CLASSES:
        _SMOOTHED_CLASSES[base] = type(f"Smoothed{base.__name__}", (_SmoothedInput, base), {})
    module.__class__ = _SMOOTHED_CLASSES[base]
    module.register_buffer(SMOOTH_BUFFER, inv_scale.detach().clone())


def smoothed_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Module path -> its 1/s buffer, for every smoothed module (what a saved model must carry)."""
    return {path: getattr(m, SMOOTH_BUFFER) for path, m in model.named_modules() if isinstance(m, _SmoothedInput)}


def restore_smoothing(model: nn.Module, buffers: dict[str, torch.Tensor]) -> None:
    """Re-apply saved 1/s buffers to a freshly loaded model (whose weights are already migrated)."""
    for path, inv_scale in buffers.items():
        smooth_input(model.get_submodule(path), inv_scale)


def smoothing_groups(qconf: Qconf, quant: QuantConfig, cfg: SmoothQuantConfig, blocks: list[str]) -> list[list[QuantOp]]:
    """The recipe's int8 Linears inside the transformer blocks (of the selected modules) grouped by the tensor
    they read: Q/K/V share theirs, so they share one factor per input channel. Linears outside the blocks (an
    embedding projection, a score head's pooler and classifier) read one token's state or run once per model,
    and have no module input of their own for the runtime multiply: they are not smoothed."""
    recipe = qconf.with_recipe(quant)
    patterns = [re.compile(p) for p in cfg.modules]
    groups: dict[int, list[QuantOp]] = {}
    for op in recipe.ops:
        inside = any(op.name.startswith(block + ".") for block in blocks)
        if op.kind == "linear" and op.quantized and inside and any(p.fullmatch(_owner(op)) for p in patterns):
            groups.setdefault(op.info["input_tensor_infos"][0]["id"], []).append(op)
    if not groups:
        raise QatError(f"smoothquant.modules={cfg.modules} selects no int8 Linear; expected module paths such as "
                       "'encoder.layer.0.intermediate'")
    return list(groups.values())


def _owner(op: QuantOp) -> str:
    return op.name.rpartition(".")[0]


def _placeable_owners(model: nn.Module, groups: list[list[QuantOp]], batch: Batch) -> set[str]:
    """The owner modules whose first positional input is exactly the tensor their Linears read, seen on one
    forward: only there does a runtime 1/s on the owner's input reach those Linears and nothing else. (DistilBERT's
    FFN owns two Linears, and the second reads GELU's output, not the FFN's input.)"""
    seen: dict[str, set[tuple | None]] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple) -> None:
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            seen.setdefault(name, set()).add(None if first is None else (first.data_ptr(), tuple(first.shape)))
        return hook

    names = {_owner(op) for ops in groups for op in ops} | {op.name for ops in groups for op in ops}
    hooks = [model.get_submodule(name).register_forward_pre_hook(record(name)) for name in names]
    try:
        EncoderModule(model).eval()(*batch)
    finally:
        for hook in hooks:
            hook.remove()

    def placeable(ops: list[QuantOp]) -> bool:
        owner = _owner(ops[0])
        inputs = seen.get(owner, {None})
        return None not in inputs and all(_owner(op) == owner and seen.get(op.name) == inputs for op in ops)

    return {_owner(ops[0]) for ops in groups if placeable(ops)}


@dataclass
class Migration:
    """The migrated model, and the Linears left as they were (no module input of their own for the multiply)."""

    model: nn.Module
    unsmoothed: list[str]


@torch.no_grad()
def migrate(model: nn.Module, qconf: Qconf, stats: dict[int, TensorStats], batches: int, quant: QuantConfig,
            cfg: SmoothQuantConfig, check: Batch) -> Migration:
    """A migrated copy of `model`; fails unless its fp32 outputs on `check` equal the original's. The attention
    output projection's 1/s folds into the value projection (its input is P·V, linear in V); every other group
    gets a runtime multiply on its owner's input, where one can be placed, and is left unsmoothed otherwise."""
    migrated = copy.deepcopy(model)
    value_of = {block.output: block.value for block in attention_projections(migrated)}
    groups = smoothing_groups(qconf, quant, cfg, block_paths(model))
    placeable = _placeable_owners(model, groups, check)
    owners: set[str] = set()
    unsmoothed: list[str] = []
    for ops in groups:
        folded = len(ops) == 1 and ops[0].name in value_of
        owner = _owner(ops[0])
        if not folded and (owner not in placeable or owner in owners):
            unsmoothed += [op.name for op in ops]
            continue
        linears = [migrated.get_submodule(op.name) for op in ops]
        act_max = stats[ops[0].info["input_tensor_infos"][0]["id"]].channel_max(batches).float()
        weight_max = torch.stack([linear.weight.abs().amax(0) for linear in linears]).amax(0)
        factors = (act_max.clamp(min=1e-5).pow(cfg.alpha) / weight_max.clamp(min=1e-5).pow(1 - cfg.alpha)).clamp(min=1e-5)
        for linear in linears:
            linear.weight.mul_(factors)
        if folded:
            value = migrated.get_submodule(value_of[ops[0].name])
            value.weight.div_(factors[:, None])
            if value.bias is not None:
                value.bias.div_(factors)
        else:
            owners.add(owner)
            smooth_input(migrated.get_submodule(owner), 1.0 / factors)
    check_function(model, migrated, check, "SmoothQuant migration")
    return Migration(migrated, unsmoothed)
