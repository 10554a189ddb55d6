"""Extractive QA: a tiny BERT overfits a few contexts (one longer than a window) and gives back the exact gold spans
after save -> load, from Python, `lmforge predict`, `lmforge evaluate` and POST /v1/qa; windows and their labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.helpers import evals, losses

LONG = ("The morning was cold and the road to the village was long and muddy. Anne walked slowly past the church, "
        "the old mill and the baker's shop, where the windows were still dark. She stopped at the bridge to watch "
        "the river, which was high after a week of rain, and then went on along the lane between the fields. At "
        "last she came to the small house at the end of the lane. The letter was finally delivered to Captain "
        "Wentworth in Bath.")
PARAGRAPHS = [
    ("Elizabeth Bennet lived at Longbourn with her four sisters. Her father was a quiet man who liked his books.",
     [("Where did Elizabeth Bennet live?", "Longbourn"), ("What did her father like?", "his books")]),
    ("Mr. Darcy owned a great estate in Derbyshire called Pemberley, and he had ten thousand a year.",
     [("What was the estate called?", "Pemberley"), ("How much did he have a year?", "ten thousand")]),
    ("The ship left the harbour at dawn and reached the island before the evening storm.",
     [("When did the ship leave the harbour?", "at dawn")]),
    (LONG, [("Who received the letter?", "Captain Wentworth")]),
]
WINDOWS = ["--set", "max_length=64", "--set", "stride=16"]


def squad_file(path):
    data = [{"title": "tiny", "paragraphs": [
        {"context": context, "qas": [{"id": f"q{p}-{i}", "question": q,
                                      "answers": [{"text": a, "answer_start": context.index(a)}]}
                                     for i, (q, a) in enumerate(qas)]}
        for p, (context, qas) in enumerate(PARAGRAPHS)]}]
    path.write_text(json.dumps({"version": "1.1", "data": data}, indent=1))
    return path


QUESTIONS = [(q, context, a) for context, qas in PARAGRAPHS for q, a in qas]


def _run_cli(*args) -> int:
    from lmforge.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code
    return 0


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory, tiny_bert_dir):
    """The tiny BERT trained through the CLI until it has memorised the questions (dev = the same questions)."""
    folder = tmp_path_factory.mktemp("qa")
    data = squad_file(folder / "train.json")
    out = folder / "run"
    code = _run_cli("-q", "finetune", "qa", "--model", tiny_bert_dir, "--data", data, "--eval", data, "--out", out,
                    *WINDOWS, "--max-steps", "150", "--batch-size", "8", "--lr", "3e-3", "--set", "train.warmup=0",
                    "--set", "train.eval_every=50", "--set", "train.log_every=5", "--set", "train.threads=1")
    assert code == 0
    return out, data


def test_overfit_recovers_the_exact_spans_after_save_load(qa_run):
    import lmforge

    out, _ = qa_run
    curve = [loss for _, loss in losses(out)]
    assert np.mean(curve[:3]) > 3 * np.mean(curve[-3:]), curve
    history = evals(out)
    assert [step for step, _ in history] == [50, 100, 150]
    assert max(m["f1"] for _, m in history) == 100.0 and max(m["exact_match"] for _, m in history) == 100.0
    pipeline = lmforge.load(out)
    assert pipeline.task == "qa" and pipeline.max_length == 64 and pipeline.stride == 16
    predicted = pipeline.predict([{"question": q, "context": c} for q, c, _ in QUESTIONS])
    assert [p["answer"] for p in predicted] == [a for _, _, a in QUESTIONS]
    assert [(p["start"], p["end"]) for p in predicted] == [(c.index(a), c.index(a) + len(a)) for _, c, a in QUESTIONS]
    assert [p["windows"] for p in predicted][:-1] == [1] * 5 and predicted[-1]["windows"] >= 3


def test_plain_transformers_loads_the_run_and_finds_the_same_spans(qa_run):
    """The saved folder is a standard HF one: AutoModelForQuestionAnswering's argmax start and end over the context
    of each one-window question give the gold span (transformers 5 has no question-answering pipeline to compare)."""
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    out, _ = qa_run
    tok = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForQuestionAnswering.from_pretrained(out / "model").eval()
    for question, context, answer in QUESTIONS[:-1]:
        enc = tok(question, context, return_offsets_mapping=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping")[0]
        with torch.no_grad():
            logits = model(**enc)
        in_context = torch.tensor([s == 1 for s in enc.sequence_ids(0)])
        start = int(logits.start_logits[0].masked_fill(~in_context, -1e9).argmax())
        end = int(logits.end_logits[0].masked_fill(~in_context, -1e9).argmax())
        assert context[int(offsets[start][0]):int(offsets[end][1])] == answer


def test_the_long_answer_comes_from_a_later_window(qa_run, tiny_bert_dir):
    """The last question's answer lies past the first window: only a later one holds it."""
    import lmforge
    from lmforge.data.qa_windows import encode_windows
    from lmforge.models import load_tokenizer

    out, _ = qa_run
    question, _, answer = QUESTIONS[-1]
    windows = encode_windows(load_tokenizer(out / "model"), [question], [LONG], 64, 16)
    ends = [int(spans[:, 1].max()) for spans in windows.offsets]
    assert len(windows) >= 3 and ends[0] < LONG.index(answer)
    single = lmforge.load(out).predict((question, LONG))
    assert single[0]["answer"] == answer and single[0]["start"] > ends[0]


def test_predict_prints_the_answer_and_refuses_the_wrong_options(qa_run, cli, tiny_bert_dir):
    out, _ = qa_run
    question, context, answer = QUESTIONS[0]
    result = cli("predict", out, "--question", question, "--context", context)
    assert result.code == 0, result.text
    row = json.loads(result.out)
    assert row["question"] == question and row["answer"] == answer and context[row["start"]:row["end"]] == answer
    text = cli("predict", out, "a text")
    assert text.code == 2 and "it answers questions: use `lmforge predict RUN --question" in text.err
    nothing = cli("predict", out)
    assert nothing.code == 2 and "answers questions: give --question and --context" in nothing.err
    half = cli("predict", out, "--question", question)
    assert half.code == 2 and "--context" in half.err
    other = cli("predict", tiny_bert_dir, "--question", question, "--context", context)
    assert other.code == 2 and "--question and --context are for question-answering runs" in other.err
    assert "mlm-nsp run" in other.err and other.out == ""


def test_evaluate_scores_em_f1_and_shows_examples(qa_run, cli):
    out, data = qa_run
    result = cli("evaluate", out, "--data", data, "--json")
    assert result.code == 0, result.text
    scored = json.loads(result.out)
    assert scored["task"] == "qa" and scored["n"] == len(QUESTIONS)
    assert scored["exact_match"] == 100.0 and scored["f1"] == 100.0
    first = scored["examples"][0]
    assert first["question"] == QUESTIONS[0][0] and first["prediction"] == first["answers"][0] == QUESTIONS[0][2]
    assert first["exact_match"] == first["f1"] == 100.0 and first["id"] == "q0-0"
    assert json.loads((out / "eval.json").read_text())["f1"] == 100.0
    report = cli("evaluate", out, "--data", data, "--limit", "2")
    assert report.code == 0 and "n=2  EM 100.00  F1 100.00" in report.out and "Pemberley" not in report.out
    missing = cli("evaluate", out)
    assert missing.code == 2 and "--data" in missing.err


def test_the_api_answers_and_refuses_bad_bodies(qa_run):
    import lmforge
    from lmforge.serve.app import create_app
    from lmforge.serve.settings import ServeSettings

    out, _ = qa_run
    app = create_app([f"reader={out}"], ServeSettings(max_batch_inputs=12, max_input_chars=1000),
                     load_in_background=False)
    with TestClient(app) as client:
        question, context, answer = QUESTIONS[2]
        single = client.post("/v1/qa", json={"question": question, "context": context})
        assert single.status_code == 200, single.text
        (result,) = single.json()["results"]
        assert result["answer"] == answer and (result["start"], result["end"]) == (context.index(answer),
                                                                                   context.index(answer) + len(answer))
        batch = client.post("/v1/qa", json={"model": "reader", "inputs": [{"question": q, "context": c}
                                                                          for q, c, _ in QUESTIONS]})
        assert batch.status_code == 200
        expected = lmforge.load(out).predict([(q, c) for q, c, _ in QUESTIONS])
        assert [r["answer"] for r in batch.json()["results"]] == [a for _, _, a in QUESTIONS]
        assert [r["score"] for r in batch.json()["results"]] == pytest.approx([e["score"] for e in expected], abs=1e-5)
        card = client.get("/v1/models").json()["data"][0]
        assert card["task"] == "qa" and card["routes"] == ["qa", "embeddings"] and card["max_length"] == 64
        bad = {
            "no body fields": ({}, "send question and context, or inputs"),
            "no context": ({"question": question}, "context is missing"),
            "both forms": ({"question": question, "context": context, "inputs": []}, "not both"),
            "empty inputs": ({"inputs": []}, "inputs is empty"),
            "blank question": ({"question": "  ", "context": context}, "input 0: the question is empty"),
            "unknown field": ({"question": question, "context": context, "top_k": 3}, "top_k: unknown field"),
            "wrong type": ({"question": 5, "context": context}, "question: Input should be a valid string"),
            "item shape": ({"inputs": [{"question": question}]}, "inputs.0.context: Field required"),
            "too many": ({"inputs": [{"question": question, "context": context}] * 13}, "13 inputs in one request"),
            "too long": ({"question": question, "context": "x" * 1001}, "the context has 1,001 characters"),
            "long question": ({"question": "where " * 60, "context": context}, "longer than the 37 tokens"),
            "too many windows": ({"inputs": [{"question": question, "context": LONG}] * 3}, "one request may hold 12"),
            "lone surrogate": ('{"question": "\\ud800?", "context": "x"}', "question: Input should be a valid string"),  # raw JSON
            "not a QA model": ({"question": question, "context": context, "model": "nope"}, "model 'nope' not found"),
        }
        for name, (body, fragment) in bad.items():
            response = (client.post("/v1/qa", json=body) if isinstance(body, dict) else
                        client.post("/v1/qa", content=body, headers={"Content-Type": "application/json"}))
            assert response.status_code == (404 if name == "not a QA model" else 422), (name, response.text)
            assert fragment in response.json()["detail"], (name, response.json()["detail"])
        cut = client.post("/v1/qa", json={"question": "where " * 60, "context": context, "truncate": True})
        assert cut.status_code == 200, cut.text


def test_bundled_sample_holds_out_whole_contexts(cli, tiny_bert_dir, tmp_path):
    """Without --eval a share of the contexts is held out with all their questions; the sample evaluates as SQuAD."""
    out = tmp_path / "run"
    result = cli("finetune", "qa", "--model", tiny_bert_dir, "--data", "squad-sample", "--out", out, *WINDOWS,
                 "--max-steps", "2", "--batch-size", "8", "--set", "train.threads=1")
    assert result.code == 0, result.text
    info = (out / "lmforge.yaml").read_text()
    assert "squad-sample (held-out 10% of the contexts)" in info
    held = int(info.split("(held-out 10% of the contexts)\n    questions: ")[1].split("\n")[0])
    assert held in (2, 3, 6)  # one whole context of the sample: its questions come in groups of 2, 3 and 6
    scored = json.loads(cli("evaluate", out, "--data", "squad-sample", "--json").out)
    assert scored["n"] == 11 and scored["windows_per_question"] > 2  # the sample's contexts are long at 64 tokens
    too_wide = cli("finetune", "qa", "--model", tiny_bert_dir, "--data", "squad-sample", "--out", tmp_path / "w")
    assert too_wide.code == 2 and "--max-length" in too_wide.err and "128" in too_wide.err


def test_windows_label_the_answer_tokens_and_point_elsewhere_to_cls(tiny_bert_dir):
    from lmforge.data.qa_windows import QuestionTooLong, answer_positions, encode_windows
    from lmforge.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_bert_dir)
    question, _, answer = QUESTIONS[-1]
    windows = encode_windows(tokenizer, [question, "Where?"], [LONG, PARAGRAPHS[0][0]], 64, 16)
    assert windows.per_example().tolist()[1] == 1 and windows.per_example()[0] >= 3
    start = LONG.index(answer)
    first, last = answer_positions(windows, [start, 26], [start + len(answer), 35])
    for w, (s, e, spans) in enumerate(zip(first, last, windows.offsets)):
        assert max(len(x) for x in windows.input_ids) <= 64
        context = PARAGRAPHS[0][0] if windows.example[w] == 1 else LONG
        wanted = answer if windows.example[w] == 0 else "Longbourn"
        holds = spans[spans[:, 0] >= 0][0, 0] <= context.index(wanted) and spans[:, 1].max() >= \
            context.index(wanted) + len(wanted)
        if holds:
            assert context[spans[s, 0]:spans[e, 1]] == wanted
        else:
            assert s == e == 0
    assert sum(1 for s in first[windows.example == 0] if s > 0) >= 1
    with pytest.raises(QuestionTooLong, match="question 0 has"):
        encode_windows(tokenizer, ["why " * 50], [LONG], 64, 16, truncate=False)
    cut = encode_windows(tokenizer, ["why " * 50], [LONG], 64, 16)
    assert all(len(ids) <= 64 for ids in cut.input_ids) and len(cut) > len(windows) - 1


def test_a_qa_run_answers_from_a_knowledge_base_with_the_passage_it_read(qa_run, tmp_path, cli):
    """kb ask with an extractive reader: the span comes from the passage the answer cites (one passage: the span
    scores of a model that memorised four contexts do not compare across passages it never saw)."""
    from tests.conftest import write_jsonl

    run, _ = qa_run
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"id": f"p{i}", "text": c} for i, (c, _) in enumerate(PARAGRAPHS)])
    assert cli("kb", "build", "--docs", docs, "--out", tmp_path / "kb").code == 0
    for question, context, answer in QUESTIONS[:3]:
        result = cli("kb", "ask", tmp_path / "kb", question, "--reader", run, "--k", "1", "--json")
        assert result.code == 0, result.text
        said = json.loads(result.out)
        assert said["found"] and said["answer"].startswith(answer)
        assert said["citations"][0]["id"] == f"p{[c for c, _ in PARAGRAPHS].index(context)}"
