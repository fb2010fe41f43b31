"""Weight-folded equalization inside attention: two exact per-channel rescalings with nothing left to compute at
run time.

Q/K: the attention scores Q·Kᵀ are unchanged when channel j of Q is multiplied by s_j and channel j of K divided
by s_j (rows j of W_Q and b_Q times s_j, rows j of W_K and b_K divided by s_j). With s_j = max|K_j|^a / max|Q_j|^(1-a)
(a = 0.5: the geometric balance) both matmul inputs get the same channel range, so an outlier channel of Q no
longer sets the int8 step of all of Q, nor one of K of all of K.

V/O: P·V is linear in V, so dividing channel j of V by s_j (rows j of W_V and b_V) divides channel j of the
context, and multiplying column j of W_O by s_j restores the output. With SmoothQuant's balance
s_j = max|X_j|^a / max|W_O[:, j]|^(1-a) (X the context) the context's outliers move into W_O's columns, and the
P·V matmul's V input shrinks with them.

Both act per channel, inside each head (channel j of Q, K, V belongs to one head), on fp32 weights before
calibration; the fp32 function is checked on every run.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from qat.base.errors import QatError
from qat.quant.config import EqualizeConfig
from qat.quant.stats import Batch
from qat.quant.wrapper import EncoderModule

# How encoders name one attention block's projections: (query, key, value) children of one module, and the
# output projection's path relative to that module.
NAMINGS = (
    (("query", "key", "value"), "..output.dense"),       # BERT, RoBERTa, XLM-RoBERTa, ELECTRA, ERNIE
    (("q_lin", "k_lin", "v_lin"), "out_lin"),             # DistilBERT
    (("q", "k", "v"), "o"),                               # MPNet
)
FLOOR = 1e-5
RELATIVE_TOLERANCE = 1e-4


@dataclass
class AttentionProjections:
    """The module paths of one attention block's Q, K, V and output projections."""

    query: str
    key: str
    value: str
    output: str


def _relative(path: str, relative: str) -> str:
    """`relative` from module `path`: '..x' goes up one level first."""
    if relative.startswith(".."):
        return f"{path.rpartition('.')[0]}.{relative[2:]}"
    return f"{path}.{relative}"


def attention_projections(model: nn.Module) -> list[AttentionProjections]:
    """Every attention block with separate Q/K/V Linears and a Linear output projection, in model order."""
    modules = dict(model.named_modules())
    found = []
    for path, module in modules.items():
        children = dict(module.named_children())
        for names, output in NAMINGS:
            if all(isinstance(children.get(name), nn.Linear) for name in names):
                out = _relative(path, output)
                if isinstance(modules.get(out), nn.Linear):
                    found.append(AttentionProjections(*(f"{path}.{name}" for name in names), out))
    return found


def check_attention(model: nn.Module) -> list[AttentionProjections]:
    """The model's attention blocks, or one clear error why they cannot be equalized."""
    blocks = attention_projections(model)
    if not blocks:
        raise QatError(f"equalize=on: {type(model).__name__} has no attention with separate query, key and value "
                       "Linear projections; expected an encoder whose Q, K and V are separate Linears (fused QKV "
                       "weights cannot be rescaled channel by channel)")
    heads = getattr(model.config, "num_attention_heads", None)
    hidden = getattr(model.config, "hidden_size", None)
    for block in blocks:
        width = model.get_submodule(block.query).out_features
        if not heads or width % heads or (hidden is not None and width != hidden):
            raise QatError(f"equalize=on: {block.query} projects to {width} channels but the config says "
                           f"{heads} heads of hidden size {hidden}; expected heads that divide the projection width")
    return blocks


@torch.no_grad()
def channel_maxima(model: nn.Module, blocks: list[AttentionProjections], batches: list[Batch]) -> dict[str, torch.Tensor]:
    """Per channel max |x| over the calibration batches: Q and K (the query/key outputs), the context (the output
    projection's input)."""
    maxima: dict[str, torch.Tensor] = {}

    def record(name: str, tensor: torch.Tensor) -> None:
        value = tensor.detach().abs().reshape(-1, tensor.shape[-1]).amax(0)
        maxima[name] = torch.maximum(maxima[name], value) if name in maxima else value

    hooks = []
    for block in blocks:
        for path in (block.query, block.key):
            hooks.append(model.get_submodule(path).register_forward_hook(
                lambda module, args, output, path=path: record(path, output)))
        hooks.append(model.get_submodule(block.output).register_forward_pre_hook(
            lambda module, args, path=block.output: record(path, args[0])))
    try:
        wrapped = EncoderModule(model).eval()
        for batch in batches:
            wrapped(*batch)
    finally:
        for hook in hooks:
            hook.remove()
    return maxima


def _balance(activation: torch.Tensor, other: torch.Tensor, alpha: float) -> torch.Tensor:
    return (activation.clamp(min=FLOOR).pow(alpha) / other.clamp(min=FLOOR).pow(1 - alpha)).clamp(min=FLOOR)


def _scale_rows(linear: nn.Linear, factors: torch.Tensor) -> None:
    linear.weight.mul_(factors[:, None])
    if linear.bias is not None:
        linear.bias.mul_(factors)


@torch.no_grad()
def rescale(model: nn.Module, block: AttentionProjections, pair: str, factors: torch.Tensor) -> None:
    """The exact rescaling of one pair, in place: 'qk' multiplies Q's channels by `factors` and divides K's; 'vo'
    divides V's channels (so the context's) and multiplies W_O's input columns."""
    if pair == "qk":
        _scale_rows(model.get_submodule(block.query), factors)
        _scale_rows(model.get_submodule(block.key), 1.0 / factors)
    else:
        _scale_rows(model.get_submodule(block.value), 1.0 / factors)
        model.get_submodule(block.output).weight.mul_(factors)


@dataclass
class Equalization:
    """The factors folded into the weights, by pair and block (the output projection's path names the block)."""

    qk: dict[str, list[float]]
    vo: dict[str, list[float]]


@torch.no_grad()
def equalize(model: nn.Module, batches: list[Batch], cfg: EqualizeConfig) -> tuple[nn.Module, Equalization]:
    """An equalized copy of `model` and its factors; fails unless its fp32 outputs on the first batch equal the
    original's to RELATIVE_TOLERANCE of their range."""
    blocks = check_attention(model)
    maxima = channel_maxima(model, blocks, batches)
    equalized = copy.deepcopy(model)
    record = Equalization({}, {})
    for block in blocks:
        if "qk" in cfg.pairs:
            factors = _balance(maxima[block.key], maxima[block.query], cfg.alpha)
            rescale(equalized, block, "qk", factors)
            record.qk[block.output] = factors.tolist()
        if "vo" in cfg.pairs:
            factors = _balance(maxima[block.output], equalized.get_submodule(block.output).weight.abs().amax(0), cfg.alpha)
            rescale(equalized, block, "vo", factors)
            record.vo[block.output] = factors.tolist()
    check_function(model, equalized, batches[0], "equalization")
    return equalized, record


@torch.no_grad()
def check_function(original: nn.Module, changed: nn.Module, batch: Batch, what: str) -> None:
    """The fp32 outputs must not change beyond float rounding (relative to their range)."""
    reference, result = EncoderModule(original).eval()(*batch), EncoderModule(changed).eval()(*batch)
    error = (reference - result).abs().max().item() / max(reference.abs().max().item(), 1e-12)
    if error > RELATIVE_TOLERANCE:
        raise QatError(f"{what} changed the fp32 outputs (max |diff| {error:.3g} of their range); expected a "
                       f"function-preserving rescaling (tolerance {RELATIVE_TOLERANCE})")
