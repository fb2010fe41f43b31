"""How fast each export runs on this CPU against the fp32 model: throughput at batch 32 and latency at batch 1,
128 tokens (or the model's max length if shorter), every model timed once per round, round after round (interleaved), so that a shared machine's drift
hits all alike. A short measurement for the report; scripts/bench.py and scripts/bench_peers.py measure longer."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from qat.base.timing import cpu_name, interleaved_rounds
from qat.evaluation.metrics import Forward
from qat.exporters.loader import runtime_forward
from qat.exporters.signature import ExportSignature

BATCHES = {"throughput": 32, "latency": 1}
LENGTH = 128   # tokens, or the model's max length if shorter
FP32 = "fp32"
# Untimed calls before each round's timed ones: IPEX's TorchScript profiles its first call and compiles the fused
# kernels for a shape on its second (about 6x a fused call at batch 32 on an AMX Xeon), so one warm-up call left
# the compile inside the first round, and the median of 2 rounds reported a third of the export's speed.
WARMUP_CALLS = 2


@dataclass
class SpeedRecord:
    """Seconds per call by model ('fp32' and each runtime) and measure ('throughput': batch 32, 'latency': batch
    1), at `length` tokens; the CPU it ran on; the rounds."""

    cpu: str
    rounds: int
    length: int
    seconds: dict[str, dict[str, float]]    # model -> measure -> median seconds per call
    errors: dict[str, str]                  # model -> why it could not be timed

    def per_second(self, model: str) -> float:
        """Sequences per second at batch 32."""
        return BATCHES["throughput"] / self.seconds[model]["throughput"]

    def latency_ms(self, model: str) -> float:
        return 1000.0 * self.seconds[model]["latency"]


def random_inputs(batch: int, length: int, vocab: int, signature: ExportSignature) -> tuple[torch.Tensor, ...]:
    """Random tokens of the export's signature (segment 1 on the second half where it reads pairs)."""
    generator = torch.Generator().manual_seed(0)
    tensors = {"input_ids": torch.randint(1000, vocab, (batch, length), generator=generator),
               "attention_mask": torch.ones(batch, length, dtype=torch.long),
               "token_type_ids": (torch.arange(length) >= length // 2).long().expand(batch, length)}
    return tuple(tensors[name] for name in signature.inputs)


def measure_speed(fp32: Forward, exports: dict[str, Path], signature: ExportSignature, vocab: int, max_length: int,
                  rounds: int) -> SpeedRecord:
    """fp32 and each runtime's export (runtime -> model file) timed side by side at batch 32 and batch 1."""
    length = min(LENGTH, max_length)
    models = {FP32: fp32, **{runtime: runtime_forward(path, runtime, signature) for runtime, path in exports.items()}}
    seconds: dict[str, dict[str, float]] = {name: {} for name in models}
    errors: dict[str, str] = {}
    with torch.inference_mode():
        for measure, batch in BATCHES.items():
            inputs = random_inputs(batch, length, vocab, signature)
            calls = {name: (lambda model=model: model(*inputs)) for name, model in models.items() if name not in errors}
            for name, timed in interleaved_rounds(calls, rounds, warmup=WARMUP_CALLS, repeats=1 if batch > 1 else 5).items():
                if timed.error:
                    errors[name] = timed.error
                else:
                    seconds[name][measure] = timed.seconds
    return SpeedRecord(cpu_name(), rounds, length, {k: v for k, v in seconds.items() if k not in errors}, errors)
