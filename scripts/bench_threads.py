"""Which thread placement to serve an export with: OpenMP settings timed against each other on this CPU.

OpenMP reads its settings once, when the library loads, so they cannot be switched inside one process. Each
setting runs in a fresh process, the settings take turns round after round (a shared machine's slow drift hits
them alike), and each figure is the median over the rounds of each process's median call time.

    .venv/bin/python scripts/bench_threads.py --export outputs/runs/<run>/export/ptq --rounds 10
    .venv/bin/python scripts/bench_threads.py --export <folder> --settings "" "OMP_PROC_BIND=close OMP_PLACES=cores"

The default settings are none (the process as started), IPEX's launcher's (`ipexrun`: OMP_PROC_BIND=CLOSE,
OMP_SCHEDULE=STATIC) and one thread per core (OMP_PROC_BIND=close, OMP_PLACES=cores). Prints a table and writes
--out (default <export>/bench_threads.json).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

SHAPES = [(1, 128), (32, 128)]
DEFAULT_SETTINGS = ["", "OMP_PROC_BIND=CLOSE OMP_SCHEDULE=STATIC", "OMP_PROC_BIND=close OMP_PLACES=cores"]


def parse_setting(setting: str) -> dict[str, str]:
    """'NAME=value NAME=value' -> environment variables; an empty string is the process as started."""
    pairs = [item.partition("=") for item in setting.split()]
    bad = [name for name, equals, _ in pairs if not equals or not name]
    if bad:
        sys.exit(f"error: setting {setting!r} has {bad[0]!r} without a value; expected NAME=value NAME=value")
    return {name: value for name, _, value in pairs}


def child(export: Path, warmup: int, repeats: int) -> None:
    """Time the export at every shape in this process and print one JSON line: shape -> median seconds."""
    warnings.filterwarnings("ignore")
    import torch
    from bench import inputs  # scripts/bench.py
    from transformers import AutoTokenizer

    from qat.exporters.folder import read_export_info
    from qat.exporters.ipex import MODEL_FILE, load_exported
    from qat.base.timing import median_seconds

    module = load_exported(export / MODEL_FILE)
    vocab = AutoTokenizer.from_pretrained(export).vocab_size   # an export folder carries its tokenizer
    names = read_export_info(export).input_names
    medians = {}
    with torch.no_grad():
        for batch, seq in SHAPES:
            shape = inputs(batch, seq, vocab, names)
            medians[f"{batch}x{seq}"] = median_seconds(lambda: module(*shape), warmup, repeats * (4 if batch == 1 else 1))
    print(json.dumps(medians))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, required=True, help="an export folder (export/ptq or export/qat of a run)")
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS,
                        help="OpenMP settings to compare, each 'NAME=value ...' ('' = as started); the first is the baseline")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (args.export / "model_int8.pt").is_file():
        sys.exit(f"error: --export {args.export} has no model_int8.pt; expected an export folder of qat")
    if args.child:
        child(args.export, args.warmup, args.repeats)
        return
    environments = {setting: parse_setting(setting) for setting in args.settings}
    rounds: dict[str, list[dict[str, float]]] = {setting: [] for setting in environments}
    for round_index in range(args.rounds):
        for setting, variables in environments.items():
            done = subprocess.run([sys.executable, __file__, "--child", "--export", str(args.export), "--warmup",
                                   str(args.warmup), "--repeats", str(args.repeats)], env={**os.environ, **variables},
                                  capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"error: the run with {setting or 'no setting'!r} failed: {done.stderr.strip().splitlines()[-1]}")
            rounds[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)

    baseline = args.settings[0]
    rows = []
    for setting, measured in rounds.items():
        row = {"setting": setting or "(as started)"}
        for batch, seq in SHAPES:
            shape = f"{batch}x{seq}"
            seconds = [m[shape] for m in measured]
            median = statistics.median(seconds)
            row[shape] = {"median_ms": 1000 * median, "range_ms": [1000 * min(seconds), 1000 * max(seconds)],
                          "sequences_per_s": batch / median,
                          "x_baseline": statistics.median(m[shape] for m in rounds[baseline]) / median}
        rows.append(row)
    print("| setting | b1x128 ms (range) | x baseline | b32x128 seq/s | x baseline |")
    print("|---|---|---|---|---|")
    for row in rows:
        one, many = row["1x128"], row["32x128"]
        print(f"| {row['setting']} | {one['median_ms']:.2f} ({one['range_ms'][0]:.2f}-{one['range_ms'][1]:.2f}) | "
              f"{one['x_baseline']:.2f} | {many['sequences_per_s']:.1f} | {many['x_baseline']:.2f} |")
    out = args.out or args.export / "bench_threads.json"
    from qat.quant.numerics import cpu_has_vnni

    out.write_text(json.dumps({"export": str(args.export), "cpu_has_vnni": cpu_has_vnni(), "rounds": args.rounds, "warmup": args.warmup,
                               "repeats": args.repeats, "rows": rows, "per_round_seconds": rounds}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
