"""Wall-clock medians for the benchmark scripts, and variants timed side by side in interleaved rounds."""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

# What decides where torch's OpenMP threads run. They are read once, when the OpenMP library loads, so a
# benchmark can only record them; IPEX's launcher (`ipexrun`) sets OMP_PROC_BIND and OMP_SCHEDULE.
OPENMP_SETTINGS = ("OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES", "OMP_SCHEDULE", "OMP_WAIT_POLICY",
                   "GOMP_CPU_AFFINITY", "KMP_AFFINITY", "KMP_BLOCKTIME", "LD_PRELOAD")


def cpu_info() -> str:
    try:
        return open("/proc/cpuinfo").read()
    except OSError:
        return ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (avx512_vnni, avx512_bf16, amx_int8, ...); empty where /proc/cpuinfo is missing."""
    return set(next((line.split(":", 1)[1].split() for line in cpu_info().splitlines() if line.startswith("flags")), []))


def cpu_name() -> str:
    """The CPU's model name and whether it has VNNI / native bf16 (what decides int8 and bf16 speed)."""
    name = next((line.split(":", 1)[1].strip() for line in cpu_info().splitlines() if line.startswith("model name")),
                "unknown CPU")
    extras = [flag for flag in ("avx512_vnni", "avx512_bf16", "amx_int8") if flag in cpu_flags()]
    return f"{name} ({', '.join(extras) if extras else 'no VNNI'}), {os.cpu_count()} cores"


def openmp_settings() -> dict[str, str]:
    """The OpenMP placement settings this process started with (unset ones left out), for a benchmark's record."""
    return {name: os.environ[name] for name in OPENMP_SETTINGS if name in os.environ}


def median_seconds(run: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median duration of `repeats` calls after `warmup` untimed ones (JIT profiling, caches, allocator)."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass
class Timed:
    """One variant's medians, one per round, or the error that stopped it (a kernel this CPU cannot run is
    reported, never hidden)."""

    rounds: list[float]
    error: str = ""

    @property
    def seconds(self) -> float:
        return statistics.median(self.rounds)

    def speedup_over(self, other: Timed) -> Speedup:
        """How many times faster than `other`, round by round: both ran within one round, so a shared machine's
        drift between rounds cancels in each ratio, which a ratio of the two medians does not guarantee."""
        ratios = sorted(theirs / ours for ours, theirs in zip(self.rounds, other.rounds))
        return Speedup(statistics.median(ratios), ratios[0], ratios[-1])


@dataclass
class Speedup:
    """The median of the per-round ratios and their range."""

    median: float
    low: float
    high: float


def first_error_line(error: Exception) -> str:
    lines = str(error).splitlines() or [type(error).__name__]
    return next((line for line in lines if line.startswith("RuntimeError")), lines[0])


def interleaved_rounds(calls: dict[str, Callable[[], object]], rounds: int, warmup: int, repeats: int) -> dict[str, Timed]:
    """Every variant timed once per round, round after round, so that a shared machine's slow drift hits all
    variants alike; the median of the rounds is the figure."""
    timed = {name: Timed([]) for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            if timed[name].error:
                continue
            try:
                timed[name].rounds.append(median_seconds(call, warmup, repeats))
            except RuntimeError as error:
                timed[name].error = first_error_line(error)
    return timed
