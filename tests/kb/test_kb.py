"""Knowledge bases on real passages of the Python docs and the real minilm sentence encoder: BM25, dense and hybrid
search, incremental builds, citations, "not found", evaluation on FAQ pairs, and errors that name the file and line."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.conftest import BUNDLED, read_jsonl_gz, write_jsonl


@pytest.fixture(scope="module")
def passages(tmp_path_factory):
    rows = read_jsonl_gz(BUNDLED / "python-docs-kb" / "python_docs_kb.jsonl.gz", 400)[::10][:30]
    folder = tmp_path_factory.mktemp("docs")
    return write_jsonl(folder / "thirty.jsonl", rows), rows


@pytest.fixture(scope="module")
def kb_dir(passages, tmp_path_factory):
    from lmforge.kb import KnowledgeBase

    out = tmp_path_factory.mktemp("kb") / "kb"
    result = KnowledgeBase.build(out, [str(passages[0])], show_progress=False)
    assert result["added"] == 30 and result["passages"] == 30
    return out


def own_sentence(text: str) -> str:
    """The passage's longest sentence: a question only it answers in words (a short one such as "This function is
    provided for a number of reasons." could be any passage's)."""
    return max(re.split(r"(?<=[.?!])\s", text), key=len)


def test_each_passage_is_found_first_by_a_sentence_of_its_own_with_bm25(kb_dir, passages):
    from lmforge.kb import KnowledgeBase

    kb = KnowledgeBase.open(kb_dir)
    rows = passages[1]
    firsts = [kb.search(own_sentence(r["text"]), k=1, mode="bm25")[0].id for r in rows]
    assert firsts == [r["id"] for r in rows]
    hybrid = kb.search(own_sentence(rows[0]["text"]), k=5, mode="hybrid")
    assert hybrid[0].id == rows[0]["id"] and [h.rank for h in hybrid] == [1, 2, 3, 4, 5]
    assert hybrid[0].similarity > hybrid[-1].similarity


def test_the_lean_sentence_vectors_equal_mean_pooled_transformers_ones():
    import torch
    from transformers import AutoModel, AutoTokenizer

    from lmforge.kb.embed import SentenceEmbedder
    from lmforge.models import resolve_model_path

    texts = ["How do I read a file line by line?", "The for statement iterates over the items of any sequence."]
    ours = SentenceEmbedder("minilm").embed(texts)
    path = resolve_model_path("minilm")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    theirs = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    assert np.allclose(ours, theirs, atol=1e-5)
    assert float(ours[0] @ ours[1]) < 0.5 < float(ours[0] @ SentenceEmbedder("minilm").embed(
        ["What is the way to read a file one line at a time?"])[0])
    many = [f"{t} ({i})" for i in range(9) for t in texts]  # batches of 4 on two workers, one thread each
    embedder = SentenceEmbedder("minilm")
    assert np.allclose(embedder.embed(many, batch_size=4, workers=2), embedder.embed(many, batch_size=4, workers=1),
                       atol=1e-5)


def test_int8_vectors_find_their_own_float32_passage_and_barely_depend_on_their_batch():
    import torch

    from lmforge.inference.encoder import LeanBert
    from lmforge.kb.embed import SentenceEmbedder
    from lmforge.models import resolve_model_path

    rows = read_jsonl_gz(BUNDLED / "python-docs-kb" / "python_docs_kb.jsonl.gz", 600)[::12]
    texts = [f"{r['title']}\n{r['text']}" for r in rows]  # 50 passages, short ones and ones cut at 128 tokens
    exact = SentenceEmbedder("minilm", max_length=128).embed(texts)
    int8 = SentenceEmbedder("minilm", max_length=128, precision="int8")
    assert int8.precision == "int8"
    fast = int8.embed(texts, batch_size=16)
    agreement = (fast * exact).sum(1)
    assert agreement.min() > 0.97 and agreement.mean() > 0.985 and agreement.max() < 0.9999  # close, not float32
    assert list((fast @ exact.T).argmax(1)) == list(range(len(texts)))  # each one's nearest is itself
    alone = np.stack([int8.embed([t])[0] for t in texts[:10]])
    assert ((alone * fast[:10]).sum(1) > 0.99).all()
    net = LeanBert(resolve_model_path("minilm"), torch.device("cpu"), int8=True)
    with pytest.raises(ValueError, match="right-padded"):  # its products run over each text's first tokens
        net.hidden_states(torch.tensor([[0, 101, 2023, 102]]), torch.tensor([[0, 1, 1, 1]]))


def test_a_kb_embeds_its_questions_as_it_embedded_its_passages(passages, tmp_path, monkeypatch):
    from lmforge.inference import encoder
    from lmforge.kb import KnowledgeBase

    path = passages[0]
    assert KnowledgeBase.build(tmp_path / "a", [str(path)], show_progress=False)["precision"] == "int8"
    assert json.loads((tmp_path / "a" / "kb.json").read_text())["precision"] == "int8"
    assert KnowledgeBase.open(tmp_path / "a").embedder.precision == "int8"
    monkeypatch.setattr(encoder, "pack_int8", lambda weights, names: None)  # a PyTorch without int8 kernels
    assert KnowledgeBase.build(tmp_path / "b", [str(path)], show_progress=False)["precision"] == "float32"
    assert KnowledgeBase.open(tmp_path / "b").embedder.precision == "float32"


def test_building_again_adds_only_new_passages_and_keeps_the_old_vectors(passages, tmp_path):
    from lmforge.kb import KnowledgeBase

    path, rows = passages
    first = write_jsonl(tmp_path / "first.jsonl", rows[:20])
    out = tmp_path / "kb"
    assert KnowledgeBase.build(out, [str(first)], show_progress=False)["added"] == 20
    before = np.array(KnowledgeBase.open(out).store.vectors)
    again = KnowledgeBase.build(out, [str(path)], show_progress=False)
    assert (again["added"], again["skipped"], again["passages"]) == (10, 20, 30)
    kb = KnowledgeBase.open(out)
    assert np.array_equal(np.array(kb.store.vectors[:20]), before) and (out / "vectors.f16").stat().st_size == 30 * 384 * 2
    last = rows[-1]
    assert kb.search(own_sentence(last["text"]), k=1, mode="bm25")[0].id == last["id"]


def test_citations_name_real_passages_and_drop_numbers_that_name_none(kb_dir, passages):
    from lmforge.kb import KnowledgeBase
    from lmforge.kb.ask import citations

    hits = KnowledgeBase.open(kb_dir).search(own_sentence(passages[1][3]["text"]), k=3)
    cited = citations("It does [2]; see also [1, 3] and [2] again, but not [7] or [0].", hits)
    assert [c["n"] for c in cited] == [2, 1, 3]
    assert [c["id"] for c in cited] == [hits[1].id, hits[0].id, hits[2].id]


class Reader:
    """An extractive reader that answers with a fixed word from the passage holding it (what a QA run gives)."""

    kind, name = "question-answering", "stub"

    def __init__(self, word: str) -> None:
        self.word, self.calls = word, 0

    def predict(self, items):
        self.calls += 1
        return [{"answer": self.word, "score": 1.0 if self.word in it["context"] else 0.1, "start": 0, "end": 0}
                for it in items]


def test_ask_cites_the_passage_its_answer_came_from_and_says_not_found_instead_of_inventing(kb_dir, passages):
    from lmforge.kb import KnowledgeBase
    from lmforge.kb.ask import NOT_FOUND, ask

    kb = KnowledgeBase.open(kb_dir)
    row = passages[1][5]
    word = max(re.findall(r"[A-Za-z_]{6,}", row["text"]), key=len)
    events = list(ask(kb, own_sentence(row["text"]), Reader(word), k=3))
    assert [e["type"] for e in events] == ["passages", "delta", "done"]
    done = events[-1]
    passage_ids = {p["id"] for p in events[0]["passages"]}
    assert done["found"] and {c["id"] for c in done["citations"]} <= passage_ids
    assert word in done["answer"] and any(word in p["text"] for p in events[0]["passages"]
                                          if p["id"] == done["citations"][0]["id"])
    reader = Reader(word)
    lost = list(ask(kb, "qwzx vblorp fnarg zzyzx", reader, k=3, min_similarity=0.3))
    assert lost[-1]["answer"] == NOT_FOUND and not lost[-1]["found"] and reader.calls == 0


def test_a_chat_model_reads_the_numbered_passages(kb_dir, passages, chat_run):
    import lmforge
    from lmforge.kb import KnowledgeBase
    from lmforge.kb.ask import ask, instructions

    kb = KnowledgeBase.open(kb_dir)
    question = own_sentence(passages[1][2]["text"])
    hits = kb.search(question, k=2)
    prompt = instructions(question, hits)[0]["content"]
    assert prompt.index("[1] ") < prompt.index("[2] ") < prompt.index(f"Question: {question}")
    events = list(ask(kb, question, lmforge.load(chat_run), k=2, max_new_tokens=8, min_similarity=-1))
    streamed = "".join(e["text"] for e in events if e["type"] == "delta")
    assert events[-1]["type"] == "done" and events[-1]["answer"] == streamed.strip()


LOOP = ("A generator function returns an iterator object.\n\n1. The yield statement hands a value to the caller.\n"
        "2. The yield statement hands a value to the caller.\n3. The yield statement hands a value")


def tidied(text: str, hits, cut: int | None = None, seed: int = 0) -> tuple[str, object]:
    """``text`` through an AnswerStream as deltas of 1 to ``cut`` characters (None: one delta)."""
    import random

    from lmforge.kb.ask import AnswerStream

    rng, stream, out, i = random.Random(seed), AnswerStream(hits), "", 0
    while i < len(text) and not stream.stopped:
        j = len(text) if cut is None else i + rng.randint(1, cut)
        out += stream.feed(text[i:j])
        i = j
    return out + stream.finish(), stream


def hit(n: int, text: str):
    from lmforge.kb import Hit

    return Hit(f"p{n}", f"title {n}", text, 1.0, 0.5, n)


def test_a_looping_answer_ends_before_its_first_repeat_however_the_deltas_are_cut():
    hits = [hit(1, "Nothing about this."), hit(2, "The yield statement suspends a generator and hands a value to "
                                                 "its caller; a generator function returns an iterator object.")]
    whole, stream = tidied(LOOP, hits)
    assert stream.stopped
    assert whole.strip() == ("A generator function returns an iterator object. [2]\n\n"
                             "1. The yield statement hands a value to the caller. [2]")
    for seed in range(30):  # the repeat ("2. The yield ...") is never sent, not even its first characters
        assert tidied(LOOP, hits, cut=6, seed=seed)[0] == whole


def test_a_sentence_citing_nothing_gets_the_passage_its_words_come_from_and_own_citations_stay():
    hits = [hit(1, "datetime.now() returns the current local date and time."),
            hit(2, "Each yield suspends the generator function and hands a value to its caller.")]
    text = "Call datetime.now() for the current date and time [1]. Each yield hands a value to the caller. It is nice."
    out, stream = tidied(text, hits, cut=5)
    assert out == ("Call datetime.now() for the current date and time [1]. Each yield hands a value to the caller. [2] "
                   "It is nice.")
    assert stream.own == {1} and not stream.stopped
    base = [hit(1, "The knowledge base was not found: nothing was found in the base.")]
    assert tidied("Sorry, not found in the knowledge base.", base)[0] == "Sorry, not found in the knowledge base."


class LoopingReader:
    """A chat model that repeats one sentence for ever (what a 135M reader may do); counts the tokens it decoded."""

    kind, name, has_chat_template, context = "text-generation", "loop", True, 2048

    def __init__(self) -> None:
        self.decoded, self.closed = 0, False
        self.generator = self

    def chat_prompt(self, messages):
        return list(range(len(messages[0]["content"].split())))

    def stream(self, prompts, params, cancel=None):
        from types import SimpleNamespace

        try:
            while self.decoded < params.max_new_tokens:
                for word in ("The", "answer", "to", "your", "question", "is", "here."):
                    self.decoded += 1
                    yield SimpleNamespace(text=word + " ")
        finally:
            self.closed = True


def test_ask_stops_decoding_a_loop_and_streams_exactly_its_answer(kb_dir):
    from lmforge.kb import KnowledgeBase
    from lmforge.kb.ask import ask

    reader = LoopingReader()
    events = list(ask(KnowledgeBase.open(kb_dir), "What is here?", reader, k=2, max_new_tokens=500,
                      min_similarity=-1))
    done = events[-1]
    assert done["answer"] == "The answer to your question is here." and done["repeat_stopped"]
    assert "".join(e["text"] for e in events if e["type"] == "delta").strip() == done["answer"]
    assert reader.closed and reader.decoded < 20


def test_evaluation_on_question_answer_pairs_leaves_the_kb_as_it_was(cli, kb_dir):
    from lmforge.kb import KnowledgeBase

    result = cli("evaluate", kb_dir, "--data", "python-faq", "--limit", "12", "--json")
    assert result.code == 0, result.text
    scored = json.loads(result.out)
    assert scored["n"] == 12 and scored["passages"] == 42 and set(scored["modes"]) == {"bm25", "dense", "hybrid"}
    for values in scored["modes"].values():
        assert values["recall@1"] <= values["recall@5"] <= values["recall@10"]
    assert scored["modes"]["dense"]["recall@10"] >= 0.75  # real questions against their own answers
    assert KnowledgeBase.open(kb_dir).store.count == 30 and (kb_dir / "eval.json").exists()


def test_the_kb_commands(cli, kb_dir, passages):
    row = passages[1][7]
    found = cli("kb", "search", kb_dir, own_sentence(row["text"]), "--k", "2", "--mode", "bm25", "--json")
    assert found.code == 0 and json.loads(found.out.splitlines()[0])["id"] == row["id"]
    assert len(found.out.splitlines()) == 2
    shown = cli("kb", "search", kb_dir, own_sentence(row["text"]), "--k", "1")
    assert shown.code == 0 and f"1. [{row['id']}]" in shown.out


def test_bad_input_exits_2_with_the_file_and_line(cli, tmp_path, passages):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "title": "no text here"}\n', encoding="utf-8")
    result = cli("kb", "build", "--docs", bad, "--out", tmp_path / "kb")
    assert result.code == 2 and f"{bad}:2" in result.err and "'text'" in result.err
    assert not (tmp_path / "kb").exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    result = cli("kb", "build", "--docs", empty, "--out", tmp_path / "kb")
    assert result.code == 2 and "empty" in result.err
    result = cli("kb", "search", tmp_path / "nowhere", "question")
    assert result.code == 2 and "no knowledge base at" in result.err and "kb build" in result.err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine", encoding="utf-8")
    result = cli("kb", "build", "--docs", passages[0], "--out", taken)
    assert result.code == 2 and "not a knowledge base" in result.err and (taken / "notes.txt").read_text() == "mine"
    result = cli("kb", "search", tmp_path / "nowhere", "q", "--mode", "fuzzy")
    assert result.code == 2
    result = cli("kb", "build", "--docs", passages[0], "--out", tmp_path / "kb16", "--precision", "fp16")
    assert result.code == 2 and "--precision" in result.err and "int8, float32" in result.err
    assert not (tmp_path / "kb16").exists()


def test_served_search_and_ask_with_a_streamed_answer(kb_dir, passages, chat_run, tiny_bert_dir):
    from fastapi.testclient import TestClient

    from lmforge.serve.app import create_app
    from lmforge.serve.settings import ServeSettings

    rows = passages[1]
    app = create_app([f"chat={chat_run}"], ServeSettings(kb=kb_dir), load_in_background=False)
    with TestClient(app) as client:
        info = client.get("/v1/kb").json()
        assert (info["passages"], info["model"], info["precision"]) == (30, "minilm", "int8")
        found = client.post("/v1/kb/search", json={"query": own_sentence(rows[4]["text"]), "k": 3, "mode": "bm25"})
        assert found.status_code == 200 and found.json()["hits"][0]["id"] == rows[4]["id"]
        assert len(found.json()["hits"]) == 3
        answer = client.post("/v1/kb/ask", json={"question": own_sentence(rows[4]["text"]), "k": 2,
                                                 "max_new_tokens": 6, "min_similarity": -1})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        # as many passages as fit in the tiny model's context, numbered as the prompt numbers them
        assert [p["n"] for p in body["passages"]] == list(range(1, len(body["passages"]) + 1))
        assert {p["id"] for p in body["passages"]} <= {r["id"] for r in rows}
        assert {c["id"] for c in body["citations"]} <= {p["id"] for p in body["passages"]}
        with client.stream("POST", "/v1/kb/ask", json={"question": own_sentence(rows[4]["text"]), "k": 2,
                                                       "max_new_tokens": 6, "min_similarity": -1,
                                                       "stream": True}) as streamed:
            events = [line.removeprefix("data: ") for line in streamed.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        parsed = [json.loads(e) for e in events[:-1]]
        assert parsed[0]["type"] == "passages" and parsed[-1]["type"] == "done"
        assert parsed[-1]["answer"] == "".join(e["text"] for e in parsed if e["type"] == "delta").strip()
        lost = client.post("/v1/kb/ask", json={"question": "qwzx vblorp fnarg zzyzx", "min_similarity": 0.3})
        assert lost.status_code == 200 and lost.json()["answer"] == "not found in the knowledge base"
        for bad in ({"query": ""}, {"query": "x", "k": 0}, {"query": "x", "mode": "fuzzy"}, {"query": "x", "extra": 1}):
            assert client.post("/v1/kb/search", json=bad).status_code == 422
        assert client.post("/v1/kb/search", json={"query": "   "}).status_code == 422
        assert client.post("/v1/kb/ask", json={"question": "x", "reader": "nobody"}).status_code == 404
    app = create_app([f"mlm={tiny_bert_dir}"], ServeSettings(kb=kb_dir), load_in_background=False)
    with TestClient(app) as client:
        refused = client.post("/v1/kb/ask", json={"question": "what is it?"})
        assert refused.status_code == 422 and "no served model can answer" in refused.json()["detail"]
