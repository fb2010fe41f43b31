"""Restore a PTQ model made elsewhere: an IPEX qconf (from INC's IPEX path or `save_qconf_summary`) + fp32 model.

The foreign qconf's scales, zero points and dtypes are carried onto a skeleton qconf that this project's own IPEX
`prepare` of the same model writes (so op paths and order are exactly what IPEX will load back), op by op:
the same module, the same position among that module's ops, the same op type. Anything that does not line up
is an error, never a guess.
"""
from __future__ import annotations

from collections import defaultdict

from qat.ptq.calibration import ipex_skeleton, set_weight_qparams
from qat.data import Text
from qat.base.errors import QatError
from qat.load import DROPPED_MODULES, Encoder, batches
from qat.quant.config import QuantConfig
from qat.quant.qconf import Qconf, QuantOp
from qat.quant.wrapper import WRAPPER_PREFIX

CARRIED_INPUT_KEYS = ("scale", "zero_point", "force_dtype")
CARRIED_WEIGHT_KEYS = ("scale", "zero_point", "inf_dtype")


def _by_owner(qconf: Qconf, prefix: str) -> dict[str, list[QuantOp]]:
    """Ops grouped by owning module (relative to the Hugging Face model), in execution order; mask adds left out
    (transformers skips them on unpadded batches and they are never int8)."""
    groups: dict[str, list[QuantOp]] = defaultdict(list)
    for op in sorted(qconf.ops, key=lambda o: (o.state_key, o.index)):
        if op.kind != "mask_add":
            groups[op.owner.strip().removeprefix(prefix.rstrip(".")).strip(".")].append(op)
    return groups


def _foreign_prefix(foreign: Qconf, names: set[str]) -> str:
    """The path of the Hugging Face model inside whatever module the foreign qconf was made from."""
    for op in foreign.ops:
        if op.kind == "linear":
            for name in names:
                if op.fqn == name or op.fqn.endswith("." + name):
                    return op.fqn[: len(op.fqn) - len(name)]
    raise QatError(f"qconf {foreign.source} names no Linear of this model (e.g. {sorted(names)[:2]}); "
                   "expected a qconf calibrated on this architecture")


def transplant(foreign: Qconf, skeleton: Qconf) -> Qconf:
    """A copy of `skeleton` carrying the foreign qconf's quantization parameters."""
    result = skeleton.copy()
    result.source = foreign.source
    linear_names = {op.name for op in result.ops if op.kind == "linear"}
    ours, theirs = _by_owner(result, WRAPPER_PREFIX), _by_owner(foreign, _foreign_prefix(foreign, linear_names))
    theirs = {owner: ops for owner, ops in theirs.items() if owner.split(".")[0] not in DROPPED_MODULES}
    if set(ours) != set(theirs):
        extra, missing = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
        raise QatError(f"qconf {foreign.source} does not match the model: modules only in the qconf {extra[:3]}, "
                       f"only in the model {missing[:3]}")
    for owner, our_ops in ours.items():
        their_ops = theirs[owner]
        if [o.kind for o in our_ops] != [o.kind for o in their_ops]:
            raise QatError(f"qconf {foreign.source} does not match the model at module {owner!r}: ops "
                           f"{[o.kind for o in their_ops]}, the model runs {[o.kind for o in our_ops]}")
        for mine, other in zip(our_ops, their_ops):
            for target, source in zip(mine.info["input_tensor_infos"], other.info["input_tensor_infos"]):
                target.update({k: source[k] for k in CARRIED_INPUT_KEYS if k in source})
            for target, source in zip(mine.info["weight_tensor_infos"], other.info["weight_tensor_infos"]):
                target.update({k: source[k] for k in CARRIED_WEIGHT_KEYS if k in source})
            mine.info["activation_observer"] = other.info["activation_observer"]
            mine.info["weight_observer"] = other.info["weight_observer"]
    # IPEX quantizes a module's output with the scale of the module's own output record: every record of a
    # tensor must carry the scale its consumer was given, or the export computes something else.
    result.set_activation_qparams(result.input_qparams_by_id())
    return result


def restore_qconf(encoder: Encoder, foreign: Qconf, texts: list[Text], quant: QuantConfig) -> Qconf:
    """The foreign qconf on this project's skeleton, keeping its recipe; weights use this CPU's weight range."""
    restored = transplant(foreign, ipex_skeleton(encoder.model, next(batches(encoder, texts[:8], 8))))
    set_weight_qparams(restored, encoder.model, quant.weight_bits)
    return restored
