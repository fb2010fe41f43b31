"""Score models (cross-encoders, relevance models): a tiny random-weight BertForSequenceClassification reads
(text_a, text_b) pairs through the whole run, is scored on pair and rerank task sets, and its export predicts."""
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig

from conftest import ONE_TARGET
from qat.config import EvaluateRunConfig, ModelConfig, RunConfig
from qat.data import builtin_sentences
from qat.jobs.command import job_config
from qat.base.errors import QatError
from qat.jobs.evaluate import run_evaluation
from qat.exporters.loader import load_int8
from qat.load import load_encoder, resolve_model_path
from qat.jobs.train import run_train

RUN = [ONE_TARGET, "model.max_length=32", "calib.samples=64", "+data.heldout.limit=40", "recovery.force=true", "train.steps=2",
       "train.lr=1e-4", "train.batch_size=8", "teacher=fp32", "quant=full_int8"]


@pytest.fixture(scope="module")
def score_model(tmp_path_factory):
    """labels -> a saved tiny cross-encoder (1: one relevance score; 3: class logits)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("bundled:all-MiniLM-L6-v2"))
    folders = {}
    for labels in (1, 3):
        torch.manual_seed(0)
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64, num_labels=labels)
        folders[labels] = tmp_path_factory.mktemp(f"cross_encoder_{labels}")
        AutoModelForSequenceClassification.from_config(config).save_pretrained(folders[labels])
        tokenizer.save_pretrained(folders[labels])
    return folders


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory):
    """sts_dev.tsv (40 labelled pairs) and rerank_dev.jsonl (8 queries, 3 candidates each)."""
    folder = tmp_path_factory.mktemp("tasks")
    sentences = builtin_sentences()
    rng = np.random.default_rng(0)
    rows = [f"{rng.uniform(0, 5):.2f}\t{sentences[i]}\t{sentences[i + 100]}" for i in range(40)]
    (folder / "sts_dev.tsv").write_text("score\tsentence1\tsentence2\n" + "\n".join(rows) + "\n")
    queries = [{"query": sentences[200 + i], "positive": [sentences[210 + i]],
                "negative": [sentences[220 + i], sentences[230 + i]]} for i in range(8)]
    (folder / "rerank_dev.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    return folder


@pytest.fixture(scope="module")
def task_files(task_folder):
    return [f"+data.tasks.sts_dev={{kind: file, path: {task_folder / 'sts_dev.tsv'}, format: pairs}}",
            f"+data.tasks.rerank_dev={{kind: file, path: {task_folder / 'rerank_dev.jsonl'}, format: rerank}}"]


@pytest.mark.ipex
@pytest.mark.parametrize("labels", [1, 3])
def test_a_cross_encoder_runs_end_to_end_and_its_export_predicts(score_model, task_files, labels, tmp_path,
                                                                 tiny_model_dir, fresh_accelerate_state):
    cfg = job_config("train", RunConfig, [f"model.name_or_path={score_model[labels]}", *RUN, *task_files])
    run_dir = tmp_path / "run"
    report = run_train(cfg, run_dir)
    assert report.final == "qat" and report.recovery.metric == "sts_dev/spearman"   # auto: the first dev task set
    for export in report.exports.values():
        # 12 encoder Linears, the pooler's dense and the classifier
        assert export.runtimes["ipex"].int8_ops["linear"] == 14 and export.runtimes["ipex"].parity.unfused_max_abs_diff == 0.0
        assert export.runtimes["ipex"].parity.passed
    metrics = report.variants["qat_int8"]
    for key in ("score_diff_mean", "score_diff_max", "emd_heldout_pairs", "guard/score_diff_mean", "sts_dev/spearman",
                "sts_dev/pearson", "sts_dev/score_diff_max", "sts_dev/emd", "rerank_dev/map", "rerank_dev/mrr@10",
                "rerank_dev/ndcg@10"):
        assert np.isfinite(metrics[key]), key
    assert "cosine_mean" not in metrics
    # Each task metric's difference between the exported models, with its interval, is in the report.
    assert set(report.differences) == {"PTQ - fp32", "QAT - fp32", "QAT - PTQ"}
    qat_vs_ptq = report.differences["QAT - PTQ"]["sts_dev/spearman"]
    assert qat_vs_ptq.value == pytest.approx(metrics["sts_dev/spearman"] - report.variants["ptq_int8"]["sts_dev/spearman"])
    assert qat_vs_ptq.low <= qat_vs_ptq.value <= qat_vs_ptq.high and qat_vs_ptq.items == 40
    assert "paired bootstrap" in (run_dir / "report.md").read_text()

    model = load_int8(run_dir / "export" / "qat")
    pairs = [("a question about the weather", "it will rain tomorrow"), ("short", "a much longer second text here")]
    scores = model.predict(pairs, show_progress_bar=False)
    assert scores.shape == ((2,) if labels == 1 else (2, labels))
    # One pair alone gets the score it gets in a batch (per-batch padding does not change it).
    alone = model.predict(pairs[:1], show_progress_bar=False)
    assert np.allclose(alone[0], scores[0], atol=1e-3)
    logits = model.predict(pairs, activation_fn=torch.nn.Identity(), show_progress_bar=False)
    if labels == 1:   # CrossEncoder.predict's default for one label: Sigmoid; one pair gives one score
        np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logits)), atol=1e-6)
        assert np.ndim(model.predict(pairs[0], show_progress_bar=False)) == 0
    else:
        np.testing.assert_allclose(scores, logits)
    with pytest.raises(QatError, match="score model; expected predict"):
        model.encode(["a text"])
    # Scoring this export against an embedding model's fp32 is refused before anything is evaluated.
    evaluation = job_config("evaluate", EvaluateRunConfig, [f"model.name_or_path={tiny_model_dir}", "model.max_length=32",
                                                            f"target.folder={run_dir / 'export' / 'qat'}"])
    with pytest.raises(QatError, match=r"holds a model of kind 'scores' but model\.\* .* is of kind 'embedding'"):
        run_evaluation(evaluation, tmp_path / "evaluation")


@pytest.mark.ipex
def test_a_task_loss_ranks_the_labelled_training_pairs_of_a_one_score_model(score_model, task_files, tmp_path,
                                                                            fresh_accelerate_state):
    sentences = builtin_sentences()
    train = tmp_path / "sts_train.tsv"
    train.write_text("score\tsentence1\tsentence2\n" + "".join(f"{i % 6}\t{sentences[i]}\t{sentences[i + 40]}\n"
                                                               for i in range(240, 280)))
    task = ["train.task_weight=0.5", f"+data.train={{sts: {{proportion: 1, source: {{kind: file, path: {train}, format: pairs}}}}}}"]
    cfg = job_config("train", RunConfig, [f"model.name_or_path={score_model[1]}", *RUN, *task_files, *task])
    report = run_train(cfg, tmp_path / "run")
    assert report.training.task_pairs == 40 and report.training.task_weight == 0.5
    assert report.exports["qat"].runtimes["ipex"].parity.passed
    # class logits have no one similarity that a label orders: refused before anything is calibrated
    cfg = job_config("train", RunConfig, [f"model.name_or_path={score_model[3]}", *RUN, *task_files, *task])
    with pytest.raises(QatError, match=r"train.task_weight needs one similarity per pair, but model .* has 3 outputs"):
        run_train(cfg, tmp_path / "refused")
    assert not (tmp_path / "refused" / "ptq").exists()
    # a score model makes no embeddings whose similarities the similarity term could compare
    cfg = job_config("train", RunConfig, [f"model.name_or_path={score_model[1]}", *RUN, *task_files,
                                          "train.similarity_weight=1"])
    with pytest.raises(QatError, match=r"train.similarity_weight=1 compares embeddings' similarities, but model .* "
                                       r"outputs scores; expected an embedding model"):
        run_train(cfg, tmp_path / "refused_similarity")


@pytest.mark.ipex
def test_a_score_model_calibrates_on_a_mix_of_pair_and_rerank_data(score_model, task_folder, tmp_path,
                                                                    fresh_accelerate_state):
    """A multi-task relevance model calibrates on the equal mix of its sub-tasks' data: STS pairs and
    (query, candidate) pairs of a rerank file, interleaved, recorded in the PTQ artifact."""
    mix = (f"+data.mix={{sts: {{proportion: 1, source: {{kind: file, path: {task_folder / 'sts_dev.tsv'}, "
           f"format: pairs}}}}, rerank: {{proportion: 1, source: {{kind: file, path: {task_folder / 'rerank_dev.jsonl'}, "
           f"format: rerank}}}}}}")
    overrides = [f"model.name_or_path={score_model[1]}", "model.max_length=32", "calib.samples=32", ONE_TARGET,
                 "calib.batch_size=8", "+data.heldout.limit=40", "train=none", "quant=full_int8", mix]
    run_dir = tmp_path / "run"
    report = run_train(job_config("train", RunConfig, overrides), run_dir)
    metadata = json.loads((run_dir / "ptq" / "metadata.json").read_text())
    recorded = metadata["calibration_data"]["mix"]
    assert (recorded["sts"]["texts"], recorded["rerank"]["texts"]) == (16, 16)
    assert report.final == "ptq" and report.exports["ptq"].runtimes["ipex"].parity.passed


def test_the_checkpoint_decides_the_kind(score_model, tiny_model_dir):
    assert load_encoder(ModelConfig(str(score_model[1]), max_length=32)).kind == "scores"
    assert load_encoder(ModelConfig(str(tiny_model_dir), max_length=32)).kind == "embedding"
    with pytest.raises(QatError, match="is a sequence-classification checkpoint .*expected model.kind=scores or auto"):
        load_encoder(ModelConfig(str(score_model[1]), max_length=32, kind="embedding"))
    with pytest.raises(QatError, match="is not a sequence-classification checkpoint"):
        load_encoder(ModelConfig(str(tiny_model_dir), max_length=32, kind="scores"))


def test_a_retrieval_set_is_refused_for_a_score_model(score_model, tmp_path, fresh_accelerate_state):
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "d1", "text": "a document"}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "a query"}\n')
    (beir / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    cfg = job_config("train", RunConfig, [f"model.name_or_path={score_model[1]}", *RUN,
                                          f"+data.tasks.ret_dev={{kind: file, path: {beir}, format: beir, split: dev}}"])
    with pytest.raises(QatError, match="'ret_dev' is a BEIR retrieval set, which needs single texts"):
        run_train(cfg, tmp_path / "run")
