"""Extractive-QA data: SQuAD v1.1 JSON and JSON Lines read alike; every bad question is named by file:line and id."""

from __future__ import annotations

import json

import pytest

from lmforge.data.squad import load_qa
from lmforge.errors import DataError
from tests.conftest import BUNDLED, write_jsonl

CONTEXT = "Elizabeth Bennet lived at Longbourn with her four sisters."


def squad_json(qas: list[dict], context: str = CONTEXT) -> dict:
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}


def test_the_bundled_sample_reads_as_squad_v1_1():
    data = load_qa("squad-sample")
    assert len(data) == 11 and len(set(data.contexts)) == 3
    first = data.examples[0]
    assert first.id == "5733be284776f41900661182" and first.answers == ["Saint Bernadette Soubirous"]
    assert first.context[first.answer_starts[0]:].startswith("Saint Bernadette Soubirous")
    assert first.where.endswith("squad_sample.json:18 (question 5733be284776f41900661182)")
    assert [len(e.answers) for e in data.examples][:2] == [1, 3]  # dev-style questions keep every gold answer
    raw = json.loads((BUNDLED / "squad-sample" / "squad_sample.json").read_text())
    assert sum(len(p["qas"]) for a in raw["data"] for p in a["paragraphs"]) == 11


def test_jsonl_answers_as_dict_of_lists_or_list_of_objects(tmp_path):
    rows = [{"id": "a", "question": "Where did she live?", "context": CONTEXT,
             "answers": {"text": ["Longbourn", "at Longbourn"], "answer_start": [26, 23]}},
            {"question": "With whom?", "context": CONTEXT, "answers": [{"text": "her four sisters", "answer_start": 41}]}]
    data = load_qa(str(write_jsonl(tmp_path / "qa.jsonl", rows)))
    assert [e.answers for e in data.examples] == [["Longbourn", "at Longbourn"], ["her four sisters"]]
    assert [e.answer_starts for e in data.examples] == [[26, 23], [41]]
    assert data.examples[0].id == "a" and data.examples[1].id.endswith("qa.jsonl:2")
    # the datasets library's .json export is JSON Lines under a .json name
    exported = tmp_path / "export.json"
    exported.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [e.answers for e in load_qa(str(exported)).examples] == [e.answers for e in data.examples]


def test_every_bad_question_is_named_by_file_line_and_id(tmp_path):
    doc = squad_json([
        {"id": "ok", "question": "Where?", "answers": [{"text": "Longbourn", "answer_start": 26}]},
        {"id": "shifted", "question": "Where?", "answers": [{"text": "Longbourn", "answer_start": 20}]},
        {"id": "absent", "question": "Who?", "answers": [{"text": "Mr. Darcy", "answer_start": 0}]},
        {"id": "blank", "question": "  ", "answers": [{"text": "Longbourn", "answer_start": 26}]},
        {"id": "v2", "question": "Why?", "answers": [], "is_impossible": True},
        {"id": "nostart", "question": "Where?", "answers": [{"text": "Longbourn"}]},
    ])
    path = tmp_path / "train.json"
    path.write_text(json.dumps(doc, indent=1))
    lines = path.read_text().splitlines()
    line_of = {qid: next(i for i, line in enumerate(lines, 1) if f'"id": "{qid}"' in line)
               for qid in ("shifted", "absent", "blank", "v2", "nostart")}
    with pytest.raises(DataError) as caught:
        load_qa(str(path))
    problems = caught.value.problems
    assert len(problems) == 5 and "5 problems" in str(caught.value)
    assert problems[0] == (f"{path}:{line_of['shifted']} (question shifted): answer 0 'Longbourn' is not at "
                           "answer_start 20 of the context (found 'ed at Lon'; the text occurs at 26)")
    assert problems[1].startswith(f"{path}:{line_of['absent']} (question absent): answer 0 'Mr. Darcy'")
    assert problems[1].endswith("the text is not in the context)")
    assert problems[2].startswith(f"{path}:{line_of['blank']} (question blank): 'question' must be a non-empty")
    assert problems[3].startswith(f"{path}:{line_of['v2']} (question v2): no answers (unanswerable")
    assert problems[4].startswith(f"{path}:{line_of['nostart']} (question nostart): answer 0: 'answer_start'")


def test_unreadable_json_and_missing_fields(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": "1.1",\n "data": [\n  {"title": "x",,}\n ]}\n')
    with pytest.raises(DataError, match=rf"{broken}:3: invalid JSON: Expecting property name"):
        load_qa(str(broken))
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"question": "q?", "context": CONTEXT,
                                                  "answers": [{"text": "Longbourn", "answer_start": 26}]},
                                                 {"question": "q?", "text": CONTEXT}])
    with pytest.raises(DataError) as caught:
        load_qa(str(rows))
    assert caught.value.problems == [f"{rows}:2: no 'context', 'answers' fields (fields present: question, text)"]
    not_squad = tmp_path / "list.json"
    not_squad.write_text("[1, 2]")
    with pytest.raises(DataError, match="expected SQuAD JSON"):
        load_qa(str(not_squad))


def test_the_cli_exits_2_naming_the_file_and_line(cli, tmp_path, tiny_bert_dir):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(squad_json([{"id": "q1", "question": "Where?",
                                            "answers": [{"text": "Longbourn", "answer_start": 3}]}]), indent=1))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if '"id": "q1"' in text)
    result = cli("finetune", "qa", "--model", tiny_bert_dir, "--data", path, "--out", tmp_path / "run",
                 "--set", "max_length=64", "--set", "stride=16")
    assert result.code == 2 and result.out == ""
    assert f"{path}:{line} (question q1): answer 0 'Longbourn' is not at answer_start 3" in result.err.replace("\n", "")
    assert "Traceback" not in result.err and not (tmp_path / "run").exists()
