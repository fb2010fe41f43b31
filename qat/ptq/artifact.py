"""The PTQ artifact: fp32 weights (safetensors) and tokenizer, the IPEX qconf, and its metadata, in one folder.
The metadata is one typed record (PtqMetadata), written and read here only; artifacts of older qat versions,
which lack some of its sections, are still read."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from qat.base.atomic import new_directory, write_json
from qat.base.errors import QatError
from qat.base.versions import library_versions
from qat.config import ModelConfig, SourceConfig
from qat.load import Encoder, load_encoder, save_model_settings
from qat.ptq.trials import AlphaChoice
from qat.quant.config import CalibConfig, EqualizeConfig, QuantConfig, SmoothQuantConfig
from qat.quant.equalize import Equalization
from qat.quant.qconf import Qconf
from qat.quant.smoothquant import SMOOTH_BUFFER, restore_smoothing

MODEL_DIR, QCONF_FILE, METADATA_FILE = "model", "qconf.json", "metadata.json"


@dataclass
class SmoothQuantRecord(SmoothQuantConfig):
    """SmoothQuant as made ('auto' resolved), how 'auto' chose, why `enabled=auto` resolved as it did, and the int8
    Linears it could not reach."""

    choice: AlphaChoice | None = None
    unsmoothed: list[str] = field(default_factory=list)
    auto: str = ""


@dataclass
class EqualizeRecord(EqualizeConfig):
    """Equalization as made (disabled where 'auto' chose to leave it off), how 'auto' chose, the factors folded."""

    choice: AlphaChoice | None = None
    factors: Equalization | None = None


@dataclass
class MixShare:
    proportion: float
    source: SourceConfig
    texts: int           # how many of the calibration texts this source gave


@dataclass
class CalibrationData:
    """What the calibration texts were: one source, or a mix with the texts each source gave."""

    texts: int
    source: SourceConfig | None = None
    mix: dict[str, MixShare] | None = None


@dataclass
class PtqMetadata:
    model: str
    pooling: str
    max_length: int
    int8_ops: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    recipe: QuantConfig | None = None            # None: as in a restored qconf
    calibration: CalibConfig | None = None
    smoothquant: SmoothQuantRecord | None = None
    equalize: EqualizeRecord | None = None
    calibration_data: CalibrationData | None = None
    restored_from: str | None = None             # the foreign qconf a restored PTQ model came from

    @property
    def source(self) -> str:
        """'calibration', or the foreign qconf the PTQ model was restored from."""
        return self.restored_from or "calibration"


def _known(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def _choice(values: dict[str, Any] | None) -> AlphaChoice | None:
    return AlphaChoice(**values) if values else None


def _source(values: dict[str, Any] | None) -> SourceConfig | None:
    return SourceConfig(**values) if values else None


def parse_metadata(values: dict[str, Any]) -> PtqMetadata:
    """The record from metadata.json, of this version or an older one (missing sections are None)."""
    recipe, calib = values.get("recipe"), values.get("calibration")
    smoothquant, equalize = values.get("smoothquant"), values.get("equalize")
    data = values.get("calibration_data")
    return PtqMetadata(
        model=values["model"], pooling=values["pooling"], max_length=values["max_length"],
        int8_ops=values.get("int8_ops", {}), versions=values.get("versions", {}),
        recipe=QuantConfig(**_known(QuantConfig, recipe)) if isinstance(recipe, dict) else None,
        # An artifact recorded before calib.symmetric_matmul existed was calibrated without it.
        calibration=CalibConfig(**{"symmetric_matmul": False, **_known(CalibConfig, calib)})
        if isinstance(calib, dict) else None,
        smoothquant=SmoothQuantRecord(**{**_known(SmoothQuantRecord, smoothquant),
                                         "choice": _choice(smoothquant.get("choice"))}) if smoothquant else None,
        equalize=EqualizeRecord(**{**_known(EqualizeRecord, equalize), "choice": _choice(equalize.get("choice")),
                                   "factors": Equalization(**equalize["factors"]) if equalize.get("factors") else None}
                                ) if equalize else None,
        calibration_data=CalibrationData(
            data["texts"], _source(data.get("source")),
            {name: MixShare(share["proportion"], SourceConfig(**share["source"]), share["texts"])
             for name, share in data["mix"].items()} if data.get("mix") else None) if data else None,
        restored_from=values.get("restored_from"))


@dataclass
class PtqArtifact:
    encoder: Encoder
    qconf: Qconf
    metadata: PtqMetadata


def write_ptq_artifact(path: Path, encoder: Encoder, qconf: Qconf, metadata: PtqMetadata) -> Path:
    """Write atomically: the folder appears complete or not at all."""
    metadata.int8_ops, metadata.versions = qconf.int8_counts(), library_versions()
    with new_directory(path) as tmp:
        encoder.model.save_pretrained(tmp / MODEL_DIR, safe_serialization=True)
        encoder.tokenizer.save_pretrained(tmp / MODEL_DIR)
        save_model_settings(tmp / MODEL_DIR, encoder)
        qconf.write(tmp / QCONF_FILE)
        write_json(tmp / METADATA_FILE, asdict(metadata))
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
    metadata = parse_metadata(json.loads((path / METADATA_FILE).read_text()))
    encoder = load_encoder(ModelConfig(str(path / MODEL_DIR), metadata.pooling, metadata.max_length))
    encoder.source = metadata.model
    restore_smoothing(encoder.model, saved_smoothing(path / MODEL_DIR))
    return PtqArtifact(encoder, Qconf.read(path / QCONF_FILE), metadata)
