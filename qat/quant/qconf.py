"""The IPEX qconf JSON (what `save_qconf_summary` writes): read, classify its ops, edit the recipe, write."""
from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qat.base.atomic import write_json
from qat.base.errors import QatError
from qat.quant.numerics import QUANTIZED_DTYPES, parse_dtype
from qat.quant.config import OP_KINDS, QuantConfig
from qat.quant.wrapper import WRAPPER_PREFIX

FP32 = "torch.float32"
FUNCTIONAL_FAMILIES = {"matmul": "matmul", "residual_add": "add", "embedding_add": "add", "mask_add": "add"}


@dataclass(frozen=True)
class InputQParams:
    scale: float
    zero_point: int
    dtype: torch.dtype


@dataclass(frozen=True)
class QuantOp:
    """One quantizable op of the qconf: a Linear module, or a functional matmul/add inside a module."""

    state_key: str
    index: int
    kind: str
    info: dict[str, Any]

    @property
    def fqn(self) -> str:
        return self.info["fqn"] or ""   # '' (the wrapper) for a module made inside a forward

    @property
    def name(self) -> str:
        """What skip lists name: a Linear's module path inside the Hugging Face model; for a functional op, its
        owner's path plus the op family ('encoder.layer.0.output.add', '...attention.self.matmul'), so that a
        skip entry can name the op without its owner's Linear layers."""
        path = self.fqn.removeprefix(WRAPPER_PREFIX)
        family = FUNCTIONAL_FAMILIES.get(self.kind)
        return f"{path}.{family}" if family and not self.is_module else path

    @property
    def is_module(self) -> bool:
        return bool(self.info.get("op_type_is_module"))

    @property
    def owner(self) -> str:
        """Path (relative to the wrapper) of the module whose forward runs this op."""
        return self.state_key.replace(":", ".")

    def input_qparams(self) -> list[InputQParams | None]:
        """Per input: the frozen qparams if the op quantizes that input, else None."""
        result: list[InputQParams | None] = []
        for tensor in self.info["input_tensor_infos"]:
            dtype = parse_dtype(tensor["force_dtype"]) if tensor else torch.float32
            if dtype in QUANTIZED_DTYPES:
                if "scale" not in tensor:
                    raise QatError(f"qconf op {self.fqn!r} quantizes an input that has no scale; expected a calibrated qconf")
                result.append(InputQParams(float(tensor["scale"][0]), int(tensor["zero_point"][0]), dtype))
            else:
                result.append(None)
        return result

    @property
    def weight_range(self) -> tuple[int, int]:
        """(quant_min, quant_max) of the weight observer: the range the per-channel scales are computed for."""
        observer = self.info["weight_observer"]
        return int(observer["quant_min"]), int(observer["quant_max"])

    @property
    def quantized(self) -> bool:
        return any(q is not None for q in self.input_qparams())


def _classify(op_type: str, is_module: bool, module_op_types: list[str], fqn: str | None) -> str:
    if is_module:
        return "linear" if "Linear" in op_type else "other"
    if "matmul" in op_type or "bmm" in op_type:
        return "matmul"
    if "add" in op_type:
        # The add between the two attention products adds the mask (scale near 1e36): never int8.
        if any("matmul" in t or "bmm" in t for t in module_op_types):
            return "mask_add"
        return "embedding_add" if (fqn or "").endswith("embeddings") else "residual_add"
    return "other"


# fqn is null for an op of a module made inside a forward (DistilBERT's classification head calls nn.ReLU()(x)).
OP_INFO_FIELDS = {"op_type": str, "fqn": (str, type(None)), "input_tensor_infos": list, "weight_tensor_infos": list,
                  "output_tensor_infos": list, "activation_observer": dict, "weight_observer": dict}


def _type_name(kind: type | tuple[type, ...]) -> str:
    return kind[0].__name__ if isinstance(kind, tuple) else kind.__name__


def _shape_problem(data: Any) -> str | None:
    """Where a JSON departs from the shape of IPEX's qconf summary: module -> {'q_op_infos': index -> op info}."""
    if not isinstance(data, dict):
        return f"its top level is a JSON {type(data).__name__}, not an object keyed by module"
    for state_key, state in data.items():
        infos = state.get("q_op_infos") if isinstance(state, dict) else None
        if not isinstance(infos, dict):
            return f"module {state_key!r} has no 'q_op_infos' object"
        for index, info in infos.items():
            if not index.isdigit() or not isinstance(info, dict):
                return f"op {index!r} of module {state_key!r} is not an op record keyed by its position"
            for name, kind in OP_INFO_FIELDS.items():
                if name not in info or not isinstance(info[name], kind):
                    return f"op {index} of module {state_key!r} has no {_type_name(kind)} field {name!r}"
    return None


class Qconf:
    """An IPEX qconf summary held as its JSON, plus a classified view of its quantizable ops."""

    def __init__(self, data: dict[str, Any], source: str = "<memory>") -> None:
        problem = _shape_problem(data)
        if problem:
            raise QatError(f"qconf {source} is not an IPEX qconf summary: {problem}; expected the JSON that IPEX's "
                           "save_qconf_summary writes")
        self.data = data
        self.source = source
        self.ops: list[QuantOp] = []
        for state_key, state in data.items():
            infos = state["q_op_infos"]
            types = [i["op_type"] for i in infos.values()]
            for index, info in infos.items():
                kind = _classify(info["op_type"], info.get("op_type_is_module", False), types, info["fqn"])
                self.ops.append(QuantOp(state_key, int(index), kind, info))

    @classmethod
    def read(cls, path: Path | str) -> Qconf:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise QatError(f"qconf file {str(path)!r} does not exist; expected an IPEX qconf JSON") from None
        except json.JSONDecodeError as error:
            raise QatError(f"qconf file {str(path)!r} is not valid JSON ({error}); expected an IPEX qconf JSON") from None
        return cls(data, str(path))

    def write(self, path: Path) -> None:
        write_json(path, self.data)

    def copy(self) -> Qconf:
        return Qconf(copy.deepcopy(self.data), self.source)

    def with_recipe(self, quant: QuantConfig) -> Qconf:
        """A copy whose ops' input dtypes are int8 for the recipe's op kinds minus skipped modules, fp32 otherwise."""
        result = self.copy()
        result._set_recipe(quant)
        return result

    def context_matmuls(self) -> set[tuple[str, int]]:
        """(state key, index) of each attention's context product: the second matmul of a module that runs
        exactly two (the scores Q K^T, then the softmax's probabilities times V)."""
        matmuls: dict[str, list[int]] = {}
        for op in self.ops:
            if op.kind == "matmul":
                matmuls.setdefault(op.state_key, []).append(op.index)
        return {(key, sorted(indices)[1]) for key, indices in matmuls.items() if len(indices) == 2}

    def context_in_float(self) -> bool:
        """The recipe runs attention matmuls in int8 but leaves their context products in floating point."""
        context = self.context_matmuls()
        matmuls = [op for op in self.ops if op.kind == "matmul" and op.quantized]
        return bool(context) and bool(matmuls) and not any((op.state_key, op.index) in context for op in matmuls)

    def _set_recipe(self, quant: QuantConfig) -> None:
        kinds = quant.op_kinds()
        patterns = {p: re.compile(p) for p in quant.skip}
        floating = set() if quant.context_matmul or "matmul" not in kinds else self.context_matmuls()
        if not quant.context_matmul and "matmul" in kinds and not floating:
            raise QatError(f"quant.context_matmul=false, but qconf {self.source} has no module that runs two matmuls "
                           "(attention scores, then probabilities times values); expected an eager-attention encoder")
        used: set[str] = set()
        for op in self.ops:
            if op.kind not in OP_KINDS and op.kind != "mask_add":
                continue
            hits = [p for p, rx in patterns.items() if op.name == p or rx.fullmatch(op.name) or op.name.startswith(p + ".")]
            used.update(hits)
            int8 = op.kind in kinds and not hits and (op.state_key, op.index) not in floating
            dtype = op.info["activation_observer"]["dtype"] if int8 else FP32
            for tensor in op.info["input_tensor_infos"]:
                if tensor:
                    tensor["force_dtype"] = dtype
            # IPEX quantizes a Linear's weight whenever the weight says qint8, even if its input stays fp32.
            for weight in op.info["weight_tensor_infos"]:
                if weight:
                    weight["inf_dtype"] = op.info["weight_observer"]["dtype"] if int8 else FP32
        unused = [p for p in quant.skip if p not in used]
        if unused:
            names = sorted({op.name for op in self.ops if op.kind in OP_KINDS})
            raise QatError(f"quant.skip entries {unused} match no quantizable module; expected names such as {names[:3]}")

    @property
    def weight_range(self) -> tuple[int, int] | None:
        """The Linear weights' range (one for the whole qconf), or None if no Linear is quantized."""
        ranges = {op.weight_range for op in self.ops if op.kind == "linear" and op.quantized}
        if len(ranges) > 1:
            raise QatError(f"qconf {self.source} mixes weight ranges {sorted(ranges)}; expected one")
        return ranges.pop() if ranges else None

    def tensor_infos(self) -> Iterator[dict[str, Any]]:
        """Every activation tensor record: op inputs and outputs, and module outputs (IPEX quantizes a module
        output that an int8 op consumes with the scale recorded there, so all records of one id must agree)."""
        for state in self.data.values():
            for info in state["q_op_infos"].values():
                yield from (t for t in info["input_tensor_infos"] + info["output_tensor_infos"] if t)
            yield from (t for t in state.get("layer_output_infos", []) if t)

    def input_qparams_by_id(self) -> dict[int, tuple[float, int]]:
        """(scale, zero point) of every quantized op input, by tensor id; one tensor has one pair or it is an error."""
        found: dict[int, tuple[float, int]] = {}
        for op in self.ops:
            for tensor, qparams in zip(op.info["input_tensor_infos"], op.input_qparams()):
                if qparams is None:
                    continue
                pair = (qparams.scale, qparams.zero_point)
                if found.setdefault(tensor["id"], pair) != pair:
                    raise QatError(f"qconf {self.source} quantizes tensor {tensor['id']} with {found[tensor['id']]} "
                                   f"and with {pair} (at {op.fqn!r}); expected one scale per tensor")
        return found

    def set_activation_qparams(self, qparams: dict[int, tuple[float, int]]) -> None:
        """Set (scale, zero point) of tensors by qconf tensor id, in every record of that id."""
        for tensor in self.tensor_infos():
            if tensor.get("id") in qparams and "scale" in tensor:
                scale, zero_point = qparams[tensor["id"]]
                tensor.update(scale=[scale], zero_point=[zero_point])

    def clamp_activation_scales(self, scale_min: float | None, scale_max: float | None) -> int:
        """Clamp every int8 input's frozen scale into [scale_min, scale_max], keeping its zero point (so zero
        stays exact). Returns how many tensors changed."""
        clamped = {}
        for tensor_id, (scale, zero_point) in self.input_qparams_by_id().items():
            limited = min(max(scale, scale_min or scale), scale_max or scale)
            if limited != scale:
                clamped[tensor_id] = (limited, zero_point)
        self.set_activation_qparams(clamped)
        return len(clamped)

    def set_weight_range(self, quant_min: int, quant_max: int) -> None:
        """Record the weight range in every Linear's weight observer (the simulation and export read it there)."""
        for op in self.ops:
            if op.kind == "linear":
                op.info["weight_observer"].update(quant_min=quant_min, quant_max=quant_max)

    def set_weight_scales(self, scales: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write per-channel weight qparams (keyed by Linear fqn) so that convert quantizes the weights exported."""
        for op in self.ops:
            if op.kind == "linear" and op.fqn in scales:
                scale, zero_point = scales[op.fqn]
                weight_info = op.info["weight_tensor_infos"][0]
                weight_info["scale"] = scale.tolist()
                weight_info["zero_point"] = zero_point.tolist()

    def sign_matmul_inputs(self) -> None:
        """Hold every int8 matmul input calibrated as quint8 with zero point 128 as qint8 with zero point 0 instead:
        the same values (q - 128 in both), which oneDNN multiplies as s8 directly, where it would otherwise reorder
        the u8 tensor to s8 and correct for the zero point at every call."""
        for op in self.ops:
            if op.kind != "matmul":
                continue
            for tensor, qparams in zip(op.info["input_tensor_infos"], op.input_qparams()):
                if qparams is not None and qparams.dtype == torch.quint8 and qparams.zero_point == 128:
                    tensor.update(inf_dtype=str(torch.qint8), force_dtype=str(torch.qint8), zero_point=[0])

    def int8_counts(self) -> dict[str, int]:
        """How many ops of each kind the recipe puts in int8."""
        counts = {kind: 0 for kind in OP_KINDS}
        for op in self.ops:
            if op.kind in counts and op.quantized:
                counts[op.kind] += 1
        return counts
