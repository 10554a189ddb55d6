"""Shared fixtures: real data subsets and tiny models built in code. Nothing here reaches the network."""

from __future__ import annotations

import gzip
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BUNDLED = Path(__file__).resolve().parents[1] / "src" / "lmforge" / "data" / "bundled"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["LMFORGE_CACHE"] = str(tmp_path_factory.mktemp("lmforge-cache"))
    yield


def read_jsonl_gz(path: Path, limit: int | None = None) -> list[dict]:
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if limit and len(rows) >= limit:
                break
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """About 60k words of real text: Austen chapters and fortunes, blank-line separated documents."""
    out = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    docs: list[str] = []
    with gzip.open(BUNDLED / "corpus" / "austen.txt.gz", "rt", encoding="utf-8") as fh:
        text = fh.read()
    docs += text.split("\n\n")[:12]
    with gzip.open(BUNDLED / "corpus" / "fortunes.txt.gz", "rt", encoding="utf-8") as fh:
        docs += fh.read().split("\n\n")[:300]
    out.write_text("\n\n".join(d.strip() for d in docs if d.strip()) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def wordpiece_dir(tiny_corpus, tmp_path_factory) -> Path:
    from lmforge.config import TokenizerTrainConfig
    from lmforge.data.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "wordpiece"
    return train_tokenizer(TokenizerTrainConfig(corpus=[str(tiny_corpus)], kind="wordpiece", vocab_size=600, out=out))


@pytest.fixture(scope="session")
def sentiment_files(tmp_path_factory) -> dict[str, Path]:
    """Real movie-review rows: 240 train, 60 dev, 60 test."""
    folder = tmp_path_factory.mktemp("sentiment")
    src = BUNDLED / "movie-reviews"
    return {
        "train": write_jsonl(folder / "train.jsonl", read_jsonl_gz(src / "movie_reviews.train.jsonl.gz", 240)),
        "dev": write_jsonl(folder / "dev.jsonl", read_jsonl_gz(src / "movie_reviews.dev.jsonl.gz", 60)),
        "test": write_jsonl(folder / "test.jsonl", read_jsonl_gz(src / "movie_reviews.test.jsonl.gz", 60)),
    }


TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.fixture(scope="session")
def tiny_bert_dir(wordpiece_dir, tmp_path_factory) -> Path:
    """A randomly initialised BERT (hidden 32, 2 layers) with MLM+NSP heads, saved as an HF folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForPreTraining

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(wordpiece_dir)
    model = BertForPreTraining(BertConfig(vocab_size=len(tok), max_position_embeddings=128, **TINY_BERT))
    out = tmp_path_factory.mktemp("models") / "tiny-bert"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_bert_real_vocab(tmp_path_factory):
    """A random tiny BERT with minilm's tokenizer: a fixed vocabulary (a tokenizer trained in the session can differ
    from run to run, and with it what a tiny model learns in a few steps), where the key word is one token."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForPreTraining

    from lmforge.models import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=len(tok), max_position_embeddings=128, **TINY_BERT))
    out = tmp_path_factory.mktemp("models") / "tiny-bert-minilm-vocab"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@pytest.fixture
def cli(capsys):
    """Run the real CLI entry point in-process; returns exit code, stdout and stderr."""
    from lmforge.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmforge", *args]


TINY_GPT = {"n_embd": 32, "n_layer": 2, "n_head": 2}


@pytest.fixture(scope="session")
def bpe_dir(tiny_corpus, tmp_path_factory) -> Path:
    from lmforge.config import TokenizerTrainConfig
    from lmforge.data.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tok") / "bpe"
    return train_tokenizer(TokenizerTrainConfig(corpus=[str(tiny_corpus)], kind="bpe", vocab_size=500, out=out))


@pytest.fixture(scope="session")
def gpt_run(tiny_corpus, bpe_dir, tmp_path_factory) -> Path:
    """A tiny GPT (hidden 32, 2 layers) pretrained for a few steps on real text: a CLM run dir."""
    from lmforge.config import PretrainConfig
    from lmforge.stages import pretrain

    out = tmp_path_factory.mktemp("runs") / "gpt"
    pretrain(PretrainConfig.model_validate({
        "objective": "clm", "corpus": [str(tiny_corpus)], "tokenizer": str(bpe_dir), "size": "tiny",
        "arch": TINY_GPT, "seq_len": 64, "out": str(out),
        "train": {"max_steps": 30, "batch_size": 8, "lr": 3e-3, "log_every": 5}}), show_progress=False)
    return out


@pytest.fixture(scope="session")
def chat_run(gpt_run, tmp_path_factory) -> Path:
    """The tiny GPT fine-tuned on 80 real ChatterBot conversations: a chat run dir with a ChatML template."""
    from lmforge.tasks.chat import FinetuneChatConfig, finetune_chat

    folder = tmp_path_factory.mktemp("chat")
    rows = read_jsonl_gz(BUNDLED / "dialogue" / "chatterbot_en.train.jsonl.gz", 80)
    data = write_jsonl(folder / "dialogue.jsonl", rows)
    out = folder / "run"
    finetune_chat(FinetuneChatConfig.model_validate({
        "model": str(gpt_run), "data": str(data), "out": str(out), "max_length": 128,
        "train": {"max_steps": 20, "batch_size": 8, "lr": 3e-3}}), show_progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(bpe_dir, tmp_path_factory) -> Path:
    """A tiny random Llama (smollm2's architecture: grouped-query attention, RoPE, tied embeddings) with a chat
    template of its own, saved as an HF folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tests.helpers import CHATML

    tok = AutoTokenizer.from_pretrained(bpe_dir)
    tok.chat_template = CHATML
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>")))
    with torch.no_grad():  # embeddings (the tied head) as large as a trained model's, so a frozen head can be sure
        model.model.embed_tokens.weight.mul_(25)
    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_gemma3_dir(bpe_dir, tmp_path_factory) -> Path:
    """A tiny random Gemma 3 (gemma3's architecture: sliding-window layers of 6 slots between global ones, query/key
    norms, scaled embeddings, GeGLU) with no chat template, as the embedded base model has none: an HF folder."""
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    tok = AutoTokenizer.from_pretrained(bpe_dir)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=6,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"], max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    with torch.no_grad():  # a sharper model than the init (norm weights start at 0: scale 1), so greedy is no tie
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * 0.5) if "norm" in name else p.mul_(4)
    out = tmp_path_factory.mktemp("models") / "tiny-gemma3"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_t5_dir(bpe_dir, tmp_path_factory) -> Path:
    """A tiny random T5 (d_model 64, 2+2 layers) with sentinels and a pad token, saved as an HF folder."""
    import torch
    from transformers import AutoTokenizer

    from lmforge.models import build_t5
    from lmforge.tasks.pretrain_span import prepare_t5_tokenizer

    tok = AutoTokenizer.from_pretrained(bpe_dir)
    prepare_t5_tokenizer(tok)
    torch.manual_seed(0)
    model = build_t5("tiny", tok, {"d_model": 64, "d_ff": 128, "num_layers": 2, "num_heads": 2, "d_kv": 32})
    out = tmp_path_factory.mktemp("models") / "tiny-t5"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
