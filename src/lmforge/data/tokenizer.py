"""Train subword tokenizers with the ``tokenizers`` library and save them as ``PreTrainedTokenizerFast`` folders.

WordPiece follows BERT (``[CLS] A [SEP] B [SEP]``, optional lowercasing); byte-level BPE follows GPT-2 (no unknown
tokens, ``<|endoftext|>`` as BOS/EOS) plus ``<|pad|>`` and the chat markers ``<|im_start|>``/``<|im_end|>`` so a
chat template needs no vocabulary surgery later. Training streams lines from the files; nothing is held in memory.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lmforge.config import TokenizerTrainConfig
from lmforge.data.progress import text_bytes, track
from lmforge.data.readers import corpus_files, iter_corpus_lines
from lmforge.errors import ConfigError, DataError
from lmforge.rundir import check_output_dir, prepare_output_dir

log = logging.getLogger(__name__)

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
GPT_EOS = "<|endoftext|>"
GPT_PAD = "<|pad|>"
CHAT_MARKERS = ["<|im_start|>", "<|im_end|>"]
GPT_SPECIALS = [GPT_EOS, GPT_PAD, *CHAT_MARKERS]


def _build_wordpiece(lowercase: bool):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _bert_post_processor(tok):
    from tokenizers import processors

    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    return processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def _build_bpe(lowercase: bool):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.BPE())
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


T5_SPECIALS = ["<pad>", "</s>", "<unk>"]


def _build_unigram():
    """SentencePiece-style: NFKC, words marked by a leading ▁ (so decoding restores the spaces), cased, accents
    kept, and ``</s>`` ending every sequence, as T5's tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return tok


def train_tokenizer(config: TokenizerTrainConfig, *, show_progress: bool = True) -> Path:
    """Train a tokenizer on the corpus and write a folder ``AutoTokenizer.from_pretrained`` loads. An existing
    ``out`` is refused before any work, and nothing is written unless training succeeds."""
    import sys

    from tokenizers import pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    check_output_dir(config.out, overwrite=config.overwrite, kind="tokenizer")
    files = corpus_files(config.corpus)
    lowercase = config.lowercase if config.lowercase is not None else config.kind == "wordpiece"
    if config.kind == "unigram":
        if lowercase:
            raise ConfigError("the unigram tokenizer keeps case and accents", where="--lowercase",
                              fix="leave out --lowercase, or use --kind wordpiece")
        tok = _build_unigram()
        trainer = trainers.UnigramTrainer(vocab_size=config.vocab_size, special_tokens=T5_SPECIALS, unk_token="<unk>",
                                          show_progress=show_progress and sys.stderr.isatty())
    elif config.kind == "wordpiece":
        tok = _build_wordpiece(lowercase)
        trainer = trainers.WordPieceTrainer(
            vocab_size=config.vocab_size,
            min_frequency=config.min_frequency,
            special_tokens=BERT_SPECIALS,
            continuing_subword_prefix="##",
            show_progress=show_progress and sys.stderr.isatty(),
        )
    else:
        tok = _build_bpe(lowercase)
        trainer = trainers.BpeTrainer(
            vocab_size=config.vocab_size,
            min_frequency=config.min_frequency,
            special_tokens=GPT_SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress and sys.stderr.isatty(),
        )
    lines = track(iter_corpus_lines(files), text_bytes(files), f"reading the corpus for the {config.kind} tokenizer",
                  enabled=show_progress)
    tok.train_from_iterator(lines, trainer=trainer)
    if tok.get_vocab_size() <= len(trainer.special_tokens):
        raise DataError(f"the corpus {', '.join(config.corpus)} has no text to learn a vocabulary from")
    if config.kind == "wordpiece":
        tok.post_processor = _bert_post_processor(tok)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            do_lower_case=lowercase,
            model_max_length=config.max_length,
            model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        )
    elif config.kind == "unigram":
        from tokenizers import processors

        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", tok.token_to_id("</s>"))])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                       model_max_length=config.max_length)
    else:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token=GPT_EOS,
            eos_token=GPT_EOS,
            unk_token=GPT_EOS,
            pad_token=GPT_PAD,
            additional_special_tokens=CHAT_MARKERS,
            model_max_length=config.max_length,
        )
    out = prepare_output_dir(config.out, overwrite=config.overwrite, kind="tokenizer")
    fast.save_pretrained(out)
    log.info("tokenizer with %d tokens written to %s", tok.get_vocab_size(), out)
    return out
