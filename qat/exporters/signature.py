"""What every export takes and gives, by name: the tokenizer's inputs (input_ids, attention_mask, and
token_type_ids where the architecture has segment embeddings) and one output, `last_hidden_state` for an
embedding model or `logits` for a score model: the names sentence-transformers' ONNX and OpenVINO backends read."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qat.load import Encoder


@dataclass(frozen=True)
class ExportSignature:
    inputs: list[str]
    output: str

    @classmethod
    def of(cls, encoder: Encoder) -> ExportSignature:
        return cls(list(encoder.input_names), "logits" if encoder.pairs else "last_hidden_state")


class NamedInputs(nn.Module):
    """The model with its inputs as named parameters, so that a converter names the graph's inputs by them."""

    def __init__(self, model: nn.Module, signature: ExportSignature) -> None:
        super().__init__()
        self.model, self.signature = model, signature

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        inputs = (input_ids, attention_mask) if token_type_ids is None else (input_ids, attention_mask, token_type_ids)
        return self.model(*inputs)
