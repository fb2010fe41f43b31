"""The traceable wrapper around a Hugging Face encoder, and the name prefix it gives every qconf path."""
from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

# Every qconf written by this project names modules relative to EncoderModule: its attribute `model` + ".".
WRAPPER_PREFIX = "model."


class EncoderModule(nn.Module):
    """(input_ids, attention_mask[, token_type_ids]) -> last hidden state (embedding models) or the head's logits
    (score models): the one signature that is calibrated, simulated and traced."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        # An explicit additive mask: transformers skips its own mask (and the mask add) when nothing is padded,
        # which would change the op sequence that the qconf records between batches.
        additive = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        segments = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        output = self.model(input_ids=input_ids, attention_mask=additive, **segments)
        return output.logits if "logits" in output else output.last_hidden_state
