"""Shared fixtures: a tiny random-weight BERT saved as a local model folder, and short texts."""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from transformers import AutoTokenizer, BertConfig, BertModel

from qat.config import ModelConfig
from qat.data import builtin_sentences
from qat.load import Encoder, load_encoder, resolve_model_path

warnings.filterwarnings("ignore", category=UserWarning)
REPO = Path(__file__).resolve().parents[1]


# IPEX (the ipex extra) runs only on torch 2.8: without it, the tests of its export are skipped, and say so.
HAS_IPEX = importlib.util.find_spec("intel_extension_for_pytorch") is not None


def pytest_collection_modifyitems(config, items):
    if HAS_IPEX:
        return
    skip = pytest.mark.skip(reason="needs IPEX: pip install -e '.[ipex]' (torch 2.8)")
    for item in items:
        if item.get_closest_marker("ipex"):
            item.add_marker(skip)


@pytest.fixture
def ipex_export():
    """qat's IPEX exporter (a test that takes it is skipped where IPEX is not installed)."""
    pytest.importorskip("intel_extension_for_pytorch")
    from qat.exporters import ipex

    return ipex


# Jobs whose subject is not the runtimes export for one runtime only, IPEX's where it is installed (its unfused graph
# is the simulation exactly), else ONNX Runtime's (tests/test_user_surface.py and the architectures' and the bundled
# model's end-to-end runs check every runtime).
ONE_RUNTIME = "ipex" if HAS_IPEX else "onnx"
ONE_TARGET = f"export.targets=[{ONE_RUNTIME}]"


def save_bert(path: Path, **config) -> Path:
    """A BERT with random weights (2 layers, 32 wide unless `config` says otherwise) and the bundled MiniLM
    tokenizer, saved as a Hugging Face folder."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("bundled:all-MiniLM-L6-v2"))
    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, **config}
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, **sizes)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with random weights and the bundled MiniLM tokenizer."""
    path = save_bert(tmp_path_factory.mktemp("tiny_bert"), max_position_embeddings=64)
    return path


@pytest.fixture
def tiny_encoder(tiny_model_dir: Path) -> Encoder:
    return load_encoder(ModelConfig(name_or_path=str(tiny_model_dir), max_length=32))


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return builtin_sentences()


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps its state in process-wide singletons; the job makes its own Accelerator."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
