"""A model's own serving settings (sentence-transformers' files: max length, pooling, normalisation, prompts) are
read, can be overridden, travel to the export folder, and the int8 model answers as sentence-transformers does."""
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import ONE_TARGET, save_bert
from qat import load_int8
from qat.base.errors import QatError
from qat.config import ModelConfig, RunConfig
from qat.jobs.command import job_config
from qat.jobs.train import run_train
from qat.load import load_encoder, model_settings, truncated


@pytest.fixture(scope="module")
def st_folder(tmp_path_factory):
    """A tiny BERT saved the way sentence-transformers saves a model: 256 tokens, [CLS] pooling, no Normalize
    module, and a named prompt."""
    path = save_bert(tmp_path_factory.mktemp("st_model"), max_position_embeddings=512)
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256, "do_lower_case": False}))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    (path / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "query: "}}))
    return path


def test_the_model_folder_sets_length_pooling_normalisation_and_prompts(st_folder):
    encoder = load_encoder(ModelConfig(str(st_folder)))
    assert (encoder.max_length, encoder.pooling, encoder.normalize, encoder.prompts) == (256, "cls", False,
                                                                                          {"query": "query: "})
    overridden = load_encoder(ModelConfig(str(st_folder), pooling="mean", max_length=64))
    assert (overridden.max_length, overridden.pooling) == (64, "mean")
    long_text = " ".join(["word"] * 300)
    assert truncated(encoder, ["short", long_text]) == 1 and truncated(overridden, ["short", long_text]) == 1
    assert truncated(encoder, [" ".join(["word"] * 100)]) == 0 and truncated(overridden, [" ".join(["word"] * 100)]) == 1


def test_a_pooling_qat_cannot_run_is_refused_in_one_line(st_folder, tmp_path):
    folder = tmp_path / "weighted"
    shutil.copytree(st_folder, folder)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_weightedmean_tokens": True}))
    with pytest.raises(QatError, match=r"pools by \['pooling_mode_weightedmean_tokens'\]; expected one of"):
        load_encoder(ModelConfig(str(folder)))
    assert load_encoder(ModelConfig(str(folder), pooling="mean")).pooling == "mean"   # an explicit choice wins


@pytest.fixture(scope="module")
def st_export(st_folder, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("st_run") / "run"
    cfg = job_config("train", RunConfig, [f"model.name_or_path={st_folder}", "calib.samples=32", "+data.heldout.limit=24",
                                          "train=none", ONE_TARGET, "export.speed_rounds=0"])
    report = run_train(cfg, run_dir)
    return run_dir / "export" / "ptq", report


def test_the_export_keeps_the_model_settings_and_counts_cut_texts(st_folder, st_export):
    folder, report = st_export
    theirs, ours = model_settings(str(st_folder)), model_settings(str(folder))
    assert (ours.max_length, ours.pooling, ours.normalize, ours.prompts) == (256, "cls", False, {"query": "query: "})
    assert ours == theirs and report.data.max_length == 256 and report.data.truncated >= 0
    assert not (folder / "2_Normalize").exists()


def test_load_int8_answers_as_sentence_transformers_does(st_export):
    model = load_int8(st_export[0])
    texts = ["a first sentence", "another, longer sentence of a few more words"]
    rows = model.encode(texts, device="cpu", show_progress_bar=False)
    assert isinstance(rows, np.ndarray) and rows.shape == (2, 32)
    assert not np.allclose(np.linalg.norm(rows, axis=1), 1.0)                    # this model does not normalise
    normalised = model.encode(texts, normalize_embeddings=True, show_progress_bar=False)
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), 1.0, atol=1e-5)
    listed = model.encode(texts, convert_to_numpy=False, show_progress_bar=False)
    assert isinstance(listed, list) and len(listed) == 2 and torch.is_tensor(listed[0])
    prompted = model.encode(texts, prompt_name="query", show_progress_bar=False)
    np.testing.assert_allclose(prompted, model.encode(["query: " + t for t in texts], show_progress_bar=False), atol=1e-5)
    np.testing.assert_allclose(model.encode(texts, prompt="query: ", show_progress_bar=False), prompted, atol=1e-5)
    for call, message in [
        (lambda: model.encode(["hello", None]), r"sentences\[1\]=None is not valid; expected a string"),
        (lambda: model.encode(texts, batch_size=0), r"batch_size=0 is not valid; expected a positive integer"),
        (lambda: model.encode(texts, batch_size=-1), r"batch_size=-1 is not valid"),
        (lambda: model.encode(texts, device="cuda"), r"device='cuda' is not supported; expected 'cpu' or None"),
        (lambda: model.encode(texts, prompt_name="passage"), r"prompt_name='passage' is not one of this model's prompts"),
        (lambda: model.encode(texts, output_value="token_embeddings"), r"output_value='token_embeddings' is not supported"),
        (lambda: model.encode(texts, precision="int8"), r"precision='int8' is not supported"),
    ]:
        with pytest.raises(QatError, match=message):
            call()
