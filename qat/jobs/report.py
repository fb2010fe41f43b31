"""The run report: one typed record of what a recovery job did and measured, written as report.json (everything)
and report.md (the same, readable)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qat.base.atomic import write_json, write_text
from qat.evaluation.metrics import Metrics, ScoreBuckets, Stage, Variant, higher_is_better
from qat.exporters.verify import ExportRecord
from qat.quant.config import CalibConfig, EqualizeConfig, SmoothQuantConfig
from qat.recovery import RecoveryDecision, TrainingSummary
from qat.evaluation.significance import CONFIDENCE, RESAMPLES, Difference
from qat.ptq import AlphaChoice


@dataclass
class RecipeSummary:
    ops: list[str]      # the op kinds the PTQ qconf runs in int8
    skip: list[str]     # what stays fp32 (the user's skip list and any sensitive groups)


@dataclass
class CalibrationRecord(CalibConfig):
    texts: int = 0      # calibration texts used


@dataclass
class DataSummary:
    heldout_texts: int
    guard_texts: int
    tasks: list[str]
    calibration_texts: int
    train_texts: dict[str, int]   # distinct training texts per source


@dataclass
class RunReport:
    model: str
    run_dir: str
    ptq_source: str     # 'calibration', or the foreign qconf the PTQ model was restored from
    recipe: RecipeSummary
    calibration: CalibrationRecord
    smoothquant: SmoothQuantConfig
    smoothquant_choice: AlphaChoice | None   # how smoothquant.alpha=auto chose, if it did
    smoothquant_unsmoothed: list[str]        # int8 Linears SmoothQuant could not reach
    equalize: EqualizeConfig
    equalize_choice: AlphaChoice | None      # how equalize.alpha=auto chose, if it did ('off': left as it was)
    data: DataSummary
    recovery: RecoveryDecision
    training: TrainingSummary | None
    final: Stage        # the model the run delivers
    variants: dict[Variant, Metrics]
    differences: dict[str, dict[str, Difference]]   # comparison label -> task metric -> difference and interval
    buckets: ScoreBuckets
    exports: dict[Stage, ExportRecord]
    weight_range: tuple[int, int] | None
    cpu_has_vnni: bool
    seconds: dict[str, float]
    versions: dict[str, str]


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _recovery_line(report: RunReport) -> str:
    decision, training = report.recovery, report.training
    head = decision.describe()
    if training is None:
        return head + " The PTQ model is the result."
    stop = {"patience": " (stopped early: no better dev metric in train.patience evaluations)",
            "max_minutes": " (stopped at train.max_minutes)"}.get(training.stopped, "")
    lr = f"lr {training.lr:g}"
    if training.lr_choice is not None:
        choice = training.lr_choice
        trials = ", ".join(f"{value} {'guard fell' if t.metric is None else f'{t.metric:.4f}'}"
                           for value, t in choice.trials.items())
        lr += f" (auto: dev {choice.metric} after {choice.trial_steps} steps by lr: {trials})"
    task = (f" plus a task loss (weight {training.task_weight:g}, ranking {training.task_pairs} labelled pairs)"
            if training.task_pairs else "")
    return (head + f" Trained {training.step} steps{stop}, {lr}, with the {training.teacher} teacher{task} on "
            f"{training.processes} process(es) in {training.seconds:.0f} s ({training.seconds_per_step:.2f} s/step); "
            f"kept step {training.best_step}: dev {decision.metric} {training.best_metric:.4f} (level within "
            f"{training.dev_noise:.4f}: then held-out fidelity decides), no less faithful than PTQ.")


def _alpha(alpha: float, choice: AlphaChoice | None) -> str:
    if choice is None:
        return str(alpha)
    chosen = "off" if choice.alpha is None else choice.alpha
    if not choice.distances:   # an artifact written before the guard took part: scores are held-out distances
        scores = ", ".join(f"{candidate} {value:.5f}" for candidate, value in choice.scores.items())
        return f"{chosen} (auto: held-out {choice.objective} by alpha: {scores})"
    names = list(choice.distances)
    scores = ", ".join(f"{candidate} " + " / ".join(f"{choice.distances[name][candidate]:.5f}" for name in names)
                       for candidate in choice.scores)
    return f"{chosen} (auto: {' / '.join(names)} by alpha: {scores}; chosen: the smallest larger ratio to the best)"


def _equalize(report: RunReport) -> str:
    if not (report.equalize.enabled or report.equalize_choice):
        return ""
    return (f", attention equalization ({'/'.join(report.equalize.pairs)}) alpha "
            + _alpha(report.equalize.alpha, report.equalize_choice))


def _recipe_line(report: RunReport) -> str:
    calibration = report.calibration
    source = (f"calibration {calibration.algorithm} on {calibration.texts} texts"
              + (", bias correction" if calibration.bias_correction else "")
              + (f", SmoothQuant alpha {_alpha(report.smoothquant.alpha, report.smoothquant_choice)}"
                 if report.smoothquant.enabled else "")
              + (f" (not smoothed, no module input of their own: {', '.join(report.smoothquant_unsmoothed)})"
                 if report.smoothquant_unsmoothed else "")
              + _equalize(report)
              + "." if report.ptq_source == "calibration" else f"scales restored from {report.ptq_source}.")
    return (f"Recipe: int8 ops {report.recipe.ops}, skip {report.recipe.skip or 'none'}, weights per channel in "
            f"{report.weight_range}; " + source)


EVIDENCE = {"ipex": "int8 ops in the frozen graph", "openvino": "GEMM runtime precisions of the compiled model",
            "onnx": "ONNX Runtime integer kernels"}


def _export_lines(stage: Stage, export: ExportRecord) -> list[str]:
    """One line per runtime: where the model file is, the evidence that the runtime runs it in int8, its parity."""
    lines = []
    for runtime, made in export.runtimes.items():
        p = made.parity
        unfused = (f"unfused graph max |diff| {p.unfused_max_abs_diff:.2e}; fused "
                   if p.unfused_max_abs_diff is not None else "")
        lines.append(
            f"- {stage.upper()} {runtime} export `{made.path}`: {EVIDENCE[runtime]} {made.int8_ops}; parity with its "
            f"fake-quant model ({'passed' if p.passed else 'FAILED'}): {unfused}cosine mean {p.cosine_mean:.6f}, min "
            f"{p.cosine_min:.6f} (the simulation against itself with 1-ulp noise on Linear outputs: mean "
            f"{p.rounding_floor.cosine_mean:.6f}, min {p.rounding_floor.cosine_min:.6f}); mean cosine to fp32: "
            f"fake-quant {p.fidelity_to_fp32.fakequant:.6f}, exported {p.fidelity_to_fp32.int8:.6f}.")
    return lines


def variant_table(variants: dict[Variant, Metrics]) -> list[str]:
    """One markdown table of every set (held-out texts, the guard, each task set) and metric by row, every evaluated
    model by column, and what QAT changed against PTQ (both exported) where a run has both: a regression on any set
    shows in one place."""
    delta = Variant.PTQ_INT8 in variants and Variant.QAT_INT8 in variants
    header = ["set", "metric", *(variant.title for variant in variants)] + (["QAT - PTQ (exported)"] if delta else [])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for key in dict.fromkeys(k for metrics in variants.values() for k in metrics):
        set_name, _, metric = key.rpartition("/")
        cells = [set_name or "held-out", f"{metric} {'↑' if higher_is_better(key) else '↓'}",
                 *(_fmt(metrics.get(key, "")) for metrics in variants.values())]
        if delta:
            cells.append(f"{variants[Variant.QAT_INT8][key] - variants[Variant.PTQ_INT8][key]:+.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def difference_table(differences: dict[str, dict[str, Difference]]) -> list[str]:
    """Each task metric's differences between models (by comparison label), with their paired bootstrap
    intervals; empty when no comparison has a task set."""
    keys = list(dict.fromkeys(key for by_metric in differences.values() for key in by_metric))
    if not keys:
        return []
    lines = [f"Differences on the task sets, with {CONFIDENCE:.0%} paired bootstrap intervals over the set's pairs or "
             f"queries ({RESAMPLES} resamples): an interval that spans 0 is not evidence either way.", "",
             "| set | metric | " + " | ".join(differences) + " |", "|---" * (2 + len(differences)) + "|"]
    for key in keys:
        set_name, _, metric = key.rpartition("/")
        cells = [f"{d.value:+.2f} [{d.low:+.2f}, {d.high:+.2f}]" if (d := by_metric.get(key)) else ""
                 for by_metric in differences.values()]
        lines.append(f"| {set_name} | {metric} | " + " | ".join(cells) + " |")
    return lines


def bucket_table(buckets: ScoreBuckets) -> list[str]:
    """The held-out score distribution of every model, bucket by bucket (share of scores, %)."""
    header = ["score bucket", *(variant.title for variant in buckets.counts)]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    totals = {variant: max(sum(counts), 1) for variant, counts in buckets.counts.items()}
    for i, (low, high) in enumerate(zip(buckets.edges, buckets.edges[1:])):
        shares = [f"{100 * counts[i] / totals[variant]:.1f}" for variant, counts in buckets.counts.items()]
        lines.append(f"| {low:.4g} .. {high:.4g} | " + " | ".join(shares) + " |")
    return lines


def bucket_chart(buckets: ScoreBuckets):
    """The bucket table as grouped bars, for TensorBoard."""
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 3.5))
    width = 0.8 / len(buckets.counts)
    for i, (variant, counts) in enumerate(buckets.counts.items()):
        total = max(sum(counts), 1)
        axes.bar([b + i * width for b in range(len(counts))], [100 * c / total for c in counts], width,
                 label=variant.title)
    axes.set_xticks(range(len(buckets.edges) - 1), [f"{e:.2f}" for e in buckets.edges[:-1]], fontsize=7)
    axes.set_xlabel("score bucket (lower edge)")
    axes.set_ylabel("% of held-out scores")
    axes.legend(fontsize=7)
    figure.tight_layout()
    return figure


def render_markdown(report: RunReport) -> str:
    lines = [f"# qat run: {report.model}", "", _recipe_line(report), "", _recovery_line(report), "",
             *variant_table(report.variants)]
    lines += ["", "Cosine and EMD compare with fp32 (pooled embeddings of the held-out and guard texts; EMD between"
              " similarity-score distributions). Spearman, MAP, NDCG and recall are x100. Training texts (distinct, by "
              f"source): {report.data.train_texts or 'none'}.", ""]
    if differences := difference_table(report.differences):
        lines += [*differences, ""]
    lines += ["Held-out score distribution (% per bucket of fp32's range; a score model's outputs, or the similarity "
              "of every pair of held-out texts):", "", *bucket_table(report.buckets), ""]
    lines += [line for stage, export in report.exports.items() for line in _export_lines(stage, export)]
    lines += ["", f"Final model: {report.final.upper()} (`{report.exports[report.final].folder}`).",
              "LayerNorm, GELU and softmax stay fp32: IPEX has no int8 kernel for them.",
              f"CPU has VNNI: {report.cpu_has_vnni} (without VNNI, IPEX's int8 GEMM sums u8 x s8 pairs in saturating"
              " int16, so weights use 7 bits).",
              f"Timings (s): {', '.join(f'{k} {v:.1f}' for k, v in report.seconds.items())}.", ""]
    return "\n".join(lines)


def summary(report: RunReport) -> str:
    """What a job prints at its end: the recovery decision and every model's metrics (the numbers of report.md)."""
    final = report.exports[report.final]
    return "\n".join(["", _recovery_line(report), "", *variant_table(report.variants), "",
                      f"Final model: {report.final.upper()}, exported to {final.folder} for "
                      f"{', '.join(final.runtimes)} (parity {'passed' if final.passed else 'FAILED'}).", ""])


def write_report(run_dir: Path, report: RunReport) -> Path:
    write_json(run_dir / "report.json", asdict(report))
    path = run_dir / "report.md"
    write_text(path, render_markdown(report))
    return path
