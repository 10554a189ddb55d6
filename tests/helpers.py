"""Small helpers shared by tests (argument lists for tiny runs)."""

from __future__ import annotations

import json
from pathlib import Path

TINY_ARCH = ["--set", "arch.hidden_size=32", "--set", "arch.num_hidden_layers=2", "--set",
             "arch.num_attention_heads=2", "--set", "arch.intermediate_size=64"]


def pretrain_args(corpus: Path, tokenizer: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--objective", "mlm-nsp", "--corpus", str(corpus), "--tokenizer", str(tokenizer),
            "--size", "tiny", *TINY_ARCH, "--seq-len", "32", "--batch-size", "8", "--out", str(out),
            "--set", "train.threads=1", *extra]


def losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def evals(run: Path) -> list[tuple[int, dict]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["eval"]) for r in rows if "eval" in r]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def write_tiny_llama_gguf(path: Path, tokenizer_dir: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A GGUF file of a tiny random Llama (4 heads, 2 KV heads) with a byte-level BPE tokenizer and a ChatML
    template, written with the gguf package's writer as llama.cpp's converter would; token embeddings in Q8_0 so the
    reading dequantizes. What `smollm2`'s GGUF file is, at test size."""
    import gguf
    import numpy as np

    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    for added in spec["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    specials = {a["content"] for a in spec["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    rng = np.random.default_rng(seed)
    heads, kv_heads, ffn = 4, 2, 2 * hidden
    head_dim = hidden // heads

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in specials else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<|endoftext|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_pad_token_id(vocab["<|pad|>"])
    writer.add_chat_template(CHATML)
    embeddings = gguf.quants.quantize(weight(len(tokens), hidden), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("token_embd.weight", embeddings, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("output_norm.weight", 1 + weight(hidden))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", 1 + weight(hidden))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(hidden, hidden))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(kv_heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(kv_heads * head_dim, hidden))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(hidden, hidden))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + weight(hidden))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(ffn, hidden))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(ffn, hidden))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(hidden, ffn))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def finetune_losses(cli, task: str, model: Path, data: Path, out: Path, *options: str) -> list[float]:
    """Fine-tune ``task`` on ``data`` (also the dev data), logging every 5 steps; the training-loss curve."""
    result = cli("finetune", task, "--model", model, "--data", data, "--eval", data, "--out", out, *options,
                 "--set", "train.log_every=5")
    assert result.code == 0, result.text
    return [loss for _, loss in losses(out)]
