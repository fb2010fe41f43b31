"""Simulate a qconf's int8 recipe on the fp32 model with fake quantization (the trainable student).

Linear layers are swapped for QuantLinear. Functional ops (attention matmuls, adds) are intercepted with a
TorchFunctionMode and matched to the qconf by their order inside the owning module's forward, as the site map
(`qat.quant.sites`) records them, so a qconf that does not fit the model fails loudly instead of quantizing the
wrong op.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from transformers import PreTrainedModel

from qat.base.errors import QatError
from qat.quant.numerics import weight_qparams
from qat.quant.modules import QuantFunctionalOp, QuantLinear
from qat.quant.qconf import Qconf, QuantOp
from qat.quant.quantizer import FakeQuantizer
from qat.quant.sites import QUANTIZABLE_FUNCTIONS
from qat.quant.wrapper import EncoderModule

OPS_ATTRIBUTE = "qat_functional_ops"


def _family(op_type: str) -> str:
    for family in ("matmul", "bmm", "add", "linear"):
        if family in op_type:
            return family
    return op_type


def _is_float_op(args: tuple) -> bool:
    """Only ops on floating-point tensors are quantized (integer index arithmetic never is)."""
    tensors = [a for a in args[:2] if isinstance(a, torch.Tensor)]
    return bool(tensors) and all(t.is_floating_point() for t in tensors)


@dataclass
class _Frame:
    """A running module call: its qconf path and the functional ops it is expected to run, in order."""

    path: str
    ops: list[QuantFunctionalOp] | None
    seen: int = 0


class _FunctionalOpQuantizer(TorchFunctionMode):
    """Applies each module's QuantFunctionalOp input quantizers to the quantizable calls it makes."""

    def __init__(self, model: FakeQuantModel) -> None:
        super().__init__()
        self.frames: list[_Frame] = []
        self.lookup = model.frame_lookup()

    def pre_hook(self, module: nn.Module, args: tuple) -> None:
        path, ops = self.lookup.get(module, ("", None))
        self.frames.append(_Frame(path, ops))

    def post_hook(self, module: nn.Module, args: tuple, output: object) -> None:
        frame = self.frames.pop()
        if frame.ops is not None and frame.seen != len(frame.ops):
            raise QatError(f"qconf does not match the model: module {frame.path!r} ran {frame.seen} quantizable ops, "
                           f"the qconf lists {len(frame.ops)}")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        frame = self.frames[-1] if self.frames else None
        if frame is not None and frame.ops is not None and func in QUANTIZABLE_FUNCTIONS and _is_float_op(args):
            if frame.seen >= len(frame.ops):
                raise QatError(f"qconf does not match the model: module {frame.path!r} runs more quantizable ops "
                               f"than the {len(frame.ops)} the qconf lists")
            op = frame.ops[frame.seen]
            if _family(str(func)) != _family(op.op_type):
                raise QatError(f"qconf does not match the model: op {frame.seen} of {frame.path!r} is {func}, "
                               f"the qconf expects {op.op_type}")
            frame.seen += 1
            args = op.quantize_inputs(args)
        return func(*args, **kwargs)


class FakeQuantModel(nn.Module):
    """An EncoderModule whose ops are fake-quantized as the qconf says; weights stay fp32 parameters."""

    def __init__(self, encoder: EncoderModule, qconf: Qconf) -> None:
        super().__init__()
        self.encoder = encoder
        self.qconf = qconf
        self._keyed_paths = {key.replace(":", ".").strip() for key in qconf.data}
        self.activation_sites: list[tuple[QuantOp, int, FakeQuantizer]] = []
        for op in qconf.ops:
            if op.is_module:
                self._swap_module(op)
            else:
                owner = self._submodule(op.owner, op)
                if not hasattr(owner, OPS_ATTRIBUTE):
                    owner.register_module(OPS_ATTRIBUTE, nn.ModuleList())
                getattr(owner, OPS_ATTRIBUTE).append(QuantFunctionalOp(op.info["op_type"], self._input_quantizers(op)))

    def _input_quantizers(self, op: QuantOp) -> list[FakeQuantizer | None]:
        quantizers = [None if q is None else FakeQuantizer(q.dtype, q.scale, q.zero_point) for q in op.input_qparams()]
        self.activation_sites += [(op, i, q) for i, q in enumerate(quantizers) if q is not None]
        return quantizers

    def _submodule(self, path: str, op: QuantOp) -> nn.Module:
        try:
            return self.encoder.get_submodule(path.strip())
        except AttributeError:
            raise QatError(f"qconf does not match the model: it names module {path!r} (op {op.fqn!r}), "
                           "which the model does not have") from None

    def _swap_module(self, op: QuantOp) -> None:
        module = self._submodule(op.fqn, op)
        if op.kind != "linear" or not isinstance(module, nn.Linear):
            if op.quantized:
                raise QatError(f"qconf quantizes {op.fqn!r} ({op.info['op_type']}); only Linear modules are supported")
            return
        if op.quantized:
            parent_path, _, child = op.fqn.rpartition(".")
            input_quantizer = self._input_quantizers(op)[0]
            self._submodule(parent_path, op).register_module(child, QuantLinear.from_float(module, input_quantizer, op.weight_range))

    def frame_lookup(self) -> dict[nn.Module, tuple[str, list[QuantFunctionalOp] | None]]:
        """Module -> (path, functional ops it must run), for the modules the qconf keys."""
        lookup: dict[nn.Module, tuple[str, list[QuantFunctionalOp] | None]] = {}
        for path, module in self.encoder.named_modules():
            if path in self._keyed_paths:
                lookup[module] = (path, list(getattr(module, OPS_ATTRIBUTE, [])))
        return lookup

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        mode = _FunctionalOpQuantizer(self)
        pre = nn.modules.module.register_module_forward_pre_hook(mode.pre_hook)
        post = nn.modules.module.register_module_forward_hook(mode.post_hook)
        try:
            with mode:
                return self.encoder(*inputs)
        finally:
            pre.remove()
            post.remove()

    def to_float(self) -> nn.Module:
        """A copy of the Hugging Face model with plain nn.Linear layers and no quantizers: what IPEX converts."""
        model = copy.deepcopy(self.encoder.model)
        for path, module in list(model.named_modules()):
            if isinstance(module, QuantLinear):
                parent, _, child = path.rpartition(".")
                model.get_submodule(parent).register_module(child, module.to_float())
            if hasattr(module, OPS_ATTRIBUTE):
                delattr(module, OPS_ATTRIBUTE)
        return model

    def frozen(self) -> FakeQuantModel:
        """A copy whose weight scales are fixed at the current weights: the form a runtime's converter traces."""
        copied = copy.deepcopy(self).eval()
        for module in copied.encoder.modules():
            if isinstance(module, QuantLinear):
                module.weight_quantizer.freeze_weight(module.weight.detach())
        return copied

    def weight_qparams(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-channel qparams of every quantized Linear's current weight, keyed by qconf fqn."""
        return {path: weight_qparams(m.weight, *m.weight_quantizer.weight_range)
                for path, m in self.encoder.named_modules() if isinstance(m, QuantLinear)}


def simulate(model: PreTrainedModel, qconf: Qconf) -> FakeQuantModel:
    """Entry point: a copy of the fp32 model, wrapped, simulating the qconf's int8 recipe (`model` is not changed;
    the copy's Linear weights are the student's trainable parameters)."""
    return FakeQuantModel(EncoderModule(copy.deepcopy(model)), qconf)
