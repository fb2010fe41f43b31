"""report.json (everything measured) and report.md (the same, readable)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from qat.atomic import write_json, write_text

VARIANT_TITLES = {"fp32": "fp32", "ptq_fakequant": "PTQ int8 (fake-quant)", "ptq_int8": "PTQ int8 (exported IPEX)"}


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_markdown(report: dict[str, Any]) -> str:
    variants: dict[str, dict[str, float]] = report["variants"]
    columns = list(dict.fromkeys(k for metrics in variants.values() for k in metrics))
    lines = [f"# qat run: {report['model']}", "",
             f"Recipe: int8 ops {report['recipe']['ops']}, skip {report['recipe']['skip'] or 'none'}; "
             f"calibration {report['calibration']['algorithm']} on {report['calibration']['texts']} texts.", "",
             "| variant | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, metrics in variants.items():
        lines.append(f"| {VARIANT_TITLES.get(name, name)} | " + " | ".join(_fmt(metrics.get(c, "")) for c in columns) + " |")
    parity = report["parity"]
    lines += ["", "Cosine and EMD compare with fp32 (pooled embeddings on the held-out texts; EMD between"
              " similarity-score distributions). Spearman and MAP are x100.", "",
              f"Parity, exported int8 vs fake-quant: cosine mean {parity['cosine_mean']:.6f}, min {parity['cosine_min']:.6f}, "
              f"max |diff| {parity['max_abs_diff']:.2e} (thresholds {parity['thresholds']}): "
              f"{'passed' if parity['passed'] else 'FAILED'}.",
              f"Int8 ops in the exported graph: {report['export']['graph_int8_ops']}. LayerNorm, GELU and softmax stay"
              " fp32: IPEX has no int8 kernel for them.",
              f"Weights per channel in {report['export']['weight_range']} (CPU has VNNI: {report['export']['cpu_has_vnni']};"
              " without VNNI, IPEX's int8 GEMM sums u8 x s8 pairs in saturating int16, so 7-bit weights avoid overflow).",
              f"Recovery training: {report['qat']}.", "",
              f"Artifacts: PTQ `{report['artifacts']['ptq']}`, exported `{report['artifacts']['int8_model']}`.",
              f"Timings (s): {', '.join(f'{k} {v:.1f}' for k, v in report['seconds'].items())}.", ""]
    return "\n".join(lines)


def write_report(run_dir: Path, report: dict[str, Any]) -> Path:
    write_json(run_dir / "report.json", report)
    path = run_dir / "report.md"
    write_text(path, render_markdown(report))
    return path
