"""Both knowledge-base stores, SQLite (a folder) and PostgreSQL (a real server, tests/kb/conftest.py), on real Python
docs passages and the real minilm encoder: the same results, incremental all-or-nothing builds that survive kill -9,
one writer at a time, question text that looks like query syntax, a folder of awkward documents, and two server
replicas sharing one KB."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import httpx
import pytest

from tests.conftest import BUNDLED, python_cmd, read_jsonl_gz, write_jsonl
from tests.kb.test_kb import own_sentence
from tests.serve.live import LiveServer, free_port

DOCS = BUNDLED / "python-docs-kb" / "python_docs_kb.jsonl.gz"


@pytest.fixture(scope="module")
def rows():
    return read_jsonl_gz(DOCS, 400)[::10][:30]


@pytest.fixture
def place(request, tmp_path):
    """(KB, store) of a KB not built yet: a folder, or a fresh name in the test database."""
    if request.param == "sqlite":
        return str(tmp_path / "kb"), None
    return f"t_{uuid.uuid4().hex[:12]}", request.getfixturevalue("postgres_url")


both = pytest.mark.parametrize("place", ["sqlite", "postgresql"], indirect=True)


def store_args(store: str | None) -> list[str]:
    return ["--store", store] if store else []


def test_both_stores_rank_alike_and_evaluate_alike(rows, tmp_path, postgres_url):
    from lmforge.kb import KnowledgeBase
    from lmforge.stages import evaluate

    docs = str(write_jsonl(tmp_path / "docs.jsonl", rows))
    name = f"t_{uuid.uuid4().hex[:12]}"
    local_result = KnowledgeBase.build(tmp_path / "kb", [docs], show_progress=False)
    pg_result = KnowledgeBase.build(name, [docs], store=postgres_url, show_progress=False)
    assert local_result["added"] == pg_result["added"] == 30 and pg_result["passages"] == 30
    local, pg = KnowledgeBase.open(tmp_path / "kb"), KnowledgeBase.open(name, postgres_url)
    questions = [own_sentence(r["text"]) for r in rows[:10]] + ["How do I read a file line by line?",
                                                                "what happens when an exception is raised"]
    for question in questions:
        dense = [local.search(question, k=10, mode="dense"), pg.search(question, k=10, mode="dense")]
        assert [h.id for h in dense[0]] == [h.id for h in dense[1]], question
        assert [round(h.score, 4) for h in dense[0]] == [round(h.score, 4) for h in dense[1]]
    for r in rows[:10]:  # full text: each engine ranks by its own formula, both put the passage itself first
        for mode in ("bm25", "hybrid"):
            assert local.search(own_sentence(r["text"]), k=3, mode=mode)[0].id == r["id"]
            assert pg.search(own_sentence(r["text"]), k=3, mode=mode)[0].id == r["id"], mode
    faq = evaluate(tmp_path / "kb", "python-faq", limit=12, write=False)
    faq_pg = evaluate(name, "python-faq", limit=12, store=postgres_url, write=False)
    assert faq["modes"]["dense"]["recall@5"] == faq_pg["modes"]["dense"]["recall@5"]
    assert faq_pg["passages"] == 42 and pg.store.count == 30  # the answers were added to a copy, rolled back
    assert not pg.store.known(["eval:0"])


@both
def test_building_again_embeds_only_the_new_passages(place, rows, tmp_path, monkeypatch):
    from lmforge.inference.embedding import SentenceEmbedder
    from lmforge.kb import KnowledgeBase

    kb, store = place
    first = str(write_jsonl(tmp_path / "first.jsonl", rows[:20]))
    everything = str(write_jsonl(tmp_path / "all.jsonl", rows))
    assert KnowledgeBase.build(kb, [first], store=store, show_progress=False)["added"] == 20
    embedded = []
    real = SentenceEmbedder.embed
    monkeypatch.setattr(SentenceEmbedder, "embed", lambda self, texts: embedded.extend(texts) or real(self, texts))
    again = KnowledgeBase.build(kb, [everything], store=store, show_progress=False)
    assert (again["added"], again["skipped"], again["passages"]) == (10, 20, 30)
    assert len(embedded) == 10
    assert {t.split("\n", 1)[-1] for t in embedded} == {r["text"] for r in rows[20:]}
    opened = KnowledgeBase.open(kb, store)
    assert opened.search(own_sentence(rows[25]["text"]), k=1, mode="bm25")[0].id == rows[25]["id"]


@both
def test_question_text_that_looks_like_query_syntax_is_searched_as_text(place, rows, tmp_path):
    from lmforge.kb import KnowledgeBase

    kb, store = place
    KnowledgeBase.build(kb, [str(write_jsonl(tmp_path / "docs.jsonl", rows[:8]))], store=store, show_progress=False)
    opened = KnowledgeBase.open(kb, store)
    for question in ['"unclosed quote', "NEAR(a b", "*", "OR", "AND OR NOT", "a:b ^c", "(((", "-", "'; DROP TABLE x; --",
                     "col:text", "!!", "&|<->", "\\"]:
        for mode in ("bm25", "dense", "hybrid"):
            assert isinstance(opened.search(question, k=3, mode=mode), list), (question, mode)
    words = own_sentence(rows[3]["text"])
    assert opened.search(f'"{words}" NEAR( OR *', k=1, mode="bm25")[0].id == rows[3]["id"]


@both
def test_a_second_build_at_the_same_time_fails_at_once_naming_the_kb(place, rows, tmp_path, cli):
    from lmforge.kb import KnowledgeBase
    from lmforge.kb.location import open_store

    kb, store = place
    docs = str(write_jsonl(tmp_path / "docs.jsonl", rows[:5]))
    KnowledgeBase.build(kb, [docs], store=store, show_progress=False)
    more = str(write_jsonl(tmp_path / "more.jsonl", rows[5:10]))
    holder = open_store(kb, store)
    with holder.writing():  # a build in progress
        started = time.monotonic()
        result = cli("kb", "build", "--docs", more, "--out", kb, *store_args(store))
        assert result.code == 2 and "another build is writing to the knowledge base" in result.err
        assert kb in result.err and time.monotonic() - started < 30
    holder.close()
    assert cli("kb", "build", "--docs", more, "--out", kb, *store_args(store)).code == 0  # free again
    assert KnowledgeBase.open(kb, store).store.count == 10


def _kill_during_embedding(args: list[str]) -> None:
    """Start ``lmforge kb build`` and kill -9 it once it is embedding."""
    proc = subprocess.Popen(python_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    seen = []
    for line in proc.stdout:  # the log says when embedding starts
        seen.append(line)
        if "embedding passages" in line:
            break
    time.sleep(1.0)
    assert proc.poll() is None, "".join(seen)  # still embedding when killed
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


@both
def test_a_build_killed_half_way_leaves_the_kb_as_it_was(place, rows, tmp_path, cli):
    from lmforge.kb import KnowledgeBase
    from lmforge.kb.location import is_kb

    kb, store = place
    many = str(write_jsonl(tmp_path / "many.jsonl", read_jsonl_gz(DOCS, 3000)))
    _kill_during_embedding(["kb", "build", "--docs", many, "--out", kb, *store_args(store)])  # a new KB
    assert not is_kb(kb, store)
    assert cli("kb", "search", kb, "files", *store_args(store)).code == 2  # no KB yet, said clearly
    small = str(write_jsonl(tmp_path / "small.jsonl", rows[:10]))
    assert cli("kb", "build", "--docs", small, "--out", kb, *store_args(store)).code == 0
    before = [h.id for h in KnowledgeBase.open(kb, store).search("How do I open a file?", k=5)]
    _kill_during_embedding(["kb", "build", "--docs", many, "--out", kb, *store_args(store)])  # adding to it
    opened = KnowledgeBase.open(kb, store)
    assert opened.store.count == 10 and [h.id for h in opened.search("How do I open a file?", k=5)] == before
    opened.close()
    assert cli("kb", "build", "--docs", str(write_jsonl(tmp_path / "more.jsonl", rows[10:20])), "--out", kb,
               *store_args(store)).code == 0  # the next build finds a clean KB and no lock left behind
    opened = KnowledgeBase.open(kb, store)
    assert opened.store.count == 20 and opened.search(own_sentence(rows[15]["text"]), k=1)[0].id == rows[15]["id"]
    if store is None:  # the killed build's vectors are gone: exactly one per passage
        assert (tmp_path / "kb" / "vectors.f16").stat().st_size == 20 * 384 * 2


def test_a_folder_of_documents_skips_what_it_cannot_read_and_never_leaves_the_folder(tmp_path, cli):
    from lmforge.kb import KnowledgeBase

    folder = tmp_path / "docs"
    (folder / "guide").mkdir(parents=True)
    (folder / "guide" / "install.md").write_text(
        "# Installing\n\nRun the installer and choose a folder for the program files.\n\n## Upgrading\n\n"
        "An upgrade keeps your settings and replaces the program files in place.\n", encoding="utf-8")
    (folder / "notes.txt").write_text("Backups run every night at two and keep thirty days of history.\n",
                                      encoding="utf-8")
    (folder / "page.html").write_text("<html><head><style>p {color: red}</style><script>var secret = 1;</script>"
                                      "</head><body><p>The status page lists every service and its uptime.</p>"
                                      "</body></html>", encoding="utf-8")
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (folder / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me, the old menu.".encode("latin-1"))
    (folder / "empty.txt").write_text("   \n", encoding="utf-8")
    outside = tmp_path / "secret.txt"
    outside.write_text("The launch code is swordfish.", encoding="utf-8")
    (folder / "leak.txt").symlink_to(outside)
    (folder / "elsewhere").symlink_to(tmp_path)
    (folder / "inside.txt").symlink_to(folder / "notes.txt")  # a link that stays inside is read
    result = cli("kb", "build", "--docs", str(folder), "--out", tmp_path / "kb", "--json")
    assert result.code == 0, result.err
    skipped = json.loads(result.out)["skipped_files"]  # each also a warning on stderr
    assert result.err.count("skipped") == len(skipped) == 5, result.err
    for name, why in [("logo.png", "binary"), ("latin1.txt", "not UTF-8"), ("empty.txt", "empty"),
                      ("leak.txt", "outside the folder"), ("elsewhere", "outside the folder")]:
        assert any(line.startswith(str(folder / name) + ":") and why in line for line in skipped), (name, skipped)
    kb = KnowledgeBase.open(tmp_path / "kb")
    ids = {p.id for p in kb.store.fetch(list(range(kb.store.count)))}
    assert ids == {"guide/install.md#0", "guide/install.md#1", "notes.txt#0", "page.html#0", "inside.txt#0"}
    upgrade = kb.search("Does an upgrade keep my settings?", k=1)[0]
    assert upgrade.title == "guide/install.md / Upgrading" and "replaces the program files" in upgrade.text
    assert "swordfish" not in " ".join(h.text for h in kb.search("launch code swordfish", k=5, mode="bm25"))
    assert "secret" not in kb.search("status page", k=1)[0].text  # the page's script is not text


def test_two_server_replicas_share_one_postgresql_kb(rows, tmp_path, postgres_url, cli):
    name = f"t_{uuid.uuid4().hex[:12]}"
    assert cli("kb", "build", "--docs", str(write_jsonl(tmp_path / "docs.jsonl", rows[:20])), "--out", name,
               "--store", postgres_url).code == 0
    question = {"query": own_sentence(rows[25]["text"]), "k": 1, "mode": "bm25"}
    with LiveServer("--kb", name, "--store", postgres_url) as one, \
            LiveServer("--kb", name, env={"LMFORGE_KB_STORE": postgres_url}) as two:
        for replica in (one, two):
            assert httpx.get(replica.url + "/v1/kb", timeout=30).json()["passages"] == 20
            hit = httpx.post(replica.url + "/v1/kb/search", json=question, timeout=30).json()["hits"][0]
            assert hit["id"] != rows[25]["id"]
        assert cli("kb", "build", "--docs", str(write_jsonl(tmp_path / "all.jsonl", rows)), "--out", name,
                   "--store", postgres_url).code == 0  # added while both serve
        for replica in (one, two):  # both see it at once: neither holds a copy
            assert httpx.get(replica.url + "/v1/kb", timeout=30).json()["passages"] == 30
            hit = httpx.post(replica.url + "/v1/kb/search", json=question, timeout=30).json()["hits"][0]
            assert hit["id"] == rows[25]["id"]


def test_a_store_that_cannot_be_reached_or_named_is_a_clear_error(cli, tmp_path):
    port = free_port()
    result = cli("kb", "search", "docs", "question", "--store", f"postgresql://nobody:pw@127.0.0.1:{port}/x")
    assert result.code == 2 and "cannot connect to PostgreSQL" in result.err and "pw" not in result.err
    result = cli("kb", "search", "runs/kb", "question", "--store", "postgresql://127.0.0.1/x")
    assert result.code == 2 and "'runs/kb' cannot name a knowledge base" in result.err
    result = cli("kb", "search", "docs", "question", "--store", "mysql://x")
    assert result.code == 2 and "unknown store" in result.err
