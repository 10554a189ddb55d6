"""MLM+NSP pretraining throughput: lmforge's loop vs the Hugging Face Trainer with ``BertForPreTraining``.

Same model (a fresh BERT of the chosen size), same sentence pairs (lmforge's packed NSP instances of epoch 0), same
batch size, optimizer, LR and precision. The Trainer side is the plain HF recipe: ``DataCollatorForLanguageModeling``
(15% masking, dynamic padding) and ``BertForPreTraining``'s full-vocabulary MLM head on every position.

    python benchmarks/bench_pretrain.py [--size mini] [--steps 30] [--batch-size 32] [--seq-len 128]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report, time_lmforge, time_trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="mini")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=30000)
    parser.add_argument("--tokenizer", default=None, help="WordPiece folder (default: trained here on the corpus)")
    args = parser.parse_args()

    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    from lmforge.config import TokenizerTrainConfig
    from lmforge.data.tokenizer import train_tokenizer
    from lmforge.models import build_bert_pretraining
    from lmforge.tasks.pretrain_mlm_nsp import MlmNspConfig, make_instances, prepare_pretraining

    work = Path(tempfile.mkdtemp(prefix="lmforge-bench-"))
    tok_dir = args.tokenizer or train_tokenizer(TokenizerTrainConfig(
        corpus=["corpus"], kind="wordpiece", vocab_size=args.vocab_size, out=work / "tok"))
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    lr = 5e-4

    # ---------------------------------------------------------------- lmforge
    config = MlmNspConfig.model_validate({
        "tokenizer": str(tok_dir), "size": args.size, "seq_len": args.seq_len, "out": str(work / "run"),
        "eval_fraction": 0.0, "train": {"max_steps": args.steps + args.warmup + 1, "batch_size": args.batch_size,
                                        "lr": lr, "log_every": 1000}})
    task, run, extra = prepare_pretraining(config)
    n_params = extra["parameters"]
    ours = time_lmforge(task, run, config.train, args.warmup)

    # ---------------------------------------------------------------- Hugging Face Trainer
    source = task.train_data
    inst = make_instances(source.cache, source.doc_ids, args.seq_len, np.random.default_rng([0, 0, 1]))
    tokens = source.cache.tokens
    pick = np.random.default_rng(0).permutation(len(inst))[: (args.steps + args.warmup + 1) * args.batch_size * 2]
    rows = []
    for i in pick:
        a = tokens[inst.a_start[i] : inst.a_start[i] + inst.a_len[i]].tolist()
        b = tokens[inst.b_start[i] : inst.b_start[i] + inst.b_len[i]].tolist()
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        rows.append({"input_ids": [cls, *a, sep, *b, sep], "token_type_ids": [0] * (len(a) + 2) + [1] * (len(b) + 1),
                     "next_sentence_label": int(inst.nsp_label[i])})
    torch.manual_seed(0)
    model = build_bert_pretraining(args.size, tokenizer, args.seq_len)
    theirs = time_trainer(model, rows, DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15), work,
                          batch_size=args.batch_size, steps=args.steps + args.warmup + 1, lr=lr, warmup=args.warmup,
                          weight_decay=0.01, warmup_steps=0.05)
    report("pretrain_mlm_nsp", "tokens_per_s", ours, theirs,
           {"model": f"BERT {args.size} ({n_params / 1e6:.1f}M parameters)", "seq_len": args.seq_len,
            "batch_size": args.batch_size, "command": "python benchmarks/bench_pretrain.py " + " ".join(sys.argv[1:])})


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
