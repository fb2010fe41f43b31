"""report.json (everything measured) and report.md (the same, readable)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from qat.atomic import write_json, write_text

VARIANT_TITLES = {
    "fp32": "fp32", "ptq_fakequant": "PTQ int8 (fake-quant)", "ptq_int8": "PTQ int8 (exported IPEX)",
    "qat_fakequant": "QAT int8 (fake-quant)", "qat_int8": "QAT int8 (exported IPEX)",
}


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _recovery_line(report: dict[str, Any]) -> str:
    decision, training = report["recovery"], report["training"]
    head = (f"PTQ loss on dev {decision['metric']}: {decision['ptq_loss']:.4%} relative "
            f"(fp32 {decision['fp32']:.4f}, PTQ {decision['ptq']:.4f}; threshold {decision['threshold']:.2%}).")
    if training is None:
        return head + (" No training needed: the PTQ model is the result." if not decision["force"] else "")
    return (head + f" Trained {training['step']} steps with the {training['teacher']} teacher on "
            f"{training['processes']} process(es) in {training['seconds']:.0f} s ({training['seconds_per_step']:.2f} s/step); "
            f"best dev {decision['metric']} {training['best_metric']:.4f} at step {training['best_step']}.")


def render_markdown(report: dict[str, Any]) -> str:
    variants: dict[str, dict[str, float]] = report["variants"]
    columns = list(dict.fromkeys(k for metrics in variants.values() for k in metrics))
    lines = [f"# qat run: {report['model']}", "",
             f"Recipe: int8 ops {report['recipe']['ops']}, skip {report['recipe']['skip'] or 'none'}, weights per "
             f"channel in {report['weight_range']}; " + (
                 f"calibration {report['calibration']['algorithm']} on {report['calibration']['texts']} texts"
                 + (", bias correction" if report["calibration"]["bias_correction"] else "")
                 + (f", SmoothQuant alpha {report['smoothquant']['alpha']}" if report["smoothquant"]["enabled"] else "")
                 + "." if report["ptq_source"] == "calibration" else f"scales restored from {report['ptq_source']}."),
             "", _recovery_line(report), "",
             "| variant | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, metrics in variants.items():
        lines.append(f"| {VARIANT_TITLES.get(name, name)} | " + " | ".join(_fmt(metrics.get(c, "")) for c in columns) + " |")
    lines += ["", "Cosine and EMD compare with fp32 (pooled embeddings on the held-out texts; EMD between"
              " similarity-score distributions). Spearman and MAP are x100.", ""]
    for name, export in report["exports"].items():
        p = export["parity"]
        fidelity, floor = p["fidelity_to_fp32"], p["rounding_floor"]
        lines.append(f"- {name.upper()} export `{export['path']}`: int8 ops in the frozen graph {export['graph_int8_ops']}; "
                     f"parity with its fake-quant model ({'passed' if p['passed'] else 'FAILED'}): unfused graph max |diff| "
                     f"{p['unfused_max_abs_diff']:.2e}; fused cosine mean {p['cosine_mean']:.6f}, min {p['cosine_min']:.6f} "
                     f"(the simulation against itself with 1-ulp noise on Linear outputs: mean {floor['cosine_mean']:.6f}, "
                     f"min {floor['cosine_min']:.6f}); mean cosine to fp32: fake-quant {fidelity['fakequant']:.6f}, "
                     f"exported {fidelity['int8']:.6f}.")
    lines += ["", f"Final model: {report['final'].upper()} (`{report['exports'][report['final']]['path']}`).",
              "LayerNorm, GELU and softmax stay fp32: IPEX has no int8 kernel for them.",
              f"CPU has VNNI: {report['cpu_has_vnni']} (without VNNI, IPEX's int8 GEMM sums u8 x s8 pairs in saturating"
              " int16, so weights use 7 bits).",
              f"Timings (s): {', '.join(f'{k} {v:.1f}' for k, v in report['seconds'].items())}.", ""]
    return "\n".join(lines)


def write_report(run_dir: Path, report: dict[str, Any]) -> Path:
    write_json(run_dir / "report.json", report)
    path = run_dir / "report.md"
    write_text(path, render_markdown(report))
    return path
