"""qat's own map of a model's quantizable sites, written as a qconf skeleton, without IPEX.

One traced forward of the wrapped model records, for every module that is not a torch.nn leaf, the quantizable ops
its forward runs, in call order: Linear (and the other quantizable torch.nn modules) called from it, and the
functional matmuls and adds on tensors that depend on the model's inputs. Tensor ids follow tensor objects, so
an input shared by several ops (the Q, K and V Linears') is one id with one scale. The rules are the ones IPEX's
`prepare` records by, so the skeleton lists the same ops in the same order (a test compares the two where IPEX is
installed) and the IPEX qconf format stays an import and an export format only.
"""
from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from transformers import PreTrainedModel

from qat.quant.qconf import Qconf
from qat.quant.wrapper import EncoderModule

# The functional ops a static int8 recipe can quantize, as IPEX and torch.ao's define-by-run quantization list them
# (IPEX's own DLRM ops, interaction and merged embedding bags, are left out: no encoder runs them).
QUANTIZABLE_FUNCTIONS = frozenset({
    torch.Tensor.add, torch.add, torch.Tensor.relu, torch.relu, F.relu, torch.flatten, torch.Tensor.flatten,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.avg_pool2d, F.avg_pool3d, F.max_pool2d, F.max_pool3d,
    F.conv2d, F.conv3d, torch.conv2d, torch.conv3d, F.conv_transpose2d, F.conv_transpose3d, torch.conv_transpose2d,
    torch.conv_transpose3d, F.linear, torch._C._nn.linear, torch.matmul, torch.bmm, torch.Tensor.matmul,
    torch.Tensor.bmm, F.embedding_bag, torch.embedding_bag,
})
# The module types recorded as one op of their parent (a ReLU only when not in place).
QUANTIZABLE_MODULES = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear, nn.MaxPool2d,
                       nn.MaxPool3d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.ReLU,
                       nn.EmbeddingBag, nn.Flatten, nn.LSTM, nn.quantized.dynamic.Linear, nn.quantized.dynamic.LSTM)
# The static recipe's observers as a qconf records them: quint8 per-tensor activations, qint8 per-channel
# symmetric weights (the ranges are set for the CPU later).
ACTIVATION_OBSERVER = {"name": "MinMaxObserver", "dtype": "torch.quint8", "qscheme": "torch.per_tensor_affine",
                       "reduce_range": False, "quant_min": 0, "quant_max": 255, "is_dynamic": False}
WEIGHT_OBSERVER = {"name": "PerChannelMinMaxObserver", "ch_axis": 0, "dtype": "torch.qint8",
                   "qscheme": "torch.per_channel_symmetric", "reduce_range": False, "quant_min": -128,
                   "quant_max": 127, "is_dynamic": False}
# A float input's qparams until calibration sets them (statistics are collected with every quantizer off).
UNCALIBRATED = {"scale": [1.0], "zero_point": [0]}
ID, TRACKED = "_qat_site_id", "_qat_site_tracked"


def is_leaf(module: nn.Module) -> bool:
    """A torch.nn building block (its insides are not sites); containers and model code are not leaves."""
    return module.__module__.startswith("torch.nn") and not isinstance(module, (nn.Sequential, nn.ModuleList))


def is_quantizable_module(module: nn.Module) -> bool:
    return isinstance(module, QUANTIZABLE_MODULES) and not (isinstance(module, nn.ReLU) and module.inplace)


def _state_key(path: str) -> str:
    return (path or " ").replace(".", ":")


@dataclass
class _Owner:
    """A module whose forward is searched for sites, and the ops recorded on its first call."""

    key: str
    ops: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False     # a module called again (a shared block) keeps what its first call recorded


class _SiteRecorder(TorchFunctionMode):
    """Records each owner's quantizable calls; tensors flowing from the inputs are marked, as IPEX's proxy
    tensors are, so that arithmetic on buffers and constants alone is not a site."""

    def __init__(self, owners: dict[nn.Module, _Owner], paths: dict[nn.Module, str]) -> None:
        super().__init__()
        self.owners, self.paths = owners, paths
        self.stack: list[nn.Module] = []
        self.ids = itertools.count()
        self.touched: list[weakref.ref] = []

    def _set(self, tensor: torch.Tensor, name: str, value: object) -> None:
        setattr(tensor, name, value)
        self.touched.append(weakref.ref(tensor))

    def clean(self) -> None:
        """Take the marks off every tensor still alive (a parameter read by a site keeps none for the next trace)."""
        for ref in self.touched:
            tensor = ref()
            for name in (ID, TRACKED):
                if tensor is not None and hasattr(tensor, name):
                    delattr(tensor, name)

    def mark(self, output: Any) -> None:
        for tensor in tree_flatten(output)[0]:
            if isinstance(tensor, torch.Tensor):
                self._set(tensor, TRACKED, True)

    def _id(self, tensor: torch.Tensor) -> int:
        if not hasattr(tensor, ID):
            self._set(tensor, ID, next(self.ids))
        return getattr(tensor, ID)

    def _record(self, op_type: object, is_module: bool, fqn: str | None, inputs: list[Any], output: Any,
                weight: torch.Tensor | None = None) -> None:
        owner = self.owners.get(self.stack[-1]) if self.stack else None
        if owner is None or owner.done:
            return
        infos = []
        for arg in inputs:
            if isinstance(arg, torch.Tensor):
                dtype = str(arg.dtype)
                infos.append({"id": self._id(arg), "orig_dtype": dtype, "inf_dtype": dtype, "force_dtype": dtype,
                              **(UNCALIBRATED if arg.is_floating_point() else {})})
            else:
                infos.append({})
        outputs = [t for t in ([output] if isinstance(output, torch.Tensor) else output if isinstance(output, tuple)
                               else []) if isinstance(t, torch.Tensor)]
        for tensor in outputs:
            self._set(tensor, ID, next(self.ids))
        weights = [] if weight is None else [{"orig_dtype": str(weight.dtype), "inf_dtype": str(weight.dtype)}]
        owner.ops.append({
            "op_type": str(op_type), "op_type_is_module": is_module, "fqn": fqn, "input_tensor_infos": infos,
            "weight_tensor_infos": weights,
            "output_tensor_infos": [{"id": getattr(t, ID), "orig_dtype": str(t.dtype), "inf_dtype": str(t.dtype)}
                                    for t in outputs],
            "activation_observer": dict(ACTIVATION_OBSERVER), "weight_observer": dict(WEIGHT_OBSERVER)})

    def pre_hook(self, module: nn.Module, args: tuple) -> None:
        self.stack.append(module)

    def post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.stack.pop()
        if self.owners.get(module) is not None:
            self.owners[module].done = True
        if is_quantizable_module(module) and self.stack:
            self._record(type(module), True, self.paths.get(module), _flat(args), output, getattr(module, "weight", None))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        if _tracked(args, kwargs):
            if func in QUANTIZABLE_FUNCTIONS and not _adds_a_scalar(func, args):
                self._record(func, False, self.paths.get(self.stack[-1]) if self.stack else None, _flat(args), output)
            self.mark(output)
        return output


def _flat(args: tuple) -> list[Any]:
    """An op's inputs as a qconf lists them: positional arguments, lists and tuples opened one level."""
    return [a for arg in args for a in (arg if isinstance(arg, (list, tuple)) else [arg])]


def _tracked(args: tuple, kwargs: dict) -> bool:
    return any(isinstance(a, torch.Tensor) and getattr(a, TRACKED, False) for a in tree_flatten((args, kwargs))[0])


def _adds_a_scalar(func: object, args: tuple) -> bool:
    """An add with a Python number or a 0-d tensor is not a site (no scale could be observed for the scalar)."""
    return func in (torch.add, torch.Tensor.add) and any(
        not isinstance(a, torch.Tensor) or a.dim() == 0 for a in args)


@torch.no_grad()
def find_sites(model: PreTrainedModel, example: tuple[torch.Tensor, ...]) -> Qconf:
    """The qconf skeleton of `model` (wrapped as EncoderModule): every quantizable op with its tensor ids, all
    inputs fp32 and uncalibrated. One forward of `example` (a padded batch, so the mask add runs)."""
    wrapper = EncoderModule(model).eval()
    paths = {module: path for path, module in wrapper.named_modules()}
    inside_leaves = {inner for module in paths if is_leaf(module) for inner in module.modules()}
    owners = {module: _Owner(_state_key(path)) for module, path in paths.items() if module not in inside_leaves}
    recorder = _SiteRecorder(owners, paths)
    example = tuple(t.clone() for t in example)
    recorder.mark(example)
    pre = nn.modules.module.register_module_forward_pre_hook(recorder.pre_hook)
    post = nn.modules.module.register_module_forward_hook(recorder.post_hook)
    try:
        with recorder:
            wrapper(*example)
    finally:
        pre.remove()
        post.remove()
        recorder.clean()
    data = {owner.key: {"q_op_infos": {str(i): op for i, op in enumerate(owner.ops)}, "nonq_op_infos": {},
                        "layer_output_infos": []} for owner in owners.values()}
    return Qconf(data, "calibration")


__all__ = ["QUANTIZABLE_FUNCTIONS", "find_sites"]
