"""Activation range algorithms on collected statistics, and the quint8 qparams of a range.

minmax / moving_average: torch's MinMaxObserver and MovingAverageMinMaxObserver, replayed on per-batch min/max.
histogram: torch's HistogramObserver L2 search (IPEX's default observer), run on our histogram.
percentile: the two-sided percentile of the histogram. entropy: TensorRT's KL-divergence threshold on |x|.
mse: the scaled-down min/max whose quantization error on the histogram is smallest (as modelopt's MSE calibrator).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import entropy
from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver

from qat.quant.stats import TensorStats

ACTIVATION_DTYPE = torch.quint8
ENTROPY_LEVELS = 128   # TensorRT: the 8-bit magnitude levels of a symmetric int8 range
MSE_GRID = 100


@dataclass(frozen=True)
class RangeOptions:
    """The parameters some algorithms read (each reads at most one of them)."""

    percentile: float = 99.99
    averaging_constant: float = 0.01
    symmetric: bool = False


def activation_qparams(lo: float, hi: float, symmetric: bool) -> tuple[float, int]:
    """quint8 scale and zero point of [lo, hi] (extended to include 0), as torch's observers compute them."""
    qscheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    observer = MinMaxObserver(dtype=ACTIVATION_DTYPE, qscheme=qscheme)
    scale, zero_point = observer._calculate_qparams(torch.tensor([lo]), torch.tensor([hi]))
    return scale.item(), int(zero_point.item())


def _min_max(stats: TensorStats, batches: int, options: RangeOptions) -> tuple[float, float]:
    return stats.min_max(batches)


def _edges(stats: TensorStats) -> torch.Tensor:
    return torch.linspace(-stats.bound, stats.bound, stats.histograms.shape[1] + 1, dtype=torch.float64)


def _moving_average(stats: TensorStats, batches: int, options: RangeOptions) -> tuple[float, float]:
    constant = options.averaging_constant
    lo, hi = stats.batch_min[0].item(), stats.batch_max[0].item()
    for b in range(1, batches):
        lo += constant * (stats.batch_min[b].item() - lo)
        hi += constant * (stats.batch_max[b].item() - hi)
    return lo, hi


def _histogram_l2(stats: TensorStats, batches: int, options: RangeOptions) -> tuple[float, float]:
    """torch's HistogramObserver search on our histogram cropped to the observed [min, max]."""
    lo, hi = stats.min_max(batches)
    hist, edges = stats.histogram(batches), _edges(stats)
    width = edges[1] - edges[0]
    first = int(((lo + stats.bound) / width).floor().clamp(0, len(hist) - 1))
    last = int(((hi + stats.bound) / width).ceil().clamp(first + 1, len(hist)))
    observer = HistogramObserver(bins=last - first, dtype=ACTIVATION_DTYPE)
    observer.histogram = hist[first:last].float()
    observer.min_val, observer.max_val = edges[first].float().reshape(()), edges[last].float().reshape(())
    new_min, new_max = observer._non_linear_param_search()
    return max(new_min.item(), lo), min(new_max.item(), hi)


def _percentile(stats: TensorStats, batches: int, options: RangeOptions) -> tuple[float, float]:
    percentile = options.percentile
    lo, hi = stats.min_max(batches)
    if percentile >= 100.0:
        return lo, hi
    hist, edges = stats.histogram(batches), _edges(stats)
    cdf = hist.cumsum(0) / hist.sum()
    tail = 1.0 - percentile / 100.0
    low_edge = edges[int(torch.searchsorted(cdf, torch.tensor(tail, dtype=cdf.dtype)))].item()
    high_edge = edges[int(torch.searchsorted(cdf, torch.tensor(1.0 - tail, dtype=cdf.dtype))) + 1].item()
    return max(lo, low_edge), min(hi, high_edge)


def _entropy(stats: TensorStats, batches: int, options: RangeOptions) -> tuple[float, float]:
    """TensorRT's calibration: the |x| threshold whose clipped, 128-level histogram is closest in KL divergence."""
    lo, hi = stats.min_max(batches)
    hist = stats.histogram(batches).numpy()
    half = len(hist) // 2
    magnitude = hist[half:] + hist[:half][::-1]
    width = stats.bound / half
    used = int(np.nonzero(magnitude)[0].max()) + 1 if magnitude.any() else 1
    if used <= ENTROPY_LEVELS:
        return lo, hi
    best, best_kl = used, np.inf
    for i in range(ENTROPY_LEVELS, used + 1, max(1, (used - ENTROPY_LEVELS) // 256)):
        reference = magnitude[:i].copy()
        reference[-1] += magnitude[i:].sum()
        edges = np.linspace(0, i, ENTROPY_LEVELS + 1).astype(int)
        nonzero = magnitude[:i] > 0
        sums = np.add.reduceat(magnitude[:i], edges[:-1])
        counts = np.add.reduceat(nonzero.astype(float), edges[:-1])
        expanded = np.repeat(sums / np.maximum(counts, 1), np.diff(edges)) * nonzero
        candidate = np.where((reference > 0) & (expanded == 0), 1e-12, expanded)
        kl = entropy(reference, candidate)
        if kl < best_kl:
            best, best_kl = i, kl
    threshold = best * width
    return max(lo, -threshold), min(hi, threshold)


def _mse(stats: TensorStats, batches: int, options: RangeOptions) -> tuple[float, float]:
    symmetric = options.symmetric
    lo, hi = stats.min_max(batches)
    hist, edges = stats.histogram(batches).float(), _edges(stats).float()
    centers = (edges[:-1] + edges[1:]) / 2
    qmin, qmax = 0, 255
    best, best_error = (lo, hi), float("inf")
    for factor in np.linspace(1.0 / MSE_GRID, 1.0, MSE_GRID):
        scale, zero_point = activation_qparams(lo * factor, hi * factor, symmetric)
        quantized = torch.fake_quantize_per_tensor_affine(centers, scale, zero_point, qmin, qmax)
        error = (hist * (centers - quantized) ** 2).sum().item()
        if error < best_error:
            best, best_error = (lo * factor, hi * factor), error
    return best


# Each of qat.quant.config.CALIB_ALGORITHMS (tests/test_config.py checks that the two agree).
RANGE_ALGORITHMS: dict[str, Callable[[TensorStats, int, RangeOptions], tuple[float, float]]] = {
    "minmax": _min_max,
    "moving_average": _moving_average,
    "histogram": _histogram_l2,
    "percentile": _percentile,
    "entropy": _entropy,
    "mse": _mse,
}


def activation_range(stats: TensorStats, batches: int, algorithm: str, percentile: float = 99.99,
                     averaging_constant: float = 0.01, symmetric: bool = False) -> tuple[float, float]:
    """The [lo, hi] range `algorithm` picks from the first `batches` calibration batches."""
    return RANGE_ALGORITHMS[algorithm](stats, batches, RangeOptions(percentile, averaging_constant, symmetric))
