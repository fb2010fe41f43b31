"""Export to IPEX int8 TorchScript: qconf with current weight scales, carried onto IPEX's own skeleton of the
model -> prepare -> load -> convert -> trace -> freeze."""
from __future__ import annotations

import logging
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from qat.base.atomic import atomic_path
from qat.base.errors import QatError
from qat.base.ipex import convert, ipex, prepare
from qat.quant.qconf import Qconf
from qat.quant.transplant import transplant
from qat.quant.wrapper import EncoderModule

log = logging.getLogger(__name__)
# Ops that pass a dequantized tensor on unchanged for int8 purposes: layout, and the dtype cast that a trace under
# bf16 autocast puts between dequantize and the GEMM (IPEX fuses dequantize -> to -> linear into an int8 kernel).
LAYOUT_OPS = frozenset(f"aten::{op}" for op in ("alias", "contiguous", "transpose", "permute", "view", "reshape", "expand",
                                                "to"))
MODEL_FILE = "model_int8.pt"
GRAPH_KINDS = {"aten::linear": "linear", "aten::matmul": "matmul", "aten::bmm": "matmul", "aten::add": "add"}


@dataclass
class ExportResult:
    path: Path
    qconf_path: Path
    graph_int8_ops: dict[str, int]


def _produced_by_dequantize(value: torch.Value) -> bool:
    """True if the value is a dequantized tensor, possibly seen through layout-only ops."""
    node = value.node()
    while node.kind() in LAYOUT_OPS:
        node = next(node.inputs()).node()
    return node.kind() == "aten::dequantize"


def int8_op_counts(graph: torch.Graph) -> dict[str, int]:
    """Ops of the frozen graph whose tensor inputs all come from dequantize nodes, i.e. that IPEX runs in int8;
    plus Linears whose weight alone is dequantized ('linear_weight_only'), which no recipe here asks for."""
    counts: Counter[str] = Counter({kind: 0 for kind in [*set(GRAPH_KINDS.values()), "linear_weight_only"]})
    for node in graph.nodes():
        kind = GRAPH_KINDS.get(node.kind())
        if kind is None:
            continue
        dequantized = [_produced_by_dequantize(op) for op in list(node.inputs())[:2]]
        if all(dequantized):
            counts[kind] += 1
        elif kind == "linear" and dequantized[1]:
            counts["linear_weight_only"] += 1
    return dict(counts)


def expected_graph_counts(qconf: Qconf) -> dict[str, int]:
    counts = qconf.int8_counts()
    return {"linear": counts["linear"], "matmul": counts["matmul"],
            "add": counts["residual_add"] + counts["embedding_add"], "linear_weight_only": 0}


def ipex_skeleton(module: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> Qconf:
    """The qconf IPEX's own `prepare` records for the module: its op records and tensor ids, which its
    `load_qconf_summary` reads back. Made on a prepared copy of its own: a prepared model whose observers have
    run would have its scales recomputed by `convert`."""
    prepared = prepare(module, ipex.quantization.default_static_qconfig_mapping, example_inputs=example, inplace=False)
    with torch.no_grad():
        prepared(*example)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qconf.json"
        prepared.save_qconf_summary(qconf_summary=str(path))
        return Qconf.read(path)


def convert_for_ipex(model: PreTrainedModel, qconf: Qconf, weight_qparams: dict[str, tuple[torch.Tensor, torch.Tensor]],
                     example: tuple[torch.Tensor, torch.Tensor], qconf_path: Path) -> tuple[torch.nn.Module, Qconf]:
    """The fp32 model converted by IPEX with the qconf's activation scales and the weights' own per-channel scales
    (the qconf as IPEX read it is written to `qconf_path`), ready to trace."""
    qconf = qconf.copy()
    qconf.set_weight_scales(weight_qparams)
    module = EncoderModule(model).eval()
    qconf = transplant(qconf, ipex_skeleton(module, example))
    qconf.sign_matmul_inputs()
    prepared = prepare(module, ipex.quantization.default_static_qconfig_mapping, example_inputs=example, inplace=False)
    qconf.write(qconf_path)
    try:
        prepared.load_qconf_summary(qconf_summary=str(qconf_path))
    except (AssertionError, KeyError, IndexError) as error:
        raise QatError(f"qconf {qconf.source} does not match the model ({error or type(error).__name__}); "
                       "expected a qconf calibrated on this architecture") from None
    with torch.no_grad():
        return convert(prepared), qconf


def export_ipex(model: PreTrainedModel, qconf: Qconf, weight_qparams: dict[str, tuple[torch.Tensor, torch.Tensor]],
                example: tuple[torch.Tensor, torch.Tensor], out_dir: Path) -> ExportResult:
    """Convert the fp32 model with the qconf's activation scales and the weights' own per-channel scales, trace and
    freeze it.

    Fails if the frozen graph runs a different set of ops in int8 than the qconf asks for: an export that
    quietly stays fp32 must never pass as int8.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    qconf_path = out_dir / "qconf.json"
    converted, qconf = convert_for_ipex(model, qconf, weight_qparams, example, qconf_path)
    with torch.no_grad(), warnings.catch_warnings():
        # IPEX's converted ops read their scales as Python numbers: constants in the trace, which is intended.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(converted, example, check_trace=False, strict=False)
        frozen = torch.jit.freeze(traced)
    found, expected = int8_op_counts(frozen.graph), expected_graph_counts(qconf)
    if found != expected:
        raise QatError(f"IPEX export runs {found} ops in int8 but the recipe asks for {expected}; refusing to save")
    path = out_dir / MODEL_FILE
    with atomic_path(path) as tmp:
        torch.jit.save(frozen, str(tmp))
    log.info("exported int8 TorchScript to %s (int8 ops: %s)", path, found)
    return ExportResult(path, qconf_path, found)


def load_exported(path: Path, warmup: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.jit.ScriptModule:
    """Load an exported int8 model (IPEX is imported by this module, so its kernels are registered). The first
    call of a loaded TorchScript profiles and runs the graph as converted, unfused; IPEX's fused int8 kernels run
    from the second call on. With `warmup` that first call is made here, so every later call runs fused."""
    if not path.is_file():
        raise QatError(f"exported model {str(path)!r} does not exist; expected a TorchScript file from qat's export")
    module = torch.jit.load(str(path)).eval()
    if warmup is not None:
        with torch.no_grad():
            module(*warmup)
    return module


__all__ = ["MODEL_FILE", "ExportResult", "convert_for_ipex", "export_ipex", "int8_op_counts", "load_exported"]
