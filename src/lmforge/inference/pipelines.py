"""Inference pipelines over a model folder: the same code answers the CLI, the Python API and the server.

A pipeline is chosen by its kind (``PIPELINES``), which each task declares in the task registry; ``lmforge.load``
(:func:`lmforge.stages.load`) resolves a run dir or HF folder to its task and builds the pipeline.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.data.batching import pad_batch, sorted_batches
from lmforge.errors import LmforgeError

log = logging.getLogger("lmforge")
SENTINEL = re.compile(r"<extra_id_\d+>")  # T5's span-corruption sentinels: kept in a seq2seq model's output


class InputTooLong(LmforgeError):
    """An input is longer than the model accepts and the caller did not ask for truncation."""


def check_lengths(lengths: list[int], limit: int) -> None:
    too_long = [(i, n) for i, n in enumerate(lengths) if n > limit]
    if too_long:
        raise InputTooLong(
            f"{len(too_long)} input{'s are' if len(too_long) > 1 else ' is'} longer than the model's {limit} tokens: "
            + ", ".join(f"input {i} has {n}" for i, n in too_long[:5])
            + (" ..." if len(too_long) > 5 else ""),
            fix="shorten the text, or send \"truncate\": true to cut it to the model's max length",
        )


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Pipeline:
    kind: str = ""  # the PIPELINES key
    batchable: bool = False  # concurrent requests may share one forward pass (the server micro-batches them)
    predict_hint: str | None = None  # when `lmforge predict` does not apply: what to use instead

    def __init__(self, model_dir: Path, *, name: str | None = None, info: dict | None = None, device: str | None = None,
                 task: str | None = None, precision: str = "auto"):
        self.model_dir = Path(model_dir)
        self.name = name or self.model_dir.name
        self.info = info or {}
        self.task = task or self.info.get("task") or self.kind
        self.device = torch.device(device) if device else default_device()
        self.precision = precision  # decoders' weights for generation: auto, float32, bfloat16 or int8

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "kind": self.kind}


class ClassificationPipeline(Pipeline):
    """Sequence classifiers. BERT-architecture folders (MiniLM, lmforge's BERTs) run on the lean forward of
    :mod:`lmforge.inference.encoder` without importing transformers; any other through transformers. A text longer
    than the model's window is read as its run says (:mod:`lmforge.data.long_inputs`): truncated, head and tail, or
    in windows whose logits are pooled into one answer."""

    kind = "text-classification"
    batchable = True

    def __init__(self, model_dir: Path, **kwargs: Any) -> None:
        super().__init__(model_dir, **kwargs)
        from lmforge.data.long_inputs import Framing, Reading
        from lmforge.inference import encoder

        if encoder.supports(self.model_dir):
            net, tok = encoder.LeanBertClassifier(self.model_dir, self.device), encoder.FastTokenizer(self.model_dir)
            self._content, self._forward = tok.content, net.logits
            with_specials = lambda text: tok.encode([text], None)[0]
            self.labels, pad_id = net.labels, tok.pad_token_id
            limits = (tok.model_max_length, net.config["max_position_embeddings"])
        else:
            from transformers import AutoModelForSequenceClassification

            from lmforge.models import from_pretrained, load_tokenizer

            tokenizer = load_tokenizer(self.model_dir)
            model = from_pretrained(AutoModelForSequenceClassification, self.model_dir, attn_implementation="sdpa")
            model.to(self.device).eval()
            self._content = lambda texts: tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
            with_specials = lambda text: tokenizer(text, verbose=False)["input_ids"]
            self._forward = lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits
            self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
            pad_id = tokenizer.pad_token_id
            limits = (int(tokenizer.model_max_length or 512), model.config.max_position_embeddings)
        self.pad_id = pad_id if pad_id is not None else 0
        config = self.info.get("config") or {}
        configured = config.get("max_length")
        self.max_length = min(int(configured), *limits) if configured else min(limits)
        self.reading = Reading.from_config(config, self.max_length)
        self.framing = Framing.of(with_specials, lambda text: self._content([text])[0])

    def describe(self) -> dict[str, Any]:
        reading = {"long_inputs": self.reading.strategy}
        if self.reading.strategy == "windows":
            reading.update(max_windows=self.reading.max_windows, pool=self.reading.pool)
        return {**super().describe(), "labels": self.labels, "max_length": self.max_length, **reading}

    def _contents(self, texts: list[str], truncate: bool) -> list[list[int]]:
        contents = self._content(texts)
        if not truncate:
            self._check(contents)
        return contents

    def _check(self, contents: list[list[int]]) -> None:
        """InputTooLong naming every input the model would not read whole (truncate and windows past the cap)."""
        reading, budget = self.reading, self.framing.budget(self.max_length)
        if reading.strategy == "windows":
            needed = [reading.windows_needed(len(c), self.framing) for c in contents]
            over = [(i, n) for i, n in enumerate(needed) if n > reading.max_windows]
            if over:
                raise InputTooLong(
                    f"{len(over)} input{'s' if len(over) > 1 else ''} would take more than the model's "
                    f"{reading.max_windows} windows of {self.max_length} tokens: "
                    + ", ".join(f"input {i} needs {n}" for i, n in over[:5]) + (" ..." if len(over) > 5 else ""),
                    fix=f"shorten the text, or send \"truncate\": true to read it in {reading.max_windows} windows "
                        "spread over its length")
        elif reading.strategy == "truncate":
            check_lengths([len(c) + self.max_length - budget for c in contents], self.max_length)

    def cost(self, texts: list[str], *, truncate: bool = True) -> list[int]:
        """How many windows each text is read as (what it costs the server); InputTooLong as ``predict`` would."""
        if truncate and self.reading.strategy != "windows":  # one piece each: nothing to tokenize for
            return [1] * len(texts)
        contents = self._contents(texts, truncate)
        return [min(self.reading.windows_needed(len(c), self.framing), self.reading.max_windows) for c in contents]

    @torch.inference_mode()
    def logits(self, texts: list[str], *, batch_size: int = 64, truncate: bool = True) -> tuple[np.ndarray, list[int]]:
        """Per text, one row of logits (its windows' pooled) and how many windows it was read as."""
        from lmforge.data.long_inputs import flatten, pool

        pieces = [self.reading.pieces(c, self.framing) for c in self._contents(texts, truncate)]
        flat, owner = flatten(pieces)
        out = np.zeros((len(flat), len(self.labels)), dtype=np.float32)
        for index in sorted_batches([len(x) for x in flat], batch_size):
            ids, mask = pad_batch([flat[i] for i in index], self.pad_id)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                logits = self._forward(ids.to(self.device), mask.to(self.device))
            out[index] = logits.float().cpu().numpy()
        if len(flat) > len(texts):
            out = pool(out, owner, len(texts), self.reading.pool)
        return out, [len(p) for p in pieces]

    def predict(self, texts: str | list[str], *, batch_size: int = 64, truncate: bool = True) -> list[dict]:
        """Per text: ``{"label", "score", "probabilities": {label: p}, "windows"}`` (the API's response items)."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return []
        logits, windows = self.logits(list(texts), batch_size=batch_size, truncate=truncate)
        probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
        results = []
        for row, count in zip(probs, windows):
            best = int(row.argmax())
            results.append(
                {
                    "label": self.labels[best],
                    "score": float(row[best]),
                    "probabilities": {label: float(p) for label, p in zip(self.labels, row)},
                    "windows": count,
                }
            )
        return results


class GenerationPipeline(Pipeline):
    """Causal LMs (pretrained, chat and code runs, or any HF causal LM): completion, chat, streaming."""

    kind = "text-generation"
    predict_hint = "it is a causal LM: use `lmforge generate RUN \"prompt\"` or `lmforge chat RUN`"

    def __init__(self, model_dir: Path, **kwargs: Any) -> None:
        super().__init__(model_dir, **kwargs)
        from transformers import AutoModelForCausalLM

        from lmforge.inference.generation import TextGenerator
        from lmforge.models import from_pretrained, load_tokenizer

        self.tokenizer = load_tokenizer(self.model_dir)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = from_pretrained(AutoModelForCausalLM, self.model_dir, attn_implementation="sdpa", dtype=dtype)
        self.model.to(self.device).eval()
        self.generator = TextGenerator(self.model, self.tokenizer, self.device, precision=self.precision)
        self.context = self.generator.context

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "max_length": self.context, "chat": self.has_chat_template}

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def no_chat(self) -> LmforgeError:
        """Why this model cannot chat, and what to do instead."""
        return LmforgeError(
            f"model '{self.name}' has no chat template: it is a base model, which continues text rather than "
            "answering chat turns",
            fix=f"use /v1/completions (lmforge generate), translate or summarize it few-shot, or fine-tune it for "
                f"chat first: lmforge finetune chat --model {self.name} --lora",
        )

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the conversation rendered with the model's chat template, ready for the assistant's turn."""
        if not self.has_chat_template:
            raise self.no_chat
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.generator.encode(prompt)

    def complete(self, prompts: list[str], **sampling: Any) -> list[dict]:
        from lmforge.inference.generation import SamplingParams

        outs = self.generator.generate(prompts, SamplingParams(**sampling))
        return [vars(o) for o in outs]

    def predict(self, texts: str | list[str], **sampling: Any) -> list[dict]:
        return self.complete([texts] if isinstance(texts, str) else list(texts), **sampling)


class FillMaskPipeline(Pipeline):
    """Masked language models (MLM pretraining runs, BERT folders): the most likely tokens for each mask in a text,
    which shows what masked-language pretraining learned."""

    kind = "fill-mask"

    def __init__(self, model_dir: Path, **kwargs: Any) -> None:
        super().__init__(model_dir, **kwargs)
        from transformers import AutoModelForMaskedLM

        from lmforge.models import from_pretrained, load_tokenizer

        self.tokenizer = load_tokenizer(self.model_dir)
        if self.tokenizer.mask_token is None:
            raise LmforgeError(f"the tokenizer of '{self.name}' has no mask token", fix="use a BERT-style run")
        self.model = from_pretrained(AutoModelForMaskedLM, self.model_dir, attn_implementation="sdpa")
        self.model.to(self.device).eval()
        self.max_length = min(int(self.tokenizer.model_max_length or 512), self.model.config.max_position_embeddings)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "max_length": self.max_length, "mask_token": self.tokenizer.mask_token}

    @torch.inference_mode()
    def predict(self, texts: str | list[str], *, top_k: int = 5, batch_size: int = 32, truncate: bool = False) -> list[dict]:
        """Per text: each mask's ``top_k`` candidates ``{"token", "score"}`` and the text with the best ones filled."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        mask = self.tokenizer.mask_token
        missing = [i for i, t in enumerate(texts) if mask not in t]
        if missing:
            raise LmforgeError(f"input {missing[0]} has no {mask} token to fill in",
                               fix=f'put {mask} where a word is missing, e.g. "Paris is the {mask} of France."')
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        results: list[dict] = [{} for _ in texts]
        for index in sorted_batches([len(x) for x in encoded], batch_size):
            ids, attention = pad_batch([encoded[i] for i in index], self.tokenizer.pad_token_id or 0)
            logits = self.model(input_ids=ids.to(self.device), attention_mask=attention.to(self.device)).logits
            for row, i in enumerate(index):
                positions = (ids[row] == self.tokenizer.mask_token_id).nonzero().flatten().tolist()
                probs = torch.softmax(logits[row, positions].float(), dim=-1)  # [masks, V]
                top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
                masks = [[{"token": self.tokenizer.decode([t]).strip(), "score": float(p)}
                          for p, t in zip(scores.tolist(), tokens.tolist())]
                         for scores, tokens in zip(top.values, top.indices)]
                filled = encoded[i].copy()
                for position, candidates in zip(positions, top.indices):
                    filled[position] = int(candidates[0])
                results[i] = {"masks": masks, "filled": self.tokenizer.decode(filled, skip_special_tokens=True)}
        return results


class EmbeddingPipeline(Pipeline):
    """Sentence vectors from an encoder: the embedded ``minilm``, any BERT-style encoder folder, or the encoder under
    a classification or masked-LM run's head. Last hidden states mean-pooled over the real tokens and L2-normalized,
    as sentence-transformers does for all-MiniLM-L6-v2 (:class:`lmforge.inference.embedding.SentenceEmbedder`, which
    the knowledge bases embed with too); float32, so the vectors are the model's own. Texts longer than
    :attr:`max_length` tokens (minilm: its sentence-transformers setting, 256) are cut, or refused."""

    kind = "feature-extraction"
    # the server micro-batches embeddings itself, over token ids tokenized once (serve/routes/embeddings.py)
    batchable = False

    def __init__(self, model_dir: Path, **kwargs: Any) -> None:
        super().__init__(model_dir, **kwargs)
        from lmforge.inference.embedding import SentenceEmbedder

        self.embedder = SentenceEmbedder(self.model_dir, device=str(self.device))
        self.dim, self.max_length = self.embedder.dim, self.embedder.max_length

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "max_length": self.max_length, "dimensions": self.dim}

    def tokenize(self, texts: list[str], *, truncate: bool = True) -> list[list[int]]:
        """Token ids of each text (special tokens included), cut to :attr:`max_length`; InputTooLong for a longer
        one unless ``truncate``. From one thread at a time (the tokenizer's truncation setting is shared)."""
        encoded = self.embedder.tokenize(texts, truncate=truncate)
        if not truncate:
            check_lengths([len(x) for x in encoded], self.max_length)
        return encoded

    def embed_tokens(self, encoded: list[list[int]], *, batch_size: int = 64) -> np.ndarray:
        """``float32 [N, dim]`` unit vectors of tokenized texts, on this thread (a server's worker)."""
        return self.embedder.embed_tokens(encoded, batch_size=batch_size, workers=1)

    def predict(self, texts: str | list[str], *, batch_size: int = 64, truncate: bool = True) -> list[dict]:
        """Per text: ``{"embedding": [dim floats], "tokens": tokens read}``."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return []
        encoded = self.tokenize(texts, truncate=truncate)
        vectors = self.embedder.embed_tokens(encoded, batch_size=batch_size)
        return [{"embedding": v.tolist(), "tokens": len(ids)} for v, ids in zip(vectors, encoded)]


# the decoding settings a seq2seq run's config holds (tasks.seq2seq.DecodingSettings) and predict() takes
DECODING = ("num_beams", "length_penalty", "no_repeat_ngram_size", "max_new_tokens", "do_sample")
SAMPLING = ("temperature", "top_p", "top_k")


def generate_options(settings: dict) -> dict:
    """Decoding settings as ``generate`` keyword arguments (sampling ones only when sampling: they mean nothing to
    greedy or beam search, and transformers warns about them)."""
    options = {k: v for k, v in settings.items() if k in DECODING}
    if settings.get("do_sample"):
        options.update({k: settings[k] for k in SAMPLING if k in settings})
    return options


DEFAULT_SHOTS = 4  # examples a base decoder is shown when the caller gives no --shots (chosen on translation:dev)


class FewShot:
    """A few-shot prompt for a base decoder: K (source, target) examples shown before the text, each side after its
    label, one example a paragraph; the answer is the line after the text's target label.

    The examples are the K training pairs whose sources are nearest the text (TF-IDF cosine over words and word
    pairs: a verse is shown verses that share its phrasing, a package description others of its kind), the nearest
    last; a text identical to a training source never sees its own answer. Deterministic: the same text always gets
    the same prompt."""

    stop = ("\n",)  # an answer is one line: the next example's label would follow

    def __init__(self, source_label: str, target_label: str, pairs: list[tuple[str, str]]) -> None:
        self.source_label, self.target_label = source_label, target_label
        self.pairs = [(" ".join(s.split()), " ".join(t.split())) for s, t in pairs]  # one line a side
        self._index: tuple | None = None

    def _nearest(self, text: str, shots: int) -> list[int]:
        from sklearn.feature_extraction.text import TfidfVectorizer

        if self._index is None:
            vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w+\b")
            try:
                self._index = vectorizer, vectorizer.fit_transform([s for s, _ in self.pairs])  # [N, terms], rows L2
            except ValueError:  # no word in any source (punctuation only): every pair is as near as another
                self._index = None, None
        vectorizer, matrix = self._index
        scores = (np.zeros(len(self.pairs)) if vectorizer is None
                  else (matrix @ vectorizer.transform([text]).T).toarray().ravel())  # [N] cosine
        order = np.lexsort((np.arange(len(scores)), -scores))  # best first; ties by position: deterministic
        chosen = [int(i) for i in order if self.pairs[i][0] != text][:shots]
        return chosen[::-1]  # the nearest right before the text

    def prompt(self, text: str, shots: int) -> str:
        text = " ".join(text.split())
        shown = [f"{self.source_label}: {self.pairs[i][0]}\n{self.target_label}: {self.pairs[i][1]}"
                 for i in self._nearest(text, shots)]
        return "\n\n".join([*shown, f"{self.source_label}: {text}\n{self.target_label}:"])


class Seq2SeqPipeline(Pipeline):
    """Text in, text out (translation, summarization), greedy, beam search or sampling. An encoder-decoder (a
    span-corruption run, BERT2BERT, any HF seq2seq folder) reads the text; a causal LM (a translate or summarize run
    from smollm2 or a CLM run) is asked its run's instruction and the text as a chat exchange and answers; a base
    decoder (no chat template of its own: gemma3, a CLM run), or any causal LM asked for ``shots``, is shown that many
    examples of ``few_shot`` before the text and continues the pattern. A span-corruption run fills in its sentinels:
    ``"The <extra_id_0> sat on the mat."``."""

    kind = "text2text-generation"

    def __init__(self, model_dir: Path, *, instruction: str | None = None, few_shot: FewShot | None = None,
                 **kwargs: Any) -> None:
        super().__init__(model_dir, **kwargs)
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

        from lmforge.models import from_pretrained, load_config, load_tokenizer

        self.tokenizer = load_tokenizer(self.model_dir)
        self.causal = not getattr(load_config(self.model_dir), "is_encoder_decoder", False)
        self.base = self.causal and not getattr(self.tokenizer, "chat_template", None)  # before ChatML is added
        self.few_shot = few_shot
        self._generator = None
        config = self.info.get("config") or {}
        if self.causal:
            from lmforge.data.chat_format import ensure_chat_tokens, stop_on_turn_end

            self.model = from_pretrained(AutoModelForCausalLM, self.model_dir, attn_implementation="sdpa")
            ensure_chat_tokens(self.tokenizer, self.model)  # ChatML for a model without a template, as its run had
            stop_on_turn_end(self.model, self.tokenizer)
        else:
            self.model = from_pretrained(AutoModelForSeq2SeqLM, self.model_dir)
        self.model.to(self.device).eval()
        self.prefix = config.get("prefix") or ""  # a fine-tuned run's input prefix, instruction and decoding settings
        self.instruction = instruction or config.get("instruction") or "Rewrite this text."
        self.decoding = {"num_beams": 1, "max_new_tokens": 64, **(config.get("decoding") or {})}
        self.max_length = int(config.get("max_source_length") or min(self.tokenizer.model_max_length or 512, 4096))

    @classmethod
    def over(cls, loaded: GenerationPipeline, *, instruction: str, few_shot: FewShot | None) -> Seq2SeqPipeline:
        """A causal LM already loaded for generation (a served smollm2 or gemma3), asked to translate or summarize:
        the same weights and decoder, no second copy. A base model is prompted few-shot; one with a chat template is
        asked ``instruction``."""
        self = cls.__new__(cls)
        Pipeline.__init__(self, loaded.model_dir, name=loaded.name, info=loaded.info, device=str(loaded.device),
                          task=loaded.task, precision=loaded.precision)
        self.tokenizer, self.model, self.causal = loaded.tokenizer, loaded.model, True
        self.base, self.few_shot, self._generator = not loaded.has_chat_template, few_shot, loaded.generator
        self.prefix, self.instruction = "", instruction
        self.decoding = {"num_beams": 1, "max_new_tokens": 64}
        self.max_length = min(int(loaded.context), 4096)
        return self

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "max_length": self.max_length, "decoding": self.decoding,
                "few_shot": self.default_shots}

    @property
    def default_shots(self) -> int:
        """Examples shown when a request gives none: a base decoder's few-shot prompt, else none (an instruction)."""
        return DEFAULT_SHOTS if self.base and self.few_shot is not None else 0

    @property
    def generator(self):
        if self._generator is None:
            from lmforge.inference.generation import TextGenerator

            self._generator = TextGenerator(self.model, self.tokenizer, self.device, precision=self.precision)
        return self._generator

    def _few_shot(self, texts: list[str], shots: int, truncate: bool, batch_size: int, settings: dict) -> list[str]:
        """Greedy (or sampled) continuations of few-shot prompts, up to the end of the answer's line."""
        from lmforge.inference.generation import SamplingParams

        if self.few_shot is None:
            raise LmforgeError(f"model '{self.name}' has no examples to show", where="shots",
                               fix="give examples (FewShot) when loading it, or ask with shots 0")
        if len(self.few_shot.pairs) < shots:
            raise LmforgeError(f"{shots} examples asked, {len(self.few_shot.pairs)} available", where="shots",
                               fix=f"ask for at most {len(self.few_shot.pairs)} shots")
        from lmforge.data.chat_format import source_cutter

        if not truncate:
            check_lengths([len(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]],
                          self.max_length)
        new = int(settings.get("max_new_tokens") or 64)
        room = self.generator.context - new  # prompt tokens that leave the answer room in the context
        cut = source_cutter(self.tokenizer, max(8, min(self.max_length, room - 32))) if truncate else (lambda t: t)
        encoded = []
        for text in texts:
            for k in range(shots, -1, -1):  # a long text is shown fewer examples, so that it fits
                ids = self.generator.encode(self.few_shot.prompt(cut(text), k))
                if len(ids) <= room:
                    break
            encoded.append(ids)
        check_lengths([len(x) + new for x in encoded], self.generator.context)  # prompt + answer in the context
        sampled = settings.get("do_sample")
        params = SamplingParams(max_new_tokens=new, stop=list(FewShot.stop),
                                temperature=float(settings.get("temperature") or 1.0) if sampled else 0.0,
                                top_p=float(settings.get("top_p") or 1.0), top_k=int(settings.get("top_k") or 0))
        results = [""] * len(texts)
        for index in sorted_batches([len(x) for x in encoded], batch_size):
            for i, out in zip(index, self.generator.generate([encoded[i] for i in index], params)):
                results[i] = out.text.strip()
        return results

    def _encode(self, texts: list[str], truncate: bool) -> list[list[int]]:
        """Token ids of the model's inputs: the text (with the run's prefix), or for a causal LM the rendered chat
        exchange that asks for its output. Over-long texts are cut to max_length tokens, or refused."""
        if not self.causal:
            encoded = self.tokenizer([self.prefix + t for t in texts], truncation=truncate,
                                     max_length=self.max_length, verbose=False)["input_ids"]
            if not truncate:
                check_lengths([len(x) for x in encoded], self.max_length)
            return encoded
        from lmforge.data.chat_format import as_exchange, source_cutter

        if not truncate:
            check_lengths([len(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]],
                          self.max_length)
        cut = source_cutter(self.tokenizer, self.max_length)
        prompts = [self.tokenizer.apply_chat_template(as_exchange(self.instruction, cut(t)), tokenize=False,
                                                      add_generation_prompt=True) for t in texts]
        return self.tokenizer(prompts, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def predict(self, texts: str | list[str], *, batch_size: int = 16, truncate: bool = True, shots: int | None = None,
                **decoding: Any) -> list[dict]:
        """Per text: ``{"text"}``, the generated output (special tokens other than sentinels removed). ``decoding``
        overrides the run's: num_beams, max_new_tokens, length_penalty, no_repeat_ngram_size, do_sample,
        temperature, top_p, top_k. ``shots``: a causal LM shown this many examples first (None: the model's
        default, :attr:`default_shots`); few-shot answers are greedy unless sampled (beams do not apply)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        shots = self.default_shots if shots is None else shots
        if shots and not self.causal:
            raise LmforgeError(f"model '{self.name}' is an encoder-decoder: it reads the text as it is", where="shots",
                               fix="ask with shots 0 (few-shot prompts are for causal LMs)")
        if shots:
            return [{"text": t} for t in self._few_shot(texts, shots, truncate, batch_size,
                                                        {**self.decoding, **decoding})]
        settings = generate_options({**self.decoding, **{k: v for k, v in decoding.items() if v is not None}})
        outputs = generate_texts(self.model, self.tokenizer, self._encode(texts, truncate), settings,
                                 batch_size=batch_size, causal=self.causal)
        return [{"text": text} for text in outputs]


def generate_texts(model, tokenizer, encoded: list[list[int]], settings: dict, *, batch_size: int,
                   causal: bool = False) -> list[str]:
    """The generated text for each tokenized input, in batches of similar length (a causal LM's prompts padded on the
    left and cut from its outputs); special tokens other than T5 sentinels removed. ``settings``: generate's
    keyword arguments (:func:`generate_options`)."""
    device = next(model.parameters()).device
    drop = {t for t in tokenizer.all_special_tokens if not SENTINEL.fullmatch(t)}
    pad_id = tokenizer.pad_token_id or 0
    results = [""] * len(encoded)
    for index in sorted_batches([len(x) for x in encoded], batch_size):
        ids, mask = pad_batch([encoded[i] for i in index], pad_id, left=causal)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **settings)
        if causal:
            out = out[:, ids.shape[1]:]  # what follows the prompt
        for row, i in enumerate(index):
            tokens = [t for t in tokenizer.convert_ids_to_tokens(out[row].tolist()) if t not in drop]
            results[i] = tokenizer.convert_tokens_to_string(tokens).strip()
    return results


class QuestionAnsweringPipeline(Pipeline):
    """Extractive question answering (a ``qa`` run, or any HF ``...ForQuestionAnswering`` folder with a fast
    tokenizer): the answer is a span of the context. A context longer than one window is read in overlapping windows
    and the best span over all of them wins (:mod:`lmforge.inference.extractive_qa`)."""

    kind = "question-answering"
    predict_hint = 'it answers questions: use `lmforge predict RUN --question "..." --context "..."`'

    def __init__(self, model_dir: Path, **kwargs: Any) -> None:
        super().__init__(model_dir, **kwargs)
        from transformers import AutoModelForQuestionAnswering

        from lmforge.data.qa_windows import check_fast, question_limit
        from lmforge.models import from_pretrained, load_tokenizer

        self.tokenizer = load_tokenizer(self.model_dir)
        check_fast(self.tokenizer, f"model '{self.name}'")
        self.model = from_pretrained(AutoModelForQuestionAnswering, self.model_dir, attn_implementation="sdpa")
        self.model.to(self.device).eval()
        config = self.info.get("config") or {}
        limit = min(int(self.tokenizer.model_max_length or 512), self.model.config.max_position_embeddings)
        self.max_length = min(int(config.get("max_length") or 384), limit)
        self.stride = int(config["stride"]) if config.get("stride") is not None else min(128, self.max_length // 4)
        self.max_answer_length = int(config.get("max_answer_length") or 30)
        self.n_best = int(config.get("n_best") or 20)
        self.max_question_tokens = question_limit(self.tokenizer, self.max_length, self.stride)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "max_length": self.max_length, "stride": self.stride,
                "max_answer_length": self.max_answer_length, "max_question_tokens": self.max_question_tokens}

    @staticmethod
    def _pairs(items: Any) -> tuple[list[str], list[str]]:
        """Questions and contexts from ``{"question", "context"}`` dicts or ``(question, context)`` pairs."""
        if isinstance(items, dict) or isinstance(items, tuple) and len(items) == 2 and isinstance(items[0], str):
            items = [items]
        questions, contexts = [], []
        for i, item in enumerate(items):
            question, context = ((item.get("question"), item.get("context")) if isinstance(item, dict)
                                 else tuple(item) if isinstance(item, (tuple, list)) and len(item) == 2 else (None, None))
            if not isinstance(question, str) or not isinstance(context, str):
                raise LmforgeError(f"item {i} is not a question with its context",
                                   fix='give {"question": "...", "context": "..."} items, or (question, context) pairs')
            questions.append(question)
            contexts.append(context)
        return questions, contexts

    def windows(self, items: Any, *, truncate: bool = True):
        """The windows the model reads for these items (QuestionTooLong for a question past max_question_tokens,
        unless ``truncate``)."""
        from lmforge.data.qa_windows import encode_windows

        questions, contexts = self._pairs(items)
        return encode_windows(self.tokenizer, questions, contexts, self.max_length, self.stride, truncate=truncate), \
            contexts

    @torch.inference_mode()
    def predict(self, questions_and_contexts: Any, *, batch_size: int = 32, truncate: bool = True,
                max_windows: int | None = None) -> list[dict]:
        """Per item: ``{"answer", "score", "start", "end", "windows"}``; ``answer == context[start:end]`` (character
        offsets), ``score`` P(start) x P(end). ``truncate``: cut a question longer than a window holds beside the
        context (else refuse it); contexts are never cut, they are read in windows. ``max_windows``: refuse (with
        InputTooLong) items read as more windows than this in all."""
        from lmforge.inference.extractive_qa import best_answers, window_logits

        if isinstance(questions_and_contexts, list) and not questions_and_contexts:
            return []
        windows, contexts = self.windows(questions_and_contexts, truncate=truncate)
        if max_windows is not None and len(windows) > max_windows:
            raise InputTooLong(
                f"these {len(contexts)} contexts are read as {len(windows)} windows of {self.max_length} tokens; "
                f"one request may hold {max_windows}", fix="send shorter contexts, or split them over several requests")
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            starts, ends = window_logits(self.model, windows, self.pad_id, batch_size)
        answers = best_answers(starts, ends, windows, contexts, n_best=self.n_best,
                               max_answer_length=self.max_answer_length)
        for answer, count in zip(answers, windows.per_example()):
            answer["windows"] = int(count)
        return answers


PIPELINES: dict[str, type[Pipeline]] = {
    cls.kind: cls for cls in (ClassificationPipeline, GenerationPipeline, FillMaskPipeline, Seq2SeqPipeline,
                              QuestionAnsweringPipeline, EmbeddingPipeline)
}


def architectures(model_dir: Path) -> list[str]:
    """The ``architectures`` a Hugging Face folder's config.json declares."""
    import json

    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return list(config.get("architectures") or [])
