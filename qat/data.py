"""Text sets: the package's own text, local TSV/CSV/JSONL/TXT files, BEIR folders, and `datasets` hub names."""
from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from qat.config import DataConfig, MixPart, SourceConfig
from qat.base.errors import QatError

# The default training mix: the calibration sources (without their limit) and the package's own text, by share.
TASK_SHARE = 2.0
PACKAGE_SHARES = {"sentences": 1.0, "passages": 1.0}
PASSAGE_PART = 3   # sentences per part of a passage

Text = str | tuple[str, str]     # one input: a text, or a (text_a, text_b) pair for a score model

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

    def pairs(self) -> list[tuple[str, str]]:
        return list(zip(self.sentence1, self.sentence2))


@dataclass
class RerankSet:
    """Queries, each with relevant (positive) and irrelevant (negative) candidates."""

    queries: list[str]
    positives: list[list[str]]
    negatives: list[list[str]]

    def pairs(self) -> list[tuple[str, str]]:
        """(query, candidate) for every candidate of every query."""
        return [(q, c) for q, pos, neg in zip(self.queries, self.positives, self.negatives) for c in pos + neg]


@dataclass
class RetrievalSet:
    """A BEIR-layout retrieval set: queries, a corpus, and graded relevance of documents for each query."""

    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]


def builtin_sentences() -> list[str]:
    """The several hundred English sentences written for this project and shipped in the package."""
    text = resources.files("qat").joinpath("resources/sentences.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def builtin_passages(name: str) -> list[str]:
    """The package's passages (`passages` for training, `guard` for the guard set), each followed by its parts of
    three sentences: texts of medium length and up to about 150 tokens, enough of them for a similarity-score
    distribution."""
    text = resources.files("qat").joinpath(f"resources/{name}.txt").read_text(encoding="utf-8")
    texts = []
    for passage in (p.strip() for p in text.split("\n\n") if p.strip()):
        sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9])", passage)
        texts += [passage] + [" ".join(sentences[i:i + PASSAGE_PART]) for i in range(0, len(sentences), PASSAGE_PART)]
    return list(dict.fromkeys(texts))


def builtin_texts(name: str) -> list[str]:
    return builtin_sentences() if name == "sentences" else builtin_passages(name)


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
        rows: list[dict[str, Any]] = [{"text": line} for line in builtin_texts(source.path)]
        where = f"builtin {source.path}"
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


def _read_jsonl_ids(path: Path) -> dict[str, dict[str, Any]]:
    rows = _read_file(path)
    if rows and "_id" not in rows[0]:
        raise QatError(f"BEIR file {str(path)!r} lacks the '_id' field; expected JSON lines with _id and text")
    return {str(row["_id"]): row for row in rows}


def load_retrieval(source: SourceConfig) -> RetrievalSet:
    """A BEIR folder: corpus.jsonl, queries.jsonl and qrels/<split>.tsv (query-id, corpus-id, score). A document
    is its title and text joined, as BEIR's dense retrievers read it. offset/limit slice the judged queries."""
    folder = Path(source.path)
    qrels_path = folder / "qrels" / f"{source.split}.tsv"
    if not qrels_path.is_file():
        found = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise QatError(f"BEIR folder {source.path!r} has no qrels/{source.split}.tsv; expected a split of {found}")
    corpus = {doc_id: " ".join(filter(None, [str(row.get("title") or ""), str(row.get("text") or "")]))
              for doc_id, row in _read_jsonl_ids(folder / "corpus.jsonl").items()}
    queries = {qid: str(row.get("text") or "") for qid, row in _read_jsonl_ids(folder / "queries.jsonl").items()}
    qrels: dict[str, dict[str, int]] = {}
    for number, row in enumerate(_read_file(qrels_path), start=2):
        try:
            qid, doc_id, score = str(row["query-id"]), str(row["corpus-id"]), int(row["score"])
        except (KeyError, TypeError, ValueError):
            raise QatError(f"BEIR qrels {str(qrels_path)!r} line {number} is not 'query-id corpus-id score'; "
                           f"expected a header and integer scores") from None
        for name, value, known in (("query", qid, queries), ("document", doc_id, corpus)):
            if value not in known:
                raise QatError(f"BEIR qrels {str(qrels_path)!r} line {number} names {name} {value!r}, which is not in "
                               f"{'queries' if name == 'query' else 'corpus'}.jsonl; expected ids of that file")
        qrels.setdefault(qid, {})[doc_id] = score
    judged = [q for q, docs in qrels.items() if any(score > 0 for score in docs.values())]
    end = None if source.limit is None else source.offset + source.limit
    judged = judged[source.offset:end]
    if not judged:
        raise QatError(f"BEIR folder {source.path!r} has no query with a relevant document in qrels/{source.split}.tsv "
                       f"(offset={source.offset}, limit={source.limit}); expected at least one")
    return RetrievalSet({q: queries[q] for q in judged}, corpus, {q: qrels[q] for q in judged})


def load_texts(source: SourceConfig, pairs: bool = False) -> list[Text]:
    """Unlabelled inputs of any format: single texts (pairs give both sentences, reranking gives queries and
    candidates, BEIR gives queries and documents), or with `pairs` what a score model reads: the sentence pairs,
    (query, candidate), (query, judged document), or each text paired with the next (the last with the first).
    Single texts are deduplicated; pairs are not, so that a source of n rows gives n pairs (a calibration limit
    counts the same for both kinds of model)."""
    if source.format == "beir":
        retrieval = load_retrieval(source)
        if pairs:
            return [(retrieval.queries[q], retrieval.corpus[d]) for q, docs in retrieval.qrels.items() for d in docs]
        return list(dict.fromkeys([*retrieval.queries.values(), *retrieval.corpus.values()]))
    rows = read_rows(source)
    texts: list[Text]
    if source.format == "text":
        texts = [str(r["text"]) for r in rows]
        if pairs:
            texts = list(zip(texts, texts[1:] + texts[:1]))
    elif source.format == "pairs":
        texts = ([(str(r["sentence1"]), str(r["sentence2"])) for r in rows] if pairs
                 else [str(r[c]) for r in rows for c in ("sentence1", "sentence2")])
    else:
        candidates = [(str(r["query"]), [str(c) for c in [*r["positive"], *r["negative"]]]) for r in rows]
        texts = ([(q, c) for q, cs in candidates for c in cs] if pairs
                 else [t for q, cs in candidates for t in [q, *cs]])
    return texts if pairs else list(dict.fromkeys(texts))


def _score(value: Any, row: int, where: str) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise QatError(f"data source {where!r} row {row} has a non-numeric score {value!r}; expected a finite number") from None
    if not math.isfinite(score):
        raise QatError(f"data source {where!r} row {row} has score {value!r}; expected a finite number")
    return score


def load_task(source: SourceConfig) -> PairSet | RerankSet | RetrievalSet:
    if source.format == "beir":
        return load_retrieval(source)
    rows = read_rows(source)
    if source.format == "pairs":
        scores = [_score(r["score"], number, source.path) for number, r in enumerate(rows, start=1)]
        return PairSet([str(r["sentence1"]) for r in rows], [str(r["sentence2"]) for r in rows], scores)
    if source.format == "rerank":
        return RerankSet([str(r["query"]) for r in rows], [list(r["positive"]) for r in rows], [list(r["negative"]) for r in rows])
    raise QatError(f"format {source.format!r} has no task metric; expected 'pairs', 'rerank' or 'beir'")


def word_count(text: Text) -> int:
    """Words of a text, or of both sides of a pair."""
    return len((text if isinstance(text, str) else " ".join(text)).split())


def packed(texts: list[Text], words: int) -> list[Text]:
    """Consecutive texts joined into passages of at least `words` words (a pair's two sides joined apart): inputs
    as long as the model serves, made from texts that are each short. The short remainder is dropped, unless the
    texts are too few for one passage: then they are all one."""
    def joined(run: list[Text]) -> Text:
        return " ".join(run) if isinstance(run[0], str) else (" ".join(a for a, _ in run), " ".join(b for _, b in run))

    passages: list[Text] = []
    run: list[Text] = []
    count = 0
    for text in texts:
        run.append(text)
        count += word_count(text)
        if count >= words:
            passages.append(joined(run))
            run, count = [], 0
    return passages or ([joined(run)] if run else [])


def source_texts(source: SourceConfig, pairs: bool = False, excluded: frozenset[Text] = frozenset()) -> list[Text]:
    """A source's inputs (load_texts), or where the source sets pack_words its texts but the excluded ones packed
    into passages (an evaluated text cannot hide inside a passage)."""
    texts = load_texts(source, pairs)
    if not source.pack_words:
        return texts
    passages = packed([t for t in texts if t not in excluded], source.pack_words)
    if not passages:
        raise QatError(f"data source {source.path!r} (pack_words={source.pack_words}) has no text that is not also "
                       "evaluated; expected texts apart from the held-out, guard and task sets")
    return passages


def mix_texts(parts: dict[str, MixPart], cycle: bool = False, pairs: bool = False,
              excluded: frozenset[Text] = frozenset()) -> tuple[list[Text], list[str]]:
    """Texts of several sources interleaved so that every prefix keeps the proportions (to within one text).
    The mix is as long as the scarcest source allows, or (cycle) as long as the most plentiful source needs,
    the scarcer ones repeating. Returns the texts and each text's source name."""
    pools = {name: source_texts(part.source, pairs, excluded) for name, part in parts.items()}
    total = sum(part.proportion for part in parts.values())
    shares = {name: part.proportion / total for name, part in parts.items()}
    length = int((max if cycle else min)(len(pools[name]) / share for name, share in shares.items()))
    taken = dict.fromkeys(parts, 0)
    texts: list[Text] = []
    origins: list[str] = []
    for position in range(1, length + 1):
        name = max(shares, key=lambda n: shares[n] * position - taken[n])
        if taken[name] >= len(pools[name]) and not cycle:
            break
        texts.append(pools[name][taken[name] % len(pools[name])])
        origins.append(name)
        taken[name] += 1
    return texts, origins


def read_sources(data: DataConfig, calibration: bool, training: bool) -> dict[str, SourceConfig]:
    """The sources a job reads, by setting name: held-out, guard and task sets always; the calibration sources
    (or the mix) and the training sources when the job calibrates or trains."""
    sources = {"data.heldout": data.heldout, **{f"data.guard.{k}": v for k, v in data.guard.items()},
               **{f"data.tasks.{k}": v for k, v in data.tasks.items()}}
    if calibration:
        sources.update({f"data.mix.{k}": part.source for k, part in data.mix.items()} if data.mix
                       else {"data.calibration": data.calibration})
    if training:
        sources.update({f"data.train.{k}": part.source for k, part in data.train.items()})
    return sources


def check_files(data: DataConfig, calibration: bool = True, training: bool = False) -> None:
    """Every file or folder the job reads exists, checked before any model is loaded. A missing one is named with
    its setting and, where its path lies under data.root, with the setting that moves them all."""
    for setting, source in read_sources(data, calibration, training).items():
        if source.kind != "file" or Path(source.path).exists():
            continue
        root = f"; its folder is data.root={data.root!r} (or QAT_DATA_ROOT): set data.root=<your data folder>" \
            if data.root and source.path.startswith(data.root) or not data.root and source.path.startswith("/") else ""
        raise QatError(f"{setting}: {source.path!r} does not exist; expected a "
                       f"{'BEIR folder' if source.format == 'beir' else 'data file'}{root}")


def calibration_texts(data: DataConfig, pairs: bool = False) -> tuple[list[Text], list[str] | None]:
    """The calibration inputs, and each one's source name when they are a mix."""
    return mix_texts(data.mix, pairs=pairs) if data.mix else (load_texts(data.calibration, pairs), None)


def training_parts(data: DataConfig) -> dict[str, MixPart]:
    """data.train, or by default the calibration sources without their limit (together TASK_SHARE) mixed with
    the package's sentences and passages: the student sees the lengths and styles it will serve, not only the
    task's short texts."""
    if data.train:
        return data.train
    calibration = data.mix or {"calibration": MixPart(1.0, data.calibration)}
    total = sum(part.proportion for part in calibration.values())
    parts = {name: MixPart(TASK_SHARE * part.proportion / total, replace(part.source, limit=None))
             for name, part in calibration.items()}
    for name, share in PACKAGE_SHARES.items():
        if not any(part.source.kind == "builtin" and part.source.path == name for part in parts.values()):
            parts[f"package_{name}"] = MixPart(share, SourceConfig(kind="builtin", path=name))
    return parts


@dataclass
class TrainingSet:
    """The training stream (the mix, cycled, evaluated texts removed), each text's source name, and the labelled
    pairs of the training sources when a task loss asks for them."""

    texts: list[Text]
    origins: list[str]
    task: PairSet | None = None

    def counts(self) -> dict[str, int]:
        """Distinct texts per source."""
        return dict(Counter(origin for _, origin in dict.fromkeys(zip(self.texts, self.origins))))


def task_pairs(parts: dict[str, MixPart], evaluated: set[Text], pairs: bool) -> PairSet:
    """The labelled pairs (format 'pairs') of the training sources, for train.task_weight; a pair with an
    evaluated input (a sentence, or the pair itself for a score model) is left out."""
    labelled = [load_task(part.source) for part in parts.values() if part.source.format == "pairs"]
    rows = [(a, b, score) for task in labelled for a, b, score in zip(task.sentence1, task.sentence2, task.scores)
            if ((a, b) not in evaluated if pairs else a not in evaluated and b not in evaluated)]
    if not rows:
        raise QatError(f"train.task_weight needs labelled pairs, but the training sources {sorted(parts)} have "
                       f"{'none that are not evaluated' if labelled else 'no source of format pairs'}; expected a "
                       "data.train source with format pairs (sentence1, sentence2, score)")
    sentence1, sentence2, scores = map(list, zip(*rows))
    return PairSet(sentence1, sentence2, scores)


def training_texts(data: DataConfig, evaluated: set[Text], pairs: bool = False, task: bool = False) -> TrainingSet:
    """The training inputs, and with `task` the labelled pairs: nothing that is evaluated (held-out, guard, task
    sets) is trained on, alone or inside a packed passage."""
    parts = training_parts(data)
    texts, origins = mix_texts(parts, cycle=True, pairs=pairs, excluded=frozenset(evaluated))
    kept = [(text, origin) for text, origin in zip(texts, origins) if text not in evaluated]
    if not kept:
        raise QatError(f"data.train sources {sorted(parts)} yield no text that is not also evaluated; "
                       "expected training texts apart from the held-out, guard and task sets")
    return TrainingSet([text for text, _ in kept], [origin for _, origin in kept],
                       task_pairs(parts, evaluated, pairs) if task else None)
