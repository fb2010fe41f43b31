"""Carry one qconf's quantization parameters onto another qconf of the same model, op by op.

Used both ways round: a foreign qconf (INC's, IPEX's `save_qconf_summary`) onto qat's site map when restoring, and
qat's calibrated qconf onto the skeleton IPEX's own `prepare` writes when exporting to IPEX. Ops are matched by
owning module, position among that module's ops and op kind; tensor ids are the target's own. Anything that does
not line up is an error, never a guess.
"""
from __future__ import annotations

from collections import defaultdict

from qat.base.errors import QatError
from qat.quant.qconf import FP32, Qconf, QuantOp
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


def _model_prefix(qconf: Qconf, names: set[str]) -> str:
    """The path of the Hugging Face model inside whatever module the qconf was made from."""
    for op in qconf.ops:
        if op.kind == "linear":
            for name in names:
                if op.fqn == name or op.fqn.endswith("." + name):
                    return op.fqn[: len(op.fqn) - len(name)]
    raise QatError(f"qconf {qconf.source} names no Linear of this model (e.g. {sorted(names)[:2]}); "
                   "expected a qconf calibrated on this architecture")


def transplant(source: Qconf, target: Qconf, dropped: tuple[str, ...] = ()) -> Qconf:
    """A copy of `target` carrying `source`'s scales, zero points, dtypes and observers; the source's ops under a
    top-level module named in `dropped` (one the target's model no longer has) are left out."""
    result = target.copy()
    result.source = source.source
    linear_names = {op.name for op in result.ops if op.kind == "linear"}
    ours, theirs = _by_owner(result, WRAPPER_PREFIX), _by_owner(source, _model_prefix(source, linear_names))
    theirs = {owner: ops for owner, ops in theirs.items() if owner.split(".")[0] not in dropped}
    if set(ours) != set(theirs):
        extra, missing = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
        raise QatError(f"qconf {source.source} does not match the model: modules only in the qconf {extra[:3]}, "
                       f"only in the model {missing[:3]}")
    for owner, our_ops in ours.items():
        their_ops = theirs[owner]
        if [o.kind for o in our_ops] != [o.kind for o in their_ops]:
            raise QatError(f"qconf {source.source} does not match the model at module {owner!r}: ops "
                           f"{[o.kind for o in their_ops]}, the model runs {[o.kind for o in our_ops]}")
        for mine, other in zip(our_ops, their_ops):
            for into, came in zip(mine.info["input_tensor_infos"], other.info["input_tensor_infos"]):
                into.update({k: came[k] for k in CARRIED_INPUT_KEYS if k in came})
            for into, came in zip(mine.info["weight_tensor_infos"], other.info["weight_tensor_infos"]):
                into.update({k: came[k] for k in CARRIED_WEIGHT_KEYS if k in came})
            mine.info["activation_observer"] = other.info["activation_observer"]
            mine.info["weight_observer"] = other.info["weight_observer"]
    for op in result.ops:
        if op.kind == "mask_add":
            for tensor in op.info["input_tensor_infos"]:
                if tensor:
                    tensor["force_dtype"] = FP32
    # IPEX quantizes a module's output with the scale of the module's own output record: every record of a
    # tensor must carry the scale its consumer was given, or the export computes something else.
    result.set_activation_qparams(result.input_qparams_by_id())
    return result


__all__ = ["transplant"]
