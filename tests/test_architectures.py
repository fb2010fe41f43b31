"""The BERT family's encoders, each a tiny random-weight config saved next to a tokenizer, as an embedding model
and with a sequence-classification head, through the whole recovery run: calibrate -> fake-quant -> a few QAT
steps -> IPEX export -> parity, for the default and the full-operator recipe (with equalization and, where the
architecture allows it, SmoothQuant)."""
import json

import onnx
import pytest
import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    DistilBertConfig,
    ElectraConfig,
    ErnieConfig,
    MPNetConfig,
    PretrainedConfig,
    RobertaConfig,
    XLMRobertaConfig,
)

from conftest import HAS_IPEX, ONE_RUNTIME, ONE_TARGET
from qat.ptq.artifact import METADATA_FILE, read_ptq_artifact
from qat.config import ModelConfig, RunConfig, installed_targets
from qat.jobs.command import job_config
from qat.exporters.openvino import int8_gemms
from qat.exporters.folder import read_export_info
from qat.exporters.loader import load_int8
from qat.load import load_encoder, resolve_model_path
from qat.jobs.train import run_train
from qat.quant.smoothquant import smoothed_buffers

SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
# Position ids of RoBERTa-style models start after the padding index, hence two more positions.
OFFSET_POSITIONS = dict(max_position_embeddings=66, pad_token_id=0)
ARCHITECTURES: dict[str, PretrainedConfig] = {
    "bert": BertConfig(**SIZE, max_position_embeddings=64),
    "roberta": RobertaConfig(**SIZE, **OFFSET_POSITIONS),
    "xlm-roberta": XLMRobertaConfig(**SIZE, **OFFSET_POSITIONS),
    "electra": ElectraConfig(**SIZE, embedding_size=16, max_position_embeddings=64),
    "distilbert": DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64),
    "ernie": ErnieConfig(**SIZE, max_position_embeddings=64),
    "mpnet": MPNetConfig(**SIZE, **OFFSET_POSITIONS),
}
# Where some Linears give SmoothQuant's runtime multiply no module input of their own to sit on: DistilBERT's FFN
# owns both its Linears, and the second reads GELU's output, not the FFN's input.
PARTLY_SMOOTHED = {"distilbert": ("ffn.lin2",)}
RUN = ["model.max_length=32", "calib.samples=64", "+data.heldout.limit=40", "recovery.force=true",
       "train.steps=2", "train.lr=1e-4", "train.batch_size=8", "teacher=fp32"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[tuple[str, str], str]:
    """(architecture, kind) -> a saved model: the bare encoder, or the encoder with a one-score head."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("bundled:all-MiniLM-L6-v2"))
    folders = {}
    for name, config in ARCHITECTURES.items():
        for kind, auto in (("embedding", AutoModel), ("scores", AutoModelForSequenceClassification)):
            torch.manual_seed(0)
            config.vocab_size, config.num_labels = tokenizer.vocab_size, 1
            folder = tmp_path_factory.mktemp(f"{name}_{kind}")
            auto.from_config(config).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            folders[name, kind] = str(folder)
    return folders


def full_recipe(name: str) -> list[str]:
    return ["quant=full_int8", "equalize=on", "equalize.alpha=0.5", "smoothquant=on", "smoothquant.alpha=0.5"]


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("kind", ["embedding", "scores"])
@pytest.mark.parametrize("recipe", ["default", "full"])
def test_every_architecture_trains_and_exports_what_it_simulates(model_dirs, name, kind, recipe, tmp_path,
                                                                 fresh_accelerate_state):
    """Every Linear of the model (a score head's too) runs in int8, the export is the simulation exactly when
    unfused, and a score model's export takes token_type_ids where the architecture has segment embeddings."""
    if kind == "scores" and not HAS_IPEX:
        pytest.skip("a random score head's parity is judged on IPEX's exact unfused graph (see below)")
    folder = model_dirs[name, kind]
    overrides = ["quant=ipex_default"] if recipe == "default" else full_recipe(name)
    # A random score head's outputs are flat (they spread by about 1e-4, the size of the int8 error itself), so the
    # centred cosine that judges a score model's parity measures noise (the fake-quant model's own cosine to fp32 is
    # 0.07-0.49 here): OpenVINO and ONNX Runtime, which round in their own order, are checked on embeddings.
    every_runtime = kind == "embedding" and recipe == "default"   # the runtimes' own check; the rest for IPEX only
    targets = [] if every_runtime else [ONE_TARGET]
    cfg = job_config("train", RunConfig, [f"model.name_or_path={folder}", *RUN, *overrides, *targets])
    report = run_train(cfg, tmp_path / "run")
    assert report.final == "qat" and report.training.step == 2
    encoder = load_encoder(ModelConfig(folder, max_length=32))
    linears = sum(isinstance(m, nn.Linear) for m in encoder.model.modules())
    for export in report.exports.values():
        # every runtime (all installed ones by default) runs it in int8 and computes its simulation
        assert set(export.runtimes) == (set(installed_targets()) if every_runtime else {ONE_RUNTIME}) and export.passed
        if "ipex" in export.runtimes:   # IPEX's unfused graph is the simulation exactly, op for op
            ipex = export.runtimes["ipex"]
            assert ipex.parity.unfused_max_abs_diff == 0.0 and ipex.parity.passed
            assert ipex.int8_ops["linear"] == linears and ipex.int8_ops["matmul"] == 4
            assert (ipex.int8_ops["add"] > 0) == (recipe == "full")
        if "onnx" in export.runtimes:   # ONNX Runtime's integer kernels ran it, on the int8 weights stored in the file
            graph = onnx.load(str(export.runtimes["onnx"].path)).graph
            assert export.runtimes["onnx"].int8_ops and not any(
                node.op_type == "QuantizeLinear" and node.input[0].endswith(".weight") for node in graph.node)
            assert sum(t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2 for t in graph.initializer) == linears
        if every_runtime:
            assert int8_gemms(export.runtimes["openvino"].int8_ops) > 0
            sample = [f"a sentence about {topic}" for topic in ("rain", "tea", "trains", "cats")]
            first, *others = export.runtimes
            reference = load_int8(export.folder, backend=first).encode(sample)
            for backend in others:   # load_int8 runs every runtime of the folder alike
                assert (load_int8(export.folder, backend=backend).encode(sample) * reference).sum(-1).min() > 0.98, backend
    info = read_export_info(tmp_path / "run" / "export" / "qat")
    segments = kind == "scores" and getattr(ARCHITECTURES[name], "type_vocab_size", 0) > 1   # segment embeddings
    assert info.kind == kind and ("token_type_ids" in info.input_names) == segments
    fidelity = "score_diff_mean" if kind == "scores" else "cosine_mean"
    assert report.recovery.metric == fidelity and f"guard/{fidelity}" in report.variants["qat_int8"]


@pytest.mark.parametrize("name", sorted(PARTLY_SMOOTHED))
def test_smoothquant_smooths_what_it_can_place_and_names_the_rest(model_dirs, name, tmp_path, fresh_accelerate_state):
    cfg = job_config("train", RunConfig, [f"model.name_or_path={model_dirs[name, 'embedding']}", *RUN, "train=none",
                                          "quant=full_int8", "smoothquant=on", "smoothquant.alpha=0.5"])
    report = run_train(cfg, tmp_path / "run")
    expected = [f"transformer.layer.{layer}.{linear}" for layer in range(2) for linear in PARTLY_SMOOTHED[name]]
    assert sorted(report.smoothquant_unsmoothed) == sorted(expected)
    metadata = json.loads((tmp_path / "run" / "ptq" / "metadata.json").read_text())
    assert sorted(metadata["smoothquant"]["unsmoothed"]) == sorted(expected)
    assert "not smoothed, no module input of their own: " + expected[0] in (tmp_path / "run" / "report.md").read_text()
    smoothed = smoothed_buffers(read_ptq_artifact(tmp_path / "run" / "ptq").encoder.model)
    assert sorted(smoothed) == [f"transformer.layer.{layer}.{owner}" for layer in range(2) for owner in ("attention", "ffn")]


def test_cls_pooling_is_recorded_and_read_back(model_dirs, tmp_path, fresh_accelerate_state):
    """A BGE-style model ([CLS] pooling): the PTQ artifact and the export say so, and the export's embeddings
    are the [CLS] state (they differ from mean pooling's)."""
    cfg = job_config("train", RunConfig, [f"model.name_or_path={model_dirs['bert', 'embedding']}", *RUN, "model.pooling=cls",
                                          "quant=full_int8"])
    run_dir = tmp_path / "run"
    report = run_train(cfg, run_dir)
    assert json.loads((run_dir / "ptq" / METADATA_FILE).read_text())["pooling"] == "cls"
    assert read_export_info(run_dir / "export" / "qat").pooling == "cls"
    model = load_int8(run_dir / "export" / "qat")
    texts = ["a first sentence of several words", "short"]
    cls = model.encode(texts, convert_to_tensor=True, show_progress_bar=False)
    model.info.pooling = "mean"
    assert not torch.allclose(cls, model.encode(texts, convert_to_tensor=True, show_progress_bar=False))
    assert report.variants["qat_int8"]["cosine_mean"] > 0.5
