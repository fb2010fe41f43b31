"""The run report: one typed record of what a recovery job did and measured, written as report.json (everything)
and report.md (the same, readable)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qat.base.atomic import atomic_path, write_json, write_text
from qat.evaluation.metrics import Metrics, ScoreBuckets, Stage, Variant, higher_is_better
from qat.exporters import ExportRecord, ParityRecord, SpeedRecord
from qat.exporters.speed import FP32
from qat.quant.config import CalibConfig, EqualizeConfig, SmoothQuantConfig
from qat.recovery import RecoveryDecision, TrainingSummary
from qat.evaluation.significance import CONFIDENCE, RESAMPLES, Difference
from qat.ptq import AlphaChoice


@dataclass
class RecipeSummary:
    ops: list[str]      # the op kinds the PTQ qconf runs in int8
    skip: list[str]     # what stays fp32 (the user's skip list and any sensitive groups)
    context_matmul: bool = True   # the attention's probabilities-times-values matmul in int8 (with the matmuls)


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
    max_length: int               # tokens the model reads (its own, or model.max_length)
    truncated: int                # calibration, training and evaluation texts longer than that, cut to it


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
    speed: SpeedRecord | None = None   # the final model's exports against fp32 on this CPU (export.speed_rounds > 0)
    smoothquant_auto: str = ""         # why smoothquant.enabled=auto resolved as it did ('': not auto)

    @property
    def pairs(self) -> bool:
        """A score model's run (its fidelity is a score difference, not a cosine)."""
        return "score_diff_mean" in self.variants[Variant.FP32]


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
        trials = ", ".join(f"{value} {'fell below PTQ' if t.metric is None else f'{t.metric:.4f}'}"
                           for value, t in choice.trials.items())
        lr += f" (auto: dev {choice.metric} after {choice.trial_steps} steps by lr: {trials})"
    task = (f" plus a task loss (weight {training.task_weight:g}, ranking {training.task_pairs} labelled pairs)"
            if training.task_pairs else "")
    task += (f" plus the in-batch similarity term (weight {training.similarity_weight:g})"
             if training.similarity_weight else "")
    task += ", each weight re-rounded within its PTQ quantization step" if training.rounding_only else ""
    task += ", block by block (sequential reconstruction)" if training.blocks == "sequential" else ""
    return (head + f" Trained {training.step} steps{stop}, {lr}, with the {training.teacher} teacher{task} on "
            f"{training.processes} process(es) in {training.seconds:.0f} s ({training.seconds_per_step:.2f} s/step); "
            f"kept step {training.best_step}: dev {decision.metric} {training.best_metric:.4f}"
            + (f" (dev measures within {training.dev_noise:.4f} of each other are level: then held-out fidelity "
               "decides)" if training.dev_noise else "") + ", not below PTQ on the dev measure nor on held-out and guard "
               "fidelity.")


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
              + (", symmetric" if calibration.symmetric else
                 ", attention-matmul inputs symmetric" if calibration.symmetric_matmul else "")
              + (", bias correction" if calibration.bias_correction else "")
              + (f", SmoothQuant alpha {_alpha(report.smoothquant.alpha, report.smoothquant_choice)}"
                 if report.smoothquant.enabled else "")
              + (f" (SmoothQuant {'on' if report.smoothquant.enabled else 'off'} by smoothquant=auto: "
                 f"{report.smoothquant_auto})" if report.smoothquant_auto else "")
              + (f" (not smoothed, no module input of their own: {', '.join(report.smoothquant_unsmoothed)})"
                 if report.smoothquant_unsmoothed else "")
              + _equalize(report)
              + "." if report.ptq_source == "calibration" else f"scales restored from {report.ptq_source}.")
    context = "" if report.recipe.context_matmul else ", the attention's context matmul in floating point"
    return (f"Recipe: int8 ops {report.recipe.ops}, skip {report.recipe.skip or 'none'}{context}, weights per channel "
            f"in {report.weight_range}; " + source)


EVIDENCE = {"ipex": "int8 ops in the frozen graph", "openvino": "GEMM runtime precisions of the compiled model",
            "onnx": "ONNX Runtime integer kernels"}


def _parity_line(p: ParityRecord) -> str:
    unfused = f"unfused graph max |diff| {p.unfused_max_abs_diff:.2e}; fused " if p.unfused_max_abs_diff is not None else ""
    return (f"({'passed' if p.passed else 'FAILED'}): {unfused}cosine mean {p.cosine_mean:.6f}, min {p.cosine_min:.6f} "
            f"(the simulation against itself with 1-ulp noise on Linear outputs: mean {p.rounding_floor.cosine_mean:.6f}, "
            f"min {p.rounding_floor.cosine_min:.6f}); mean cosine to fp32: fake-quant {p.fidelity_to_fp32.fakequant:.6f}, "
            f"exported {p.fidelity_to_fp32.int8:.6f} (tolerance {p.thresholds.fidelity_tolerance:.4f})")


def _export_lines(stage: Stage, export: ExportRecord, max_length: int) -> list[str]:
    """One line per runtime: where the model file is, the evidence that the runtime runs it in int8, its parity on
    the held-out texts and on passages of the serving length."""
    lines = []
    for runtime, made in export.runtimes.items():
        passages = made.passage_parity
        lines.append(
            f"- {stage.upper()} {runtime} export `{made.path}`: {EVIDENCE[runtime]} {made.int8_ops}; parity with its "
            f"fake-quant model on {made.parity.texts} held-out texts {_parity_line(made.parity)}"
            + ("" if passages is None else
               f"; on {passages.texts} passages of {max_length} tokens {_parity_line(passages)}") + ".")
    return lines


def variant_table(variants: dict[Variant, Metrics], runtime: str | None = None) -> list[str]:
    """One markdown table of every set (held-out texts, the guard, each task set) and metric by row, every evaluated
    model by column (the exported ones as `runtime` ran them), and what QAT changed against PTQ (both exported)
    where a run has both: a regression on any set shows in one place."""
    delta = Variant.PTQ_INT8 in variants and Variant.QAT_INT8 in variants
    header = ["set", "metric", *(variant.title_on(runtime) for variant in variants)] + (["QAT - PTQ (exported)"] if delta else [])
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
             "![training curve and score distributions](report.png)", "",
             *variant_table(report.variants, evaluated_runtime(report))]
    lines += ["", "Cosine and EMD compare with fp32 (pooled embeddings of the held-out and guard texts; EMD between"
              " similarity-score distributions). Spearman, MAP, NDCG and recall are x100. Training texts (distinct, by "
              f"source): {report.data.train_texts or 'none'}. Inputs are cut at {report.data.max_length} tokens: "
              f"{report.data.truncated} of the calibration, training and evaluation texts were longer.", ""]
    if differences := difference_table(report.differences):
        lines += [*differences, ""]
    lines += ["Held-out score distribution (% per bucket of fp32's range; a score model's outputs, or the similarity "
              "of every pair of held-out texts):", "", *bucket_table(report.buckets), ""]
    lines += [line for stage, export in report.exports.items()
              for line in _export_lines(stage, export, report.data.max_length)]
    lines += ["", *speed_lines(report.speed), *next_steps(report),
              f"Final model: {report.final.upper()} (`{report.exports[report.final].folder}`).",
              "LayerNorm, GELU and softmax stay fp32: IPEX has no int8 kernel for them.",
              f"CPU has VNNI: {report.cpu_has_vnni} (without VNNI, IPEX's int8 GEMM sums u8 x s8 pairs in saturating"
              " int16, so weights use 7 bits).",
              f"Timings (s): {', '.join(f'{k} {v:.1f}' for k, v in report.seconds.items())}.", ""]
    return "\n".join(lines)


def speed_lines(speed: SpeedRecord | None) -> list[str]:
    """The speed table: throughput at batch 32 and latency at batch 1 of fp32 and each export, and the ratios."""
    if speed is None:
        return []
    shape = f"x{speed.length}"
    lines = [f"Speed on this CPU ({speed.cpu}; random tokens, {speed.rounds} interleaved rounds; scripts/bench_peers.py "
             "measures longer):", "", f"| model | b32{shape} seq/s | b1{shape} ms | x fp32 (b32 / b1) |", "|---|---|---|---|"]
    base = speed.seconds.get(FP32)
    for name, seconds in speed.seconds.items():
        ratio = (f"{base['throughput'] / seconds['throughput']:.2f} / {base['latency'] / seconds['latency']:.2f}"
                 if base else "")
        lines.append(f"| {'fp32 (PyTorch)' if name == FP32 else f'int8 {name}'} | {speed.per_second(name):.1f} | "
                     f"{speed.latency_ms(name):.1f} | {ratio} |")
    lines += [f"| {name} | not timed: {error} | | |" for name, error in speed.errors.items()]
    return lines + [""]


def next_steps(report: RunReport) -> list[str]:
    """The commands that load, evaluate and serve the final model."""
    final = report.exports[report.final]
    folder = final.folder
    lines = ["Next:", "", f"- load it: `from qat import load_int8; model = load_int8(\"{folder}\", "
             f"backend=\"{next(iter(final.runtimes))}\")`, then `model.{'predict' if report.pairs else 'encode'}(...)`"]
    files = {"onnx": "onnx/model_qint8.onnx", "openvino": "openvino/openvino_model_qint8.xml"}
    served = [runtime for runtime in files if runtime in final.runtimes]
    if served:
        kind = "CrossEncoder" if report.pairs else "SentenceTransformer"
        lines.append(f"- serve it with sentence-transformers: `{kind}(\"{folder}\", backend=\"{served[0]}\", "
                     f"model_kwargs={{\"file_name\": \"{files[served[0]]}\"}})`")
    lines.append(f"- evaluate it on other data: `python -m qat.evaluate model.name_or_path={report.model} "
                 f"target.folder={folder} data=<set>`")
    return lines + [""]


def report_picture(report: RunReport, path: Path) -> Path:
    """report.png: the training curve (dev measure and guard fidelity by step, PTQ and fp32 as lines) where the
    run trained, and the held-out score distributions of fp32, PTQ and QAT."""
    from matplotlib import pyplot

    history = report.training.history if report.training else []
    panels = 3 if history else 1
    figure, axes = pyplot.subplots(1, panels, figsize=(4.2 * panels, 3.4))
    axes = list(axes) if panels > 1 else [axes]
    if history:
        decision, training = report.recovery, report.training
        steps = [row["step"] for row in history]
        ax = axes[0]
        ax.plot(steps, [row[decision.metric] for row in history], marker="o", label="QAT")
        ax.axhline(history[0][decision.metric], linestyle="--", color="grey", label="PTQ")
        if training.fp32_dev is not None:
            ax.axhline(training.fp32_dev, linestyle=":", color="black", label="fp32")
        ax.set_title(f"dev {decision.metric}" + (" (the sample read in training)" if training.dev_sampled else ""),
                     fontsize=9)
        ax = axes[1]
        for name in (key for key in history[0] if key not in ("step", decision.metric)):
            line, = ax.plot(steps, [row[name] for row in history], marker="o", label=f"QAT {name}")
            ax.axhline(history[0][name], linestyle="--", color=line.get_color(), alpha=0.6, label=f"PTQ {name}")
        ax.set_title("fidelity to fp32 (held-out texts, guard)", fontsize=9)
        for ax in axes[:2]:
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
    buckets = report.buckets
    ax = axes[-1]
    centres = [(low + high) / 2 for low, high in zip(buckets.edges, buckets.edges[1:])]
    for variant, counts in buckets.counts.items():
        if variant in (Variant.FP32, Variant.PTQ_INT8, Variant.QAT_INT8):
            ax.plot(centres, [100 * c / max(sum(counts), 1) for c in counts], marker=".", label=variant.title)
    ax.set_xlabel("held-out score")
    ax.set_ylabel("% of scores")
    ax.set_title("score distributions", fontsize=9)
    ax.legend(fontsize=7)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    pyplot.close(figure)
    return path


def evaluated_runtime(report: RunReport) -> str:
    """The runtime whose exports the tables score: the first of export.targets."""
    return str(next(iter(report.exports[report.final].runtimes)))


def summary(report: RunReport) -> str:
    """What a job prints at its end: the recovery decision and every model's metrics (the numbers of report.md)."""
    final = report.exports[report.final]
    return "\n".join(["", _recovery_line(report), "", *variant_table(report.variants, evaluated_runtime(report)), "",
                      f"Final model: {report.final.upper()}, exported to {final.folder} for "
                      f"{', '.join(final.runtimes)} (parity {'passed' if final.passed else 'FAILED'}).", "",
                      *speed_lines(report.speed), *next_steps(report)])


def write_report(run_dir: Path, report: RunReport) -> Path:
    write_json(run_dir / "report.json", asdict(report))
    report_picture(report, run_dir / "report.png")
    path = run_dir / "report.md"
    write_text(path, render_markdown(report))
    return path
