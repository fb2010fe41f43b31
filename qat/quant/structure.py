"""Where a model's transformer blocks are, found from its structure rather than from one architecture's names."""
from __future__ import annotations

from torch import nn

from qat.base.errors import QatError


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The encoder's blocks: the longest ModuleList of same-class modules that hold weights (BERT: encoder.layer;
    lists of quantizers hold only buffers)."""
    best: list[nn.Module] = []
    for module in model.modules():
        if (isinstance(module, nn.ModuleList) and len(module) > len(best) and len({type(m) for m in module}) == 1
                and all(next(m.parameters(), None) is not None for m in module)):
            best = list(module)
    if not best:
        raise QatError(f"no transformer blocks found in {type(model).__name__}; expected a ModuleList of layers")
    return best


def block_paths(model: nn.Module) -> list[str]:
    """The module paths of the transformer blocks (BERT: 'encoder.layer.0', ...)."""
    blocks = set(map(id, transformer_blocks(model)))
    return [path for path, module in model.named_modules() if id(module) in blocks]
