"""Loaders for the embedded sentences, local files and `datasets` names (on local files only)."""
import json

import pytest

from qat.config import DataConfig, MixPart, SourceConfig, reads_test_split
from qat.data import (PairSet, RerankSet, RetrievalSet, builtin_sentences, builtin_texts, load_task, load_texts,
                      mix_texts, packed, training_parts, training_texts)
from qat.base.errors import QatError
from qat.evaluation.metrics import load_eval_data


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
    # A score model reads the rows as pairs, one input per row.
    assert load_texts(SourceConfig(kind="file", path=str(path), format="pairs"), pairs=True) == [
        ('He said "hi".', "He said hi."), ("A cat.", 'A "dog')]


def test_rerank_jsonl(tmp_path):
    path = tmp_path / "rr.jsonl"
    rows = [{"qid": "1", "query": "q1", "positive": ["p1"], "negative": ["n1", "n2"]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rerank = load_task(SourceConfig(kind="file", path=str(path), format="rerank"))
    assert isinstance(rerank, RerankSet) and rerank.negatives == [["n1", "n2"]]
    assert load_texts(SourceConfig(kind="file", path=str(path), format="rerank")) == ["q1", "p1", "n1", "n2"]
    assert load_texts(SourceConfig(kind="file", path=str(path), format="rerank"), pairs=True) == [
        ("q1", "p1"), ("q1", "n1"), ("q1", "n2")]


def test_plain_texts_pair_with_the_next_so_n_texts_give_n_pairs():
    sentences = builtin_sentences()
    pairs = load_texts(SourceConfig(limit=3), pairs=True)
    assert pairs == [(sentences[0], sentences[1]), (sentences[1], sentences[2]), (sentences[2], sentences[0])]
    assert len(load_texts(SourceConfig(limit=256), pairs=True)) == 256


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


def test_package_passages_and_guard_cover_long_and_medium_texts_and_do_not_overlap():
    passages, guard = builtin_texts("passages"), builtin_texts("guard")
    for texts in (passages, guard):
        words = sorted(len(t.split()) for t in texts)
        assert len(texts) >= 40 and words[-1] >= 100 and words[len(words) // 2] >= 30
    assert not set(passages) & set(guard) and not set(guard) & set(builtin_sentences())
    with pytest.raises(QatError, match=r"builtin data source path='poems' is not valid; expected one of \['sentences'"):
        SourceConfig(kind="builtin", path="poems")


def test_default_training_text_is_the_calibration_source_unlimited_with_the_package_text(tmp_path):
    path = tmp_path / "sts.tsv"
    path.write_text("score\tsentence1\tsentence2\n" + "".join(f"1\tfirst {i}\tsecond {i}\n" for i in range(300)))
    data = DataConfig(calibration=SourceConfig(kind="file", path=str(path), format="pairs", limit=10))
    parts = training_parts(data)
    assert parts["calibration"].source.limit is None and parts["calibration"].proportion == 2.0
    assert {n: p.source.path for n, p in parts.items() if n != "calibration"} == {"package_sentences": "sentences",
                                                                               "package_passages": "passages"}
    evaluated = {"first 0", builtin_texts("passages")[0]}
    training = training_texts(data, evaluated)
    assert not evaluated & set(training.texts)
    counts = training.counts()
    assert counts["calibration"] == 599 and counts["package_sentences"] == len(builtin_sentences())
    assert counts["package_passages"] == len(builtin_texts("passages")) - 1
    # the source that needs the longest stream for its share (329 sentences at a quarter) sets the length; the others
    # repeat
    mixed, _ = mix_texts(parts, cycle=True)
    assert len(mixed) == 4 * len(builtin_sentences()) and training.texts == [t for t in mixed if t not in evaluated]
    # the builtin data's calibration source is the package's sentences: not mixed in twice
    assert set(training_parts(DataConfig())) == {"calibration", "package_passages"}


def test_packed_passages_reach_the_word_count_and_keep_pairs_apart():
    assert packed(["a b", "c d e", "f", "g h i", "j"], 4) == ["a b c d e", "f g h i"]   # the short remainder dropped
    assert packed(["a b", "c"], 10) == ["a b c"]   # too few words for one passage: all of them, not none
    assert packed([("a", "b c"), ("d e", "f")], 5) == [("a d e", "b c f")]
    with pytest.raises(QatError, match=r"data source pack_words=0 is not valid; expected a positive number"):
        SourceConfig(pack_words=0)


def test_a_packed_training_source_fills_passages_without_evaluated_text(tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_text("".join(f"sentence number {i}\n" for i in range(100)))
    source = SourceConfig(kind="file", path=str(path), pack_words=30)
    data = DataConfig(train={"long": MixPart(1.0, source)})
    training = training_texts(data, {"sentence number 5"})
    assert len(training.texts) == 99 // 10 and all(len(t.split()) == 30 for t in training.texts)
    assert training.texts[0].startswith("sentence number 0 sentence number 1 ") and "number 5 " not in training.texts[0]
    with pytest.raises(QatError, match=r"\(pack_words=30\) has no text that is not also evaluated"):
        training_texts(data, {f"sentence number {i}" for i in range(100)})


def test_the_task_loss_reads_the_labelled_training_pairs_without_evaluated_text(tmp_path):
    path = tmp_path / "sts.tsv"
    path.write_text("score\tsentence1\tsentence2\n" + "".join(f"{i % 6}\tfirst {i}\tsecond {i}\n" for i in range(300)))
    data = DataConfig(calibration=SourceConfig(kind="file", path=str(path), format="pairs", limit=10))
    task = training_texts(data, {"first 0", "second 1"}, task=True).task
    assert len(task.scores) == 298 and task.pairs()[0] == ("first 2", "second 2") and task.scores[:2] == [2.0, 3.0]
    # a score model's evaluated inputs are pairs: only the pair itself is left out
    assert len(training_texts(data, {("first 2", "second 2")}, pairs=True, task=True).task.scores) == 299
    assert training_texts(data, set()).task is None
    with pytest.raises(QatError, match=r"train.task_weight needs labelled pairs, but the training sources "
                                       r"\['calibration', 'package_passages'\] have no source of format pairs"):
        training_texts(DataConfig(), set(), task=True)


def test_a_training_source_with_nothing_but_evaluated_text_is_refused():
    data = DataConfig(train={"only": MixPart(1.0, SourceConfig(limit=3))})
    with pytest.raises(QatError, match=r"data.train sources \['only'\] yield no text that is not also evaluated"):
        training_texts(data, set(builtin_sentences()[:3]))


def write_beir(folder, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td3\t1\n"):
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "T" if i == 1 else "",
                                                             "text": f"doc {i}"}) + "\n" for i in range(1, 5)))
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "second"}\n'
                                          '{"_id": "q3", "text": "unjudged"}\n')
    (folder / "qrels" / "dev.tsv").write_text(qrels)
    return SourceConfig(kind="file", path=str(folder), format="beir", split="dev")


def test_beir_folder(tmp_path):
    retrieval = load_task(write_beir(tmp_path / "beir"))
    assert isinstance(retrieval, RetrievalSet)
    assert retrieval.queries == {"q1": "first", "q2": "second"} and retrieval.corpus["d1"] == "T doc 1"
    assert retrieval.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 1}}
    assert load_texts(write_beir(tmp_path / "again"))[:2] == ["first", "second"]


@pytest.mark.parametrize("split, qrels, message", [
    ("test", None, r"has no qrels/test.tsv; expected a split of \['dev'\]"),
    ("dev", "query-id\tcorpus-id\tscore\nq1\td9\t1\n", "line 2 names document 'd9', which is not in corpus.jsonl"),
    ("dev", "query-id\tcorpus-id\tscore\nq7\td1\t1\n", "line 2 names query 'q7', which is not in queries.jsonl"),
    ("dev", "query-id\tcorpus-id\tscore\nq1\td1\thigh\n", "line 2 is not 'query-id corpus-id score'"),
    ("dev", "query-id\tcorpus-id\tscore\nq1\td1\t0\n", "has no query with a relevant document"),
])
def test_bad_beir_folders_are_one_line_errors(tmp_path, split, qrels, message):
    source = write_beir(tmp_path / "beir", **({"qrels": qrels} if qrels else {}))
    with pytest.raises(QatError, match=message):
        load_task(SourceConfig(kind="file", path=source.path, format="beir", split=split))


def test_a_beir_test_split_is_acceptance_data_whatever_its_task_set_is_named(tmp_path):
    """Only scored: a BEIR folder read at its test split never reaches the dev sets that choices read."""
    source = write_beir(tmp_path / "beir")
    (tmp_path / "beir" / "qrels" / "test.tsv").write_text((tmp_path / "beir" / "qrels" / "dev.tsv").read_text())
    test_split = SourceConfig(kind="file", path=source.path, format="beir", split="test")
    everything, dev = load_eval_data(DataConfig(tasks={"scifact": test_split, "retrieval": source}))
    assert set(everything.tasks) == {"scifact", "retrieval"} and set(dev.tasks) == {"retrieval"}
    assert reads_test_split("scifact", test_split) and not reads_test_split("retrieval", source)
    with pytest.raises(QatError, match="data.guard.scifact reads a test split"):
        DataConfig(guard={"scifact": test_split})
