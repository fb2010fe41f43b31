"""Loaders for the embedded sentences, local files and `datasets` names (on local files only)."""
import json

import pytest

from qat.config import SourceConfig
from qat.data import PairSet, RerankSet, builtin_sentences, load_task, load_texts
from qat.errors import QatError


def test_builtin_sentences_are_many_and_distinct():
    sentences = builtin_sentences()
    assert len(sentences) >= 300 and len(set(sentences)) == len(sentences)
    assert load_texts(SourceConfig(offset=10, limit=5)) == sentences[10:15]


def test_sts_tsv_with_bare_quotes(tmp_path):
    path = tmp_path / "sts.tsv"
    path.write_text('score\tsentence1\tsentence2\n5.000\tHe said "hi".\tHe said hi.\n0.5\tA cat.\tA "dog\n')
    pairs = load_task(SourceConfig(kind="file", path=str(path), format="pairs"))
    assert isinstance(pairs, PairSet)
    assert pairs.sentence1 == ['He said "hi".', "A cat."] and pairs.sentence2[1] == 'A "dog' and pairs.scores == [5.0, 0.5]
    texts = load_texts(SourceConfig(kind="file", path=str(path), format="pairs"))
    assert texts == ['He said "hi".', "He said hi.", "A cat.", 'A "dog']


def test_rerank_jsonl(tmp_path):
    path = tmp_path / "rr.jsonl"
    rows = [{"qid": "1", "query": "q1", "positive": ["p1"], "negative": ["n1", "n2"]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rerank = load_task(SourceConfig(kind="file", path=str(path), format="rerank"))
    assert isinstance(rerank, RerankSet) and rerank.negatives == [["n1", "n2"]]
    assert load_texts(SourceConfig(kind="file", path=str(path), format="rerank")) == ["q1", "p1", "n1", "n2"]


def test_hub_loader_on_a_local_dataset_folder(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"sent": "first text"}\n{"sent": "second text"}\n')
    source = SourceConfig(kind="hub", path=str(folder), split="train", columns={"text": "sent"})
    assert load_texts(source) == ["first text", "second text"]


def test_csv_and_renamed_columns(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('label,a,b\n1.5,"x, y",z\n')
    pairs = load_task(SourceConfig(kind="file", path=str(path), format="pairs",
                                   columns={"score": "label", "sentence1": "a", "sentence2": "b"}))
    assert pairs.sentence1 == ["x, y"] and pairs.scores == [1.5]


@pytest.mark.parametrize("content, message", [
    ("score\tsentence1\n1\tonly one\n", "lacks column(s) ['sentence2']"),
    ("score\tsentence1\tsentence2\n", "has no rows"),
    ("score\tsentence1\tsentence2\nhigh\ta\tb\n", "non-numeric score"),
])
def test_bad_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(QatError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        load_task(SourceConfig(kind="file", path=str(path), format="pairs"))


def test_missing_file_and_bad_format():
    with pytest.raises(QatError, match="does not exist"):
        load_texts(SourceConfig(kind="file", path="/nonexistent/file.tsv"))
    with pytest.raises(QatError, match="format"):
        SourceConfig(format="images")
