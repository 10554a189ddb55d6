"""Tokenizer training: WordPiece (BERT) and byte-level BPE (GPT), loadable by AutoTokenizer."""

from __future__ import annotations

from transformers import AutoTokenizer

from lmforge.config import TokenizerTrainConfig
from lmforge.data.tokenizer import train_tokenizer


def test_wordpiece_is_a_bert_tokenizer(wordpiece_dir):
    tok = AutoTokenizer.from_pretrained(wordpiece_dir)
    assert 400 <= len(tok) <= 600
    enc = tok("Elinor SAW Marianne.", "A second sentence.")
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    assert "elinor" in tok.decode(enc["input_ids"])  # lowercased
    assert enc["token_type_ids"][-1] == 1 and enc["token_type_ids"][0] == 0
    assert tok.mask_token == "[MASK]" and tok.pad_token_id == 0


def test_bpe_is_lossless_and_has_chat_markers(tiny_corpus, tmp_path):
    out = train_tokenizer(TokenizerTrainConfig(corpus=[str(tiny_corpus)], kind="bpe", vocab_size=400, out=tmp_path / "bpe"))
    tok = AutoTokenizer.from_pretrained(out)
    text = "def f(x):\n    return x * 2  # Ünïcödé ✓"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: no unknown tokens
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    ids = tok("<|im_start|>user")["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[0] == "<|im_start|>"


def test_unigram_keeps_case_and_accents_and_ends_with_eos(tmp_path, cli):
    from tests.conftest import BUNDLED, read_jsonl_gz

    rows = read_jsonl_gz(BUNDLED / "translation" / "bible_en_es.train.jsonl.gz", 600)
    corpus = tmp_path / "both.txt"  # the union of both sides, as a translation model's tokenizer needs
    corpus.write_text("\n".join(r[side] for r in rows for side in ("en", "es")) + "\n", encoding="utf-8")
    out = train_tokenizer(TokenizerTrainConfig(corpus=[str(corpus)], kind="unigram", vocab_size=800, out=tmp_path / "u"))
    tok = AutoTokenizer.from_pretrained(out)
    text = "Y Jesús les dijo: Señor, ¿por qué?"
    ids = tok(text)["input_ids"]
    assert ids[-1] == tok.eos_token_id and tok.pad_token == "<pad>"
    assert tok.decode(ids, skip_special_tokens=True) == text
    refused = cli("tokenizer", "train", "--corpus", corpus, "--kind", "unigram", "--lowercase", "--out", tmp_path / "x")
    assert refused.code == 2 and "--lowercase" in refused.err and not (tmp_path / "x").exists()
