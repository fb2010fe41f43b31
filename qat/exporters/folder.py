"""The export folder's own description, qat_model.json: what a loader needs to run the TorchScript without
guessing (pooling, max length, kind, input names), the recipe, and the versions it was made with."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qat.base.versions import library_versions
from qat.base.atomic import write_json
from qat.base.errors import QatError
from qat.load import Encoder
from qat.quant.qconf import Qconf

INFO_FILE = "qat_model.json"
EXPORT_FORMAT = 1   # the folder layout and the model's signature; bump when either changes


@dataclass
class ExportInfo:
    """What qat_model.json says about an export."""

    format: int
    kind: str                       # 'embedding' (pooled sentence vectors) or 'scores' (a head's outputs for pairs)
    pooling: str                    # 'mean' or 'cls'
    max_length: int
    input_names: list[str]
    int8_ops: dict[str, int]        # the recipe: op kind -> how many run in int8
    versions: dict[str, str] = field(default_factory=dict)


def write_export_folder(out_dir: Path, encoder: Encoder, qconf: Qconf) -> None:
    """Make an export folder self-contained: the tokenizer beside the TorchScript, and qat_model.json."""
    encoder.tokenizer.save_pretrained(out_dir)
    info = ExportInfo(EXPORT_FORMAT, encoder.kind, encoder.pooling, encoder.max_length, encoder.input_names,
                      qconf.int8_counts(), library_versions())
    write_json(out_dir / INFO_FILE, asdict(info))


def read_export_info(folder: Path) -> ExportInfo:
    path = folder / INFO_FILE
    if not path.is_file():
        raise QatError(f"{str(folder)!r} is not a qat export folder (no {INFO_FILE}); expected a folder written by "
                       "qat's export (export/ptq or export/qat of a run)")
    data = json.loads(path.read_text())
    if data.get("format") != EXPORT_FORMAT:
        made_by = data.get("versions", {}).get("qat", "unknown")
        raise QatError(f"export {str(folder)!r} has format {data.get('format')!r} (made by qat {made_by}); this qat "
                       f"reads format {EXPORT_FORMAT}; expected an export of a compatible qat version")
    return ExportInfo(**data)
