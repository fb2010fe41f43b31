"""Activation statistics of one tensor over the calibration batches: what every range algorithm reads."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from qat.base.errors import QatError

Batch = tuple[torch.Tensor, ...]   # input_ids, attention_mask[, token_type_ids]: the calibrated and traced signature


@dataclass
class TensorStats:
    """One activation tensor over the calibration batches (row b = batch b)."""

    batch_min: torch.Tensor      # [batches]
    batch_max: torch.Tensor      # [batches]
    bound: float                 # the histograms cover [-bound, bound]
    histograms: torch.Tensor     # [batches, bins]
    channel_sum: torch.Tensor | None = None     # Linear inputs: [batches, features], sums over tokens (bias correction)
    rows: torch.Tensor | None = None            # [batches]: how many tokens each sum adds up
    channel_absmax: torch.Tensor | None = None  # Linear inputs: [batches, features], max |x| (SmoothQuant)

    def min_max(self, batches: int) -> tuple[float, float]:
        return self.batch_min[:batches].min().item(), self.batch_max[:batches].max().item()

    def histogram(self, batches: int) -> torch.Tensor:
        return self.histograms[:batches].sum(0)

    def channel_mean(self, batches: int) -> torch.Tensor:
        if self.channel_sum is None or self.rows is None:
            raise QatError("channel sums are kept for Linear inputs only; expected the input of an int8 Linear")
        return self.channel_sum[:batches].sum(0) / self.rows[:batches].sum()

    def channel_max(self, batches: int) -> torch.Tensor:
        if self.channel_absmax is None:
            raise QatError("channel maxima are kept for Linear inputs only; expected the input of an int8 Linear")
        return self.channel_absmax[:batches].amax(0)
