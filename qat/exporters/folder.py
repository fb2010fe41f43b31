"""The export folder's own description, qat_model.json: what a loader needs to run an export without guessing
(pooling, max length, kind, input names, the model file of each runtime), the recipe, and the versions it was made
with; and the sentence-transformers layout beside it (config.json, modules.json, sentence_bert_config.json,
1_Pooling/, 2_Normalize/), so that `SentenceTransformer(folder, backend="onnx" | "openvino", ...)` or, for a score
model, `CrossEncoder(folder, ...)` finds what it reads."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qat.base.atomic import write_json
from qat.base.errors import QatError
from qat.base.versions import library_versions
from qat.load import Encoder, save_model_settings
from qat.quant.qconf import Qconf

INFO_FILE = "qat_model.json"
EXPORT_FORMAT = 1   # the folder layout and the model's signature; bump when either changes
IPEX_FILE = "model_int8.pt"   # the one model file of folders written before runtimes were recorded


@dataclass
class ExportInfo:
    """What qat_model.json says about an export."""

    format: int
    kind: str                       # 'embedding' (pooled sentence vectors) or 'scores' (a head's outputs for pairs)
    pooling: str                    # 'mean', 'cls' or 'max'
    max_length: int
    input_names: list[str]
    int8_ops: dict[str, int]        # the recipe: op kind -> how many run in int8
    versions: dict[str, str] = field(default_factory=dict)
    runtimes: dict[str, str] = field(default_factory=lambda: {"ipex": IPEX_FILE})   # runtime -> its model file
    normalize: bool = True          # the model's output is L2-normalised (its own Normalize module)
    prompts: dict[str, str] = field(default_factory=dict)   # named prompts, as sentence-transformers keeps them


def write_export_folder(out_dir: Path, encoder: Encoder, qconf: Qconf, runtimes: dict[str, Path]) -> None:
    """Make an export folder self-contained: the tokenizer beside the model files, qat_model.json, and the
    sentence-transformers layout. `runtimes` maps each runtime to its model file, relative to the folder."""
    encoder.tokenizer.save_pretrained(out_dir)
    save_model_settings(out_dir, encoder)
    info = ExportInfo(EXPORT_FORMAT, encoder.kind, encoder.pooling, encoder.max_length, encoder.input_names,
                      qconf.int8_counts(), library_versions(("onnxruntime", "openvino")),
                      {runtime: str(path) for runtime, path in runtimes.items()}, encoder.normalize, encoder.prompts)
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
