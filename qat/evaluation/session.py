"""What every job sets up once: threads and seed, the encoder, the calibration texts, the held-out and task data,
and the fp32 reference on the data that choices may read (never a test split)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from accelerate.utils import set_seed

from qat.config import DataConfig, EvalConfig, ModelConfig
from qat.data import Text, calibration_texts, check_files
from qat.base.errors import QatError
from qat.evaluation.metrics import EvalData, Forward, Measure, Metrics, Table, embed, evaluate, load_eval_data, scoring_of
from qat.evaluation.significance import task_differences
from qat.load import Encoder, load_encoder
from qat.quant.config import AUTO
from qat.quant.wrapper import EncoderModule

log = logging.getLogger(__name__)


@dataclass
class Session:
    encoder: Encoder
    calibration: list[Text]           # calibration inputs
    origins: list[str] | None         # each calibration text's source name, when they are a mix
    data: EvalData                    # everything evaluated at the end: held-out texts and every task set
    dev: EvalData                     # what choices may read: held-out texts and the non-test task sets
    fp32_dev: Table                   # fp32 embeddings of dev.texts()
    fp32_dev_metrics: Metrics
    batch_size: int
    metrics: dict[str, str]           # each setting that names a dev metric -> the metric ('auto' resolved)

    def fp32(self) -> EncoderModule:
        return EncoderModule(self.encoder.model).eval()

    def embed(self, forward: Forward, texts: list[Text]) -> Table:
        return embed(forward, self.encoder, texts, self.batch_size)

    def fp32_table(self, texts: list[Text]) -> Table:
        """fp32 outputs of `texts`: the dev reference where it has them, the rest embedded now."""
        return {**self.fp32_dev, **self.embed(self.fp32(), [t for t in texts if t not in self.fp32_dev])}

    def evaluate_dev(self, forward: Forward, dev: EvalData | None = None) -> Metrics:
        """Metrics of a model on the dev data (or a part of it) against the fp32 reference."""
        dev = dev or self.dev
        return evaluate(self.embed(forward, dev.texts()), self.fp32_dev, dev)

    def dev_metrics_and_noise(self, table: Table, metric: str, dev: EvalData | None = None) -> tuple[Metrics, float]:
        """Metrics of a model's dev outputs (`table`, which holds at least `dev`'s texts), and the noise of `metric`
        there: half the width of the 95% paired bootstrap interval of this model against fp32 on the task set it
        reads (two models whose measures differ by less cannot be told apart by that set); 0 for a fidelity
        metric, which samples no labelled items."""
        dev = dev or self.dev
        difference = task_differences(self.fp32_dev, table, dev).get(metric)
        noise = 0.0 if difference is None else (difference.high - difference.low) / 2
        return evaluate(table, self.fp32_dev, dev), noise

    def measure(self, metrics: list[str]) -> Measure:
        """A stage's `measure`: a model's metrics on the part of the dev data these metrics read."""
        dev = self.dev.for_metrics(metrics)
        return lambda forward: self.evaluate_dev(forward, dev)


def resolve_metric(metric: str, data: EvalData) -> str:
    """'auto' is the first dev task set's measure (e.g. stsb_dev/spearman) or, with no dev task set, the fidelity
    metric of the model's kind: cosine_mean for embeddings, score_diff_mean for scores."""
    return data.auto_metric if metric == AUTO else metric


def use_threads(threads: int | None) -> None:
    """torch's CPU threads for this job (null keeps torch's default: all cores)."""
    torch.set_num_threads(threads or torch.get_num_threads())


def open_session(model: ModelConfig, data: DataConfig, eval_cfg: EvalConfig, *, seed: int, threads: int | None,
                 metrics: dict[str, str], only_tasks_of_metrics: bool = False, calibration: bool = True,
                 training: bool = False) -> Session:
    """Load everything once. `metrics` maps each setting that names a dev metric to its value; a metric that is
    not measured is an error before any calibration batch runs. A job that reads nothing but those metrics (a
    search, a sensitivity analysis) keeps only the dev task sets they read, so its trials embed no more. A job that
    does not calibrate (an evaluation) reads no calibration texts; every data file the job reads is checked first."""
    check_files(data, calibration, training)
    use_threads(threads)
    set_seed(seed)
    encoder = load_encoder(model)
    texts, origins = calibration_texts(data, encoder.pairs) if calibration else ([], None)
    everything, dev = load_eval_data(data, scoring_of(encoder))
    metrics = {setting: resolve_metric(name, dev) for setting, name in metrics.items()}
    if only_tasks_of_metrics:
        dev = dev.for_metrics(list(metrics.values()))
    fp32_dev = embed(EncoderModule(encoder.model).eval(), encoder, dev.texts(), eval_cfg.batch_size)
    measured = evaluate(fp32_dev, fp32_dev, dev)
    for setting, name in metrics.items():
        if name not in measured:
            raise QatError(f"{setting}={name!r} is not measured on this data; expected one of {sorted(measured)}")
    log.info("%s: %d calibration texts, %d held-out texts, task sets %s", encoder.source, len(texts),
             len(dev.heldout), list(everything.tasks))
    return Session(encoder, texts, origins, everything, dev, fp32_dev, measured, eval_cfg.batch_size, metrics)
