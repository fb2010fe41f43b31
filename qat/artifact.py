"""The PTQ artifact: fp32 weights (safetensors) and tokenizer, the IPEX qconf, and metadata, in one folder."""
from __future__ import annotations

import importlib.metadata
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from qat.atomic import new_directory, write_json
from qat.config import ModelConfig
from qat.errors import QatError
from qat.load import Encoder, load_encoder
from qat.quant.qconf import Qconf
from qat.quant.smoothquant import SMOOTH_BUFFER, restore_smoothing

MODEL_DIR, QCONF_FILE, METADATA_FILE = "model", "qconf.json", "metadata.json"
VERSIONED = ("torch", "intel_extension_for_pytorch", "neural_compressor_pt", "transformers", "accelerate", "qat")


def library_versions(more: tuple[str, ...] = ()) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED + more:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass
class PtqArtifact:
    encoder: Encoder
    qconf: Qconf
    metadata: dict[str, Any]


def write_ptq_artifact(path: Path, encoder: Encoder, qconf: Qconf, metadata: dict[str, Any]) -> Path:
    """Write atomically: the folder appears complete or not at all."""
    with new_directory(path) as tmp:
        encoder.model.save_pretrained(tmp / MODEL_DIR, safe_serialization=True)
        encoder.tokenizer.save_pretrained(tmp / MODEL_DIR)
        qconf.write(tmp / QCONF_FILE)
        write_json(tmp / METADATA_FILE, {
            "model": encoder.source, "pooling": encoder.pooling, "max_length": encoder.max_length,
            "int8_ops": qconf.int8_counts(), "versions": library_versions(), **metadata,
        })
    return path


def saved_smoothing(model_dir: Path) -> dict[str, torch.Tensor]:
    """SmoothQuant's 1/s buffers saved with the migrated weights (transformers does not load them back)."""
    buffers = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as tensors:
            for key in tensors.keys():
                if key.endswith("." + SMOOTH_BUFFER):
                    buffers[key.removesuffix("." + SMOOTH_BUFFER)] = tensors.get_tensor(key)
    return buffers


def check_ptq_artifact(path: Path) -> None:
    """A folder written by qat's calibration (checked before any model is loaded)."""
    if not path.is_dir():
        raise QatError(f"PTQ artifact {str(path)!r} does not exist; expected a folder written by qat's calibration "
                       f"(model/, {QCONF_FILE}, {METADATA_FILE})")
    if not (path / METADATA_FILE).is_file():
        raise QatError(f"PTQ artifact {str(path)!r} has no {METADATA_FILE}; expected a folder written by qat's calibration")


def read_ptq_artifact(path: Path) -> PtqArtifact:
    check_ptq_artifact(path)
    metadata = json.loads((path / METADATA_FILE).read_text())
    encoder = load_encoder(ModelConfig(str(path / MODEL_DIR), metadata["pooling"], metadata["max_length"]))
    encoder.source = metadata["model"]
    restore_smoothing(encoder.model, saved_smoothing(path / MODEL_DIR))
    return PtqArtifact(encoder, Qconf.read(path / QCONF_FILE), metadata)
