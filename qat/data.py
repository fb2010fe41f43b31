"""Text sets: the embedded sentences, local TSV/CSV/JSONL/TXT files, and `datasets` hub names."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from qat.config import DataConfig, MixPart, SourceConfig
from qat.errors import QatError

REQUIRED_COLUMNS = {
    "text": ("text",),
    "pairs": ("score", "sentence1", "sentence2"),
    "rerank": ("query", "positive", "negative"),
}


@dataclass
class PairSet:
    """STS-style sentence pairs with a gold similarity score."""

    sentence1: list[str]
    sentence2: list[str]
    scores: list[float]


@dataclass
class RerankSet:
    """Queries, each with relevant (positive) and irrelevant (negative) candidates."""

    queries: list[str]
    positives: list[list[str]]
    negatives: list[list[str]]


def builtin_sentences() -> list[str]:
    """The several hundred English sentences written for this project and shipped in the package."""
    text = resources.files("qat").joinpath("resources/sentences.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def _read_file(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise QatError(f"data file {str(path)!r} does not exist; expected a .tsv, .csv, .jsonl or .txt file")
    suffix = path.suffix.lower()
    try:
        return _parse_file(path, suffix)
    except UnicodeDecodeError as error:
        raise QatError(f"data file {str(path)!r} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                       f"{error.start}); expected UTF-8") from None


def _parse_file(path: Path, suffix: str) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8", newline="") as handle:
        if suffix == ".tsv":
            # STS files contain bare quotes: no quoting, split on tabs only.
            return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
        if suffix == ".csv":
            return list(csv.DictReader(handle))
        if suffix in (".jsonl", ".json"):
            try:
                return [json.loads(line) for line in handle if line.strip()]
            except json.JSONDecodeError as error:
                raise QatError(f"data file {str(path)!r} is not JSON lines: {error}") from None
        if suffix == ".txt":
            return [{"text": line.rstrip("\n")} for line in handle if line.strip()]
    raise QatError(f"data file {str(path)!r} has suffix {suffix!r}; expected .tsv, .csv, .jsonl or .txt")


def _read_hub(source: SourceConfig) -> list[dict[str, Any]]:
    import datasets

    try:
        dataset = datasets.load_dataset(source.path, source.subset, split=source.split)
    except Exception as error:  # datasets raises many types; all mean "cannot load this name"
        raise QatError(f"cannot load dataset {source.path!r} (split {source.split!r}): {str(error).splitlines()[0]}") from None
    return [dict(row) for row in dataset]


def read_rows(source: SourceConfig) -> list[dict[str, Any]]:
    """Rows of a source with its columns renamed, sliced by offset/limit, checked for the format's columns."""
    if source.kind == "builtin":
        rows: list[dict[str, Any]] = [{"text": line} for line in builtin_sentences()]
        where = "builtin sentences"
    elif source.kind == "file":
        rows, where = _read_file(Path(source.path)), source.path
    else:
        rows, where = _read_hub(source), source.path
    rename = {theirs: ours for ours, theirs in source.columns.items()}
    rows = [{rename.get(k, k): v for k, v in row.items()} for row in rows]
    end = None if source.limit is None else source.offset + source.limit
    rows = rows[source.offset:end]
    if not rows:
        raise QatError(f"data source {where!r} has no rows (offset={source.offset}, limit={source.limit}); expected at least one")
    required = REQUIRED_COLUMNS[source.format]
    missing = [c for c in required if c not in rows[0]]
    if missing:
        raise QatError(
            f"data source {where!r} lacks column(s) {missing} for format {source.format!r}; "
            f"expected {list(required)}, found {sorted(rows[0])}"
        )
    for number, row in enumerate(rows, start=1):
        if any(row.get(c) is None for c in required):
            raise QatError(f"data source {where!r} row {number} has an empty field; expected values for {list(required)}")
    return rows


def load_texts(source: SourceConfig) -> list[str]:
    """Unlabelled texts of any format (pairs give both sentences, reranking gives queries and candidates)."""
    rows = read_rows(source)
    if source.format == "text":
        texts = [str(r["text"]) for r in rows]
    elif source.format == "pairs":
        texts = [str(r[c]) for r in rows for c in ("sentence1", "sentence2")]
    else:
        texts = [t for r in rows for t in [r["query"], *r["positive"], *r["negative"]]]
    return list(dict.fromkeys(texts))


def _score(value: Any, row: int, where: str) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise QatError(f"data source {where!r} row {row} has a non-numeric score {value!r}; expected a finite number") from None
    if not math.isfinite(score):
        raise QatError(f"data source {where!r} row {row} has score {value!r}; expected a finite number")
    return score


def load_task(source: SourceConfig) -> PairSet | RerankSet:
    rows = read_rows(source)
    if source.format == "pairs":
        scores = [_score(r["score"], number, source.path) for number, r in enumerate(rows, start=1)]
        return PairSet([str(r["sentence1"]) for r in rows], [str(r["sentence2"]) for r in rows], scores)
    if source.format == "rerank":
        return RerankSet([str(r["query"]) for r in rows], [list(r["positive"]) for r in rows], [list(r["negative"]) for r in rows])
    raise QatError(f"format {source.format!r} has no task metric; expected 'pairs' or 'rerank'")


def mix_texts(parts: dict[str, MixPart]) -> tuple[list[str], list[str]]:
    """Texts of several sources interleaved so that every prefix keeps the proportions (to within one text);
    the mix is as long as the scarcest source allows. Returns the texts and each text's source name."""
    pools = {name: load_texts(part.source) for name, part in parts.items()}
    total = sum(part.proportion for part in parts.values())
    shares = {name: part.proportion / total for name, part in parts.items()}
    length = int(min(len(pools[name]) / share for name, share in shares.items()))
    taken = dict.fromkeys(parts, 0)
    texts, origins = [], []
    for position in range(1, length + 1):
        name = max(shares, key=lambda n: shares[n] * position - taken[n])
        if taken[name] >= len(pools[name]):
            break
        texts.append(pools[name][taken[name]])
        origins.append(name)
        taken[name] += 1
    return texts, origins


def calibration_texts(data: DataConfig) -> tuple[list[str], list[str] | None]:
    """The calibration (and training) texts, and each text's source name when they are a mix."""
    return mix_texts(data.mix) if data.mix else (load_texts(data.calibration), None)
