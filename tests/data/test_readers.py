"""Readers and up-front validation: every format, bundled names, and every bad-input path with file:line."""

from __future__ import annotations

import gzip
import json

import pytest

from lmforge.data.labeled import check_class_counts, check_labels_known, load_text_label
from lmforge.data.readers import iter_documents, resolve
from lmforge.errors import DataError
from tests.conftest import write_jsonl

ROWS = [{"text": f"text number {i}", "label": "pos" if i % 2 else "neg"} for i in range(10)]


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "csv", "tsv", "parquet"])
def test_every_format_reads_the_same_rows(tmp_path, fmt):
    path = tmp_path / f"data.{fmt}"
    if fmt.startswith("jsonl"):
        text = "".join(json.dumps(r) + "\n" for r in ROWS)
        path.write_bytes(gzip.compress(text.encode()) if fmt.endswith(".gz") else text.encode())
    elif fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        path.write_text("text" + sep + "label\n" + "".join(f"{r['text']}{sep}{r['label']}\n" for r in ROWS))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), path)
    data = load_text_label(str(path))
    assert data.texts == [r["text"] for r in ROWS]
    assert data.labels == [r["label"] for r in ROWS]


def test_bundled_names_and_splits():
    train = resolve("movie-reviews")
    test = resolve("movie-reviews:test")
    assert train.split == "train" and test.split == "test"
    assert train.files[0].name == "movie_reviews.train.jsonl.gz"
    data = load_text_label("spam:dev")
    assert len(data) == 295 and set(data.labels) == {"spam", "ham"}


def test_path_with_split_filters_a_split_column(tmp_path):
    rows = [{"text": "a", "label": "x", "split": "train"}, {"text": "b", "label": "y", "split": "test"}]
    path = write_jsonl(tmp_path / "all.jsonl", rows)
    assert load_text_label(f"{path}:test").texts == ["b"]


def test_folder_with_split_files(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS[:6])
    write_jsonl(tmp_path / "test.jsonl", ROWS[6:])
    assert len(load_text_label(str(tmp_path))) == 6
    assert len(load_text_label(f"{tmp_path}:test")) == 4


def test_unknown_name_suggests_the_close_one():
    with pytest.raises(DataError) as err:
        resolve("movie-review")
    assert "did you mean 'movie-reviews'" in str(err.value)


def test_unknown_split_lists_the_real_ones():
    with pytest.raises(DataError) as err:
        resolve("spam:validation")
    assert "spam:train" in str(err.value) and "spam:dev" in str(err.value)


def test_every_bad_row_is_reported_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b'{"text": "fine", "label": "a"}\n'
        b'{"text": "broken", "label": \n'
        b'{"txt": "wrong field", "label": "a"}\n'
        b'{"text": "no label"}\n'
        b'{"text": "bad \xff byte", "label": "b"}\n'
        b'["not", "an", "object"]\n'
    )
    with pytest.raises(DataError) as err:
        load_text_label(str(path))
    message = str(err.value)
    assert f"{path}:2: invalid JSON" in message
    assert f"{path}:3: no 'text' field (fields present: txt, label)" in message
    assert f"{path}:4: no 'label' field (fields present: text)" in message
    assert f"{path}:5: invalid UTF-8" in message
    assert f"{path}:6: expected a JSON object" in message


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        resolve(str(tmp_path / "nope.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_text_label(str(empty))


def test_csv_with_extra_cells_names_the_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nok,a\ntoo,many,cells\n")
    with pytest.raises(DataError) as err:
        load_text_label(str(path))
    assert f"{path}:3" in str(err.value)


def test_unseen_eval_label_and_small_classes(tmp_path):
    train = load_text_label(str(write_jsonl(tmp_path / "t.jsonl", ROWS + [{"text": "z", "label": "rare"}])))
    with pytest.raises(DataError) as err:
        check_class_counts(train, 2)
    assert "'rare': 1 example" in str(err.value)
    dev = load_text_label(str(write_jsonl(tmp_path / "d.jsonl", [{"text": "q", "label": "other"}])))
    with pytest.raises(DataError) as err:
        check_labels_known(dev, ["neg", "pos"], "dev")
    assert "'other'" in str(err.value) and f"{tmp_path / 'd.jsonl'}:1" in str(err.value)


def test_corpus_documents_are_blank_line_separated(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("one a\none b\n\n\ntwo a\n\nthree a\nthree b\nthree c\n")
    assert [len(d) for d in iter_documents([path])] == [2, 1, 3]


def test_a_parallel_corpus_gives_both_languages_and_a_record_without_text_is_named(tmp_path):
    """The bundled translation pairs read as a corpus (a tokenizer or a T5 for both languages) give each side as a
    document; a user's records with no text field are refused with the file and line."""
    import itertools

    from lmforge.data.readers import corpus_files

    with gzip.open(corpus_files(["translation:dev"])[0], "rt", encoding="utf-8") as f:
        first = json.loads(f.readline())
    assert list(itertools.islice(iter_documents(corpus_files(["translation:dev"])), 2)) == [[first["en"]],
                                                                                           [first["es"]]]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"en": "one", "es": "uno"}\n')
    with pytest.raises(DataError) as err:
        list(iter_documents([pairs]))
    assert f"{pairs}:1" in str(err.value) and "fields present: en, es" in str(err.value)
