"""Activation statistics, collected once per calibration set and reused by every range algorithm.

Two fp32 passes over the calibration batches, through the very sites the simulation quantizes (keyed by the
qconf's tensor ids, so the Q/K/V Linears' shared input is seen once): the first records per-batch min/max and
per-channel sums, the second per-batch histograms on a fixed symmetric range [-bound, bound]. Keeping batches
apart lets an algorithm, or a search trial, use the first n batches without running the model again.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from qat.quant.config import OP_KINDS, QuantConfig
from qat.quant.qconf import Qconf
from qat.quant.quantizer import FakeQuantizer
from qat.quant.simulate import simulate
from qat.quant.stats import Batch, TensorStats

# How a caller watches the two passes over the batches (a progress bar, say): (batches, what) -> batches.
Track = Callable[[list[Batch], str], Iterable[Batch]]


class _Recorder(nn.Module):
    """What one tensor looks like, batch by batch; histograms only once `bound` is known (second pass)."""

    def __init__(self, bins: int, channel_sums: bool) -> None:
        super().__init__()
        self.bins = bins
        self.channel_sums = channel_sums
        self.bound: float | None = None
        self.mins: list[float] = []
        self.maxs: list[float] = []
        self.sums: list[torch.Tensor] = []
        self.rows: list[int] = []
        self.absmax: list[torch.Tensor] = []
        self.histograms: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if self.bound is None:
            self.mins.append(x.min().item())
            self.maxs.append(x.max().item())
            if self.channel_sums:
                flat = x.reshape(-1, x.shape[-1])
                self.sums.append(flat.sum(0).double())
                self.rows.append(flat.shape[0])
                self.absmax.append(flat.abs().amax(0))
        else:
            self.histograms.append(torch.histc(x, self.bins, -self.bound, self.bound).double())

    def stats(self) -> TensorStats:
        sums = ((torch.stack(self.sums), torch.tensor(self.rows, dtype=torch.float64), torch.stack(self.absmax))
                if self.channel_sums else (None, None, None))
        return TensorStats(torch.tensor(self.mins), torch.tensor(self.maxs), float(self.bound),
                           torch.stack(self.histograms), *sums)


@torch.no_grad()
def collect_statistics(model: nn.Module, skeleton: Qconf, calib_batches: list[Batch], bins: int,
                       track: Track = lambda batches, what: batches) -> dict[int, TensorStats]:
    """Statistics of every tensor that any recipe could put in int8, keyed by qconf tensor id.
    `bins` is per side: the histograms have 2 * bins bins, as fine on one side as IPEX's over [min, max]."""
    sim = simulate(model, skeleton.with_recipe(QuantConfig(ops=list(OP_KINDS)))).eval()
    for module in sim.modules():
        if isinstance(module, FakeQuantizer):
            module.enabled = False
    recorders: dict[int, _Recorder] = {}
    linear_inputs = {op.info["input_tensor_infos"][index]["id"] for op, index, _ in sim.activation_sites
                     if op.kind == "linear"}
    for op, index, quantizer in sim.activation_sites:
        tensor_id = op.info["input_tensor_infos"][index]["id"]
        if tensor_id not in recorders:
            quantizer.observer = recorders[tensor_id] = _Recorder(2 * bins, channel_sums=tensor_id in linear_inputs)
    for batch in track(calib_batches, "ranges"):
        sim(*batch)
    for recorder in recorders.values():
        recorder.bound = max(max(-min(recorder.mins), max(recorder.maxs)), 1e-8)
    for batch in track(calib_batches, "histograms"):
        sim(*batch)
    return {tensor_id: recorder.stats() for tensor_id, recorder in recorders.items()}
