"""qat's int8 exports against every int8 runtime a user could pick instead, on this CPU.

Every peer is built here from the run's own fp32 model and calibration texts: ONNX Runtime fp32, dynamic int8
(per-channel weights) and static QDQ int8 (MinMax); OpenVINO fp32 and int8 through NNCF (transformer preset:
SmoothQuant and fast bias correction); torch PT2E + Inductor int8 (X86InductorQuantizer). Weights are 7-bit where
the CPU has no VNNI (the int16 saturation of u8 x s8 products), as in qat's own recipe. Each int8 peer is checked
to run int8 (operators counted in the graph its runtime executes); one that does not is an error, not a row.
Then all are scored on the same texts (batches of 32 padded to 128 tokens: cosine to fp32 embeddings and, with
STS-B at hand, test Spearman) and timed side by side in one process (interleaved rounds, median). Each row is
also compared with one peer (--against, default NNCF's OpenVINO int8) round by round: the median of the per-round
speedups, with their range.

    .venv/bin/pip install -e '.[peers]'       # nncf (onnxruntime, onnx, openvino come with the set-up)
    .venv/bin/python scripts/bench_peers.py --run outputs/runs/<run> [--export ptq=<folder> qat=<folder>]

Run it without OpenMP binding (OMP_PROC_BIND, GOMP_CPU_AFFINITY, `ipexrun`): it binds the main thread to one core,
and the threads ONNX Runtime and OpenVINO start from it inherit that one core (measured: 2.8x and 1.9x slower).
Thread placement for the IPEX export alone is compared by scripts/bench_threads.py, one process per setting.

Prints a table and writes --out (default <run>/bench_peers.json).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
from bench import inputs, trace  # noqa: E402  (scripts/bench.py)
from bench_encode import fixed_padding  # noqa: E402

from qat.base.versions import library_versions  # noqa: E402
from qat.ptq.artifact import parse_metadata  # noqa: E402
from qat.config import ModelConfig, SourceConfig  # noqa: E402
from qat.data import PairSet, load_task, load_texts  # noqa: E402
from qat.evaluation.metrics import EvalData, Table, evaluate  # noqa: E402
from qat.exporters.folder import INFO_FILE, read_export_info  # noqa: E402
from qat.exporters.ipex import load_exported  # noqa: E402
from qat.exporters.onnx import INTEGER_KERNELS  # noqa: E402
from qat.exporters.openvino import INT8_PRECISIONS, compiled_gemm_precisions  # noqa: E402
from qat.load import Encoder, batches, load_encoder  # noqa: E402
from qat.quant.numerics import cpu_has_vnni  # noqa: E402
from qat.base.timing import interleaved_rounds, openmp_settings  # noqa: E402

SHAPES = [(1, 128), (32, 128)]
NNCF = "OpenVINO int8 (NNCF)"   # the same runtime as qat's OpenVINO export, quantized by its own PTQ
Run = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # (input_ids, attention_mask) -> last hidden state


@dataclass
class Peer:
    """A runtime ready to call, and the int8 operators counted in what it really executes (empty for fp32)."""

    name: str
    run: Run
    int8_ops: dict[str, int]
    build_seconds: float


class HiddenStates(torch.nn.Module):
    """The plain Hugging Face call (0/1 mask): what a user exports to another runtime."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def numpy_feed(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, np.ndarray]:
    return {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}


def export_onnx(module: torch.nn.Module, path: Path) -> Path:
    example = inputs(2, 16, 2000)
    torch.onnx.export(module, example, str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                    "last_hidden_state": {0: "batch", 1: "seq"}})
    return path


def ort_session(path: Path, threads: int, workdir: Path) -> tuple[Run, dict[str, int]]:
    """An ONNX Runtime session, and the int8 operators of the graph it optimised and runs."""
    import onnx
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    optimized = workdir / f"{path.stem}.optimized.onnx"
    options.optimized_model_filepath = str(optimized)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)
    return (lambda ids, mask: torch.from_numpy(session.run(None, numpy_feed(ids, mask))[0])), \
        {op: n for op, n in ops.items() if op in INTEGER_KERNELS}


def calibration_feeds(encoder: Encoder, texts: list[str], batch_size: int = 16) -> list[dict[str, np.ndarray]]:
    """The calibration texts in qat's own batches (padded to each batch's longest text), as runtime feeds."""
    return [numpy_feed(*batch[:2]) for batch in batches(encoder, texts, batch_size)]


def embed_fixed(run: Run, encoder: Encoder, texts: list[str]) -> Table:
    """Pooled embeddings from batches of 32 x 128 tokens, the last filled up: every peer sees the same inputs,
    and Inductor compiles once."""
    return dict(zip(texts, fixed_padding(run, encoder.tokenizer, encoder.pooling, texts, 32, 128, fill=True)))


def ort_dynamic(onnx_path: Path, threads: int, workdir: Path, reduce_range: bool) -> tuple[Run, dict[str, int]]:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    out = workdir / "ort_dynamic.onnx"
    quantize_dynamic(str(onnx_path), str(out), per_channel=True, reduce_range=reduce_range, weight_type=QuantType.QInt8)
    return ort_session(out, threads, workdir)


def ort_static(onnx_path: Path, threads: int, workdir: Path, reduce_range: bool,
               feeds: list[dict[str, np.ndarray]]) -> tuple[Run, dict[str, int]]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    prepared, out = workdir / "ort_prepared.onnx", workdir / "ort_static.onnx"
    # Symbolic shape inference cannot follow the exported attention mask; ONNX's own shape inference suffices.
    quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
    # MatMuls only (the Linears and both attention products, qat's default recipe): with ORT's default operator
    # list the adds are quantized too, and MinMax ranges over the attention mask's -3.4e38 collapse the model.
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    op_types_to_quantize=["MatMul"],
                    reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return ort_session(out, threads, workdir)


OPENVINO_HINT = {"value": "f32"}   # --openvino-hint: f32, or 'default' (the CPU's own: bf16 where it has bf16)


def openvino_compiled(model, threads: int) -> tuple[Run, dict[str, int]]:
    """A compiled OpenVINO model (by default at fp32 inference precision: a bf16-capable CPU would otherwise run the
    fp32 parts in bf16; --openvino-hint default measures that), and the int8 layers of its runtime graph."""
    import openvino as ov
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if OPENVINO_HINT["value"] != "default":
        config["INFERENCE_PRECISION_HINT"] = OPENVINO_HINT["value"]
    compiled = ov.Core().compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    int8: Counter[str] = Counter()
    for key, count in compiled_gemm_precisions(compiled).items():
        layer, precision = key.split(":")
        if precision in INT8_PRECISIONS:
            int8[layer] += count

    def run(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(request.infer(numpy_feed(ids, mask))[0].copy())
    return run, dict(int8)


def openvino_nncf(onnx_path: Path, threads: int, feeds: list[dict[str, np.ndarray]], int8: bool) -> tuple[Run, dict[str, int]]:
    import openvino as ov
    model = ov.Core().read_model(str(onnx_path))
    if int8:
        import nncf
        model = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds) * 16)
    return openvino_compiled(model, threads)


def pt2e_inductor(module: torch.nn.Module, feeds: list[dict[str, np.ndarray]]) -> tuple[Run, dict[str, int]]:
    """torch's own int8 path: export, X86InductorQuantizer, calibrate, convert, compile with freezing."""
    import torch._inductor.config as inductor_config
    import torch.ao.quantization.quantizer.x86_inductor_quantizer as xiq
    from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e
    batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("seq", min=2, max=512)
    # strict: torch 2.8's X86InductorQuantizer finds Linears by their source partitions, which only strict export
    # records (non-strict export leaves every op unannotated: nothing would be quantized).
    exported = torch.export.export(module, inputs(2, 16, 2000), dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
                                   strict=True)
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported.module(), quantizer)
    with torch.no_grad():
        for feed in feeds:
            prepared(*(torch.from_numpy(v) for v in feed.values()))
    converted = convert_pt2e(prepared)
    torch.ao.quantization.move_exported_model_to_eval(converted)
    ops = Counter(str(node.target).split(".")[1] for node in converted.graph.nodes
                  if node.op == "call_function" and "quantized_decomposed" in str(node.target)
                  and "dequantize" not in str(node.target))
    inductor_config.freezing = True
    # Static shapes (one compilation per shape): with dynamic shapes Inductor's batch-1 call measured 30x slower.
    compiled = torch.compile(converted, dynamic=False)
    return (lambda ids, mask: compiled(ids, mask)), dict(ops)


def build(name: str, make: Callable[[], tuple[Run, dict[str, int]]], int8: bool) -> Peer:
    start = time.perf_counter()
    run, ops = make()
    if int8 and not ops:
        raise SystemExit(f"error: peer {name!r} runs no int8 operator; expected a quantized graph")
    peer = Peer(name, run, ops, time.perf_counter() - start)
    print(f"built {name} in {peer.build_seconds:.0f} s; int8 operators: {ops or 'none'}", flush=True)
    return peer


def peers(encoder: Encoder, calibration: list[str], threads: int, workdir: Path, reduce_range: bool,
          only: list[str] | None) -> list[Peer]:
    with contextlib.chdir(workdir):   # ONNX Runtime's pre-processing leaves temporary files in the working folder
        return _peers(encoder, calibration, threads, workdir, reduce_range, only)


def _peers(encoder: Encoder, calibration: list[str], threads: int, workdir: Path, reduce_range: bool,
           only: list[str] | None) -> list[Peer]:
    fp32 = HiddenStates(encoder.model).eval()
    onnx_path = export_onnx(fp32, workdir / "fp32.onnx")
    feeds = calibration_feeds(encoder, calibration)
    makers = {
        "ONNX Runtime fp32": (partial(ort_session, onnx_path, threads, workdir), False),
        "ONNX Runtime int8 dynamic": (partial(ort_dynamic, onnx_path, threads, workdir, reduce_range), True),
        "ONNX Runtime int8 static QDQ": (partial(ort_static, onnx_path, threads, workdir, reduce_range, feeds), True),
        "OpenVINO fp32": (partial(openvino_nncf, onnx_path, threads, feeds, False), False),
        NNCF: (partial(openvino_nncf, onnx_path, threads, feeds, True), True),
        "PT2E + Inductor int8": (partial(pt2e_inductor, fp32, feeds), True),
    }
    unknown = sorted(set(only or []) - set(makers))
    if unknown:
        raise SystemExit(f"error: --peers {unknown} names no peer; expected some of {list(makers)}")
    return [build(name, make, int8) for name, (make, int8) in makers.items() if only is None or name in only]


def qat_peers(encoder: Encoder, exports: list[str], threads: int, workdir: Path) -> list[Peer]:
    """fp32 TorchScript (the reference of every ratio) and every runtime of qat's export folders
    (LABEL=EXPORT_FOLDER): OpenVINO and ONNX Runtime compiled with the very settings of their peers below."""
    import openvino as ov

    module = HiddenStates(encoder.model).eval()
    found = [Peer("fp32 TorchScript", trace(module, inputs(2, 32, 2000), bf16=False), {}, 0.0)]
    for spec in exports:
        label, _, folder = spec.partition("=")
        if not label or not (Path(folder) / INFO_FILE).is_file():
            raise SystemExit(f"error: --export {spec!r} names no export folder; expected LABEL=EXPORT_FOLDER")
        info = read_export_info(Path(folder))
        for runtime, file in info.runtimes.items():
            path = Path(folder) / file
            if runtime == "ipex":
                loaded = load_exported(path)
                run, int8_ops = (lambda ids, mask, m=loaded: m(ids, mask)), info.int8_ops
            elif runtime == "openvino":
                run, int8_ops = openvino_compiled(ov.Core().read_model(str(path)), threads)
            else:
                run, int8_ops = ort_session(path, threads, workdir)
            found.append(Peer(f"qat {label} {runtime}", run, int8_ops, 0.0))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a run folder of python -m qat.train (its model, "
                        "calibration texts and exports)")
    parser.add_argument("--export", nargs="*", default=None, metavar="LABEL=EXPORT_FOLDER",
                        help="qat exports to measure (default: the run's export/ptq and export/qat)")
    parser.add_argument("--stsb", type=Path,
                        default=Path(os.environ.get("QAT_DATA_ROOT", "../shared/data")) / "stsb" / "test.tsv",
                        help="STS-B pairs for the accuracy column; without it, fidelity on the package's texts")
    parser.add_argument("--peers", nargs="*", help="only these peers (names as in the table)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--against", help="the peer every row is compared with, round by round (median of the "
                        "per-round speedups and their range: drift between rounds cancels in each ratio); default: "
                        f"{NNCF!r} where it is measured")
    parser.add_argument("--openvino-hint", choices=["f32", "default"], default="f32",
                        help="OpenVINO's inference precision for its non-int8 ops: f32, or the CPU's default (bf16 "
                        "where the CPU has it: what a user gets)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    OPENVINO_HINT["value"] = args.openvino_hint
    metadata_path = args.run / "ptq" / "metadata.json"
    if not metadata_path.is_file():
        sys.exit(f"error: run folder {args.run} has no ptq/metadata.json; expected a finished qat.train run")
    metadata = parse_metadata(json.loads(metadata_path.read_text()))
    if metadata.calibration_data is None or metadata.calibration_data.source is None:
        sys.exit(f"error: run {args.run} has no single calibration source recorded; expected a run calibrated by qat "
                 "on one source")
    bound = sorted(set(openmp_settings()) & {"OMP_PROC_BIND", "GOMP_CPU_AFFINITY", "KMP_AFFINITY"})
    if bound:
        print(f"warning: {', '.join(bound)} set: the peers' threads inherit the main thread's binding and run slower "
              "than they would alone; compare without it (see the docstring)", file=sys.stderr)
    torch.set_num_threads(args.threads)
    encoder = load_encoder(ModelConfig(metadata.model, metadata.pooling, metadata.max_length))
    if encoder.kind != "embedding":
        sys.exit(f"error: run {args.run} quantized a score model; expected an embedding model (peers pool hidden states)")
    calibration = load_texts(metadata.calibration_data.source)
    exports = args.export if args.export is not None else [
        f"{name}=" + str(args.run / "export" / name) for name in ("ptq", "qat")
        if (args.run / "export" / name / INFO_FILE).is_file()]
    reduce_range = not cpu_has_vnni()
    try:
        import nncf  # noqa: F401
        import onnxruntime  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as error:
        sys.exit(f"error: {error.name} is not installed; expected the peers' packages: pip install -e '.[peers]'")

    with tempfile.TemporaryDirectory() as tmp:
        everyone = qat_peers(encoder, exports, args.threads, Path(tmp)) + peers(encoder, calibration, args.threads, Path(tmp), reduce_range, args.peers)
        names = [p.name for p in everyone]
        if args.against is not None and args.against not in names:
            sys.exit(f"error: --against {args.against!r} names no measured peer; expected one of {names}")
        against = args.against or (NNCF if NNCF in names else None)
        if args.stsb.is_file():
            task = load_task(SourceConfig(kind="file", path=str(args.stsb), format="pairs"))
            assert isinstance(task, PairSet)
            data = EvalData(list(dict.fromkeys(task.sentence1 + task.sentence2)), {"stsb_test": task})
        else:
            data = EvalData(load_texts(SourceConfig(kind="builtin", path="guard")))
        texts = data.texts()
        reference = embed_fixed(HiddenStates(encoder.model), encoder, texts)
        scores = {peer.name: evaluate(embed_fixed(peer.run, encoder, texts), reference, data) for peer in everyone}
        rows = []
        for batch, seq in SHAPES:
            shape = inputs(batch, seq, encoder.tokenizer.vocab_size)
            with torch.no_grad():
                timed = interleaved_rounds({p.name: partial(p.run, *shape) for p in everyone},
                                           args.rounds, args.warmup, args.repeats)
            baseline = timed["fp32 TorchScript"].seconds
            reference = timed.get(against) if against else None
            rows += [{"peer": name, "batch": batch, "seq": seq, "error": t.error} if t.error else
                     {"peer": name, "batch": batch, "seq": seq, "median_ms": 1000 * t.seconds,
                      "sequences_per_s": batch / t.seconds, "x_fp32_torchscript": baseline / t.seconds,
                      "rounds_sequences_per_s": [batch / s for s in t.rounds],
                      "speedup_per_round": asdict(t.speedup_over(reference)) if reference and not reference.error else None}
                     for name, t in timed.items()]

    print_table(everyone, rows, scores, against)
    print(f"OpenMP settings: {openmp_settings() or 'none (torch threads not pinned)'}")
    out = args.out or args.run / "bench_peers.json"
    out.write_text(json.dumps({
        "run": str(args.run), "exports": exports, "against": against, "threads": args.threads, "openvino_hint": args.openvino_hint, "cpu_has_vnni": cpu_has_vnni(), "openmp": openmp_settings(),
        "weights_7bit": reduce_range, "rounds": args.rounds, "warmup": args.warmup, "repeats": args.repeats,
        "quality_texts": str(args.stsb) if args.stsb.is_file() else "builtin guard",
        "peers": {p.name: {"int8_ops": p.int8_ops, "build_seconds": p.build_seconds, **scores[p.name]} for p in everyone},
        "rows": rows, "versions": library_versions(("onnxruntime", "openvino", "nncf", "onnx")),
    }, indent=2))
    print(f"wrote {out}")


def print_table(everyone: list[Peer], rows: list[dict], scores: dict[str, dict[str, float]], against: str | None) -> None:
    by = {(r["peer"], r["batch"]): r for r in rows}
    versus = f" | x {against} per round (range)" if against else ""
    print(f"| peer | b32x128 seq/s (range) | x fp32 TS{versus} | b1x128 ms | x fp32 TS{versus} | STS-B test | cosine to fp32 "
          "| int8 ops |")
    print("|---" * (8 + 2 * bool(against)) + "|")
    for peer in everyone:
        cells = []
        for batch in (32, 1):
            row = by[(peer.name, batch)]
            if row.get("error"):
                cells += [f"failed: {row['error'][:60]}"] + ["-"] * (1 + bool(against))
                continue
            if batch == 32:
                spread = row["rounds_sequences_per_s"]
                cells += [f"{row['sequences_per_s']:.1f} ({min(spread):.1f}-{max(spread):.1f})", f"{row['x_fp32_torchscript']:.2f}"]
            else:
                cells += [f"{row['median_ms']:.1f}", f"{row['x_fp32_torchscript']:.2f}"]
            if against:
                speedup = row["speedup_per_round"]
                cells.append(f"{speedup['median']:.2f} ({speedup['low']:.2f}-{speedup['high']:.2f})" if speedup else "-")
        score = scores[peer.name]
        spearman = f"{score['stsb_test/spearman']:.2f}" if "stsb_test/spearman" in score else "-"
        ops = ", ".join(f"{op} {n}" for op, n in peer.int8_ops.items()) or "-"
        print(f"| {peer.name} | {' | '.join(cells)} | {spearman} | {score['cosine_mean']:.4f} | {ops} |")


if __name__ == "__main__":
    main()
