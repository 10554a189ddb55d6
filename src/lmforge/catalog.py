"""Every model lmforge can start from offline (``lmforge models list``): the embedded ones, the size presets it
pretrains from scratch, and the runs under a folder (``./runs``), with what they are for, their parameters, size on
disk and the longest input they read; ``measure`` times each on this machine.

Counting never loads weights: a safetensors file's header holds every tensor's shape, a GGUF file's reader lists
them, and a preset is built on PyTorch's meta device (shapes without memory).
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmforge.models import BERT_SIZES, EMBEDDED, GPT_SIZES, T5_SIZES, cache_root, embedded_package

PRESET_VOCAB = 30000  # the vocabulary a preset is counted with (the default tokenizer size)
FAMILIES = {  # what each kind of model is for in lmforge
    "encoder": "classify, qa, kb vectors, BERT2BERT translate/summarize",
    "decoder": "chat, code, generate, translate/summarize (prompted), kb ask",
    "encoder-decoder": "translate, summarize",
}


@dataclass
class ModelEntry:
    name: str  # what --model / --init / lmforge serve take
    kind: str  # embedded, preset or run
    family: str  # encoder, decoder or encoder-decoder
    describe: str
    parameters: int | None = None
    size_mb: float | None = None  # on disk (presets: the float32 weights they would save)
    max_length: int | None = None  # tokens it reads at once
    task: str | None = None  # a run's task
    metric: dict = field(default_factory=dict)  # a run's headline evaluation, when it has one
    speed: dict | None = None  # with measure: {"unit": ..., "value": ...}
    use: str = ""  # how a command names it
    license: str | None = None  # the weights' license (embedded models, and runs made from them)
    base: bool = False  # a pretrained decoder with no chat template (few-shot prompts, or fine-tune it)

    @property
    def good_for(self) -> str:
        return FAMILIES.get(self.family, "")

    def as_dict(self) -> dict:
        return {**asdict(self), "good_for": self.good_for}


def safetensors_parameters(path: Path) -> int:
    """Parameters in a .safetensors file, from its JSON header (8-byte length, then the header); integer tensors
    (buffers such as BERT's position ids) are not parameters."""
    with open(path, "rb") as fh:
        size = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(size))
    total = 0
    for name, meta in header.items():
        if name != "__metadata__" and meta["dtype"].startswith(("F", "BF")):
            count = 1
            for dim in meta["shape"]:
                count *= dim
            total += count
    return total


def _folder_mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 1)


def _family(config: dict) -> str:
    if config.get("is_encoder_decoder"):
        return "encoder-decoder"
    architectures = config.get("architectures") or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "decoder"
    return "encoder"


def _max_length(config: dict) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        if config.get(key):
            return int(config[key])
    return None  # T5: relative positions, no hard limit


def folder_entry(name: str, kind: str, folder: Path, describe: str, **extra) -> ModelEntry:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    weights = sorted(folder.glob("*.safetensors"))
    extra.setdefault("license", config.get("license_terms"))  # a model made from one under its own terms
    return ModelEntry(name, kind, _family(config), describe,
                      parameters=sum(safetensors_parameters(w) for w in weights) or None,
                      size_mb=_folder_mb(folder), max_length=_max_length(config), **extra)


def embedded_entries() -> list[ModelEntry]:
    """The embedded models that are installed (a GGUF model counted from its GGUF file, or from its chunk packages'
    sizes, unless already converted), each with its license."""
    from lmforge.errors import ModelLoadError
    from lmforge.models import GGUF_CONVERSION

    out = []
    for name, embedded in EMBEDDED.items():
        try:
            package = embedded_package(name)
        except ModelLoadError:
            continue
        if embedded.gguf is None:
            entry = folder_entry(name, "embedded", package / "model", embedded.describe)
        else:
            converted = sorted((cache_root() / "models").glob(f"{name}-*-v{GGUF_CONVERSION}/config.json"))
            gguf_file = package / embedded.gguf
            size_mb = round(_gguf_bytes(embedded, gguf_file) / 1e6, 1)
            if converted:
                entry = folder_entry(name, "embedded", converted[-1].parent, embedded.describe)
            elif gguf_file.exists():
                import gguf

                reader = gguf.GGUFReader(str(gguf_file))
                parameters = sum(int(t.n_elements) for t in reader.tensors)
                context = next((int(f.parts[f.data[0]][0]) for k, f in reader.fields.items()
                                if k.endswith(".context_length")), None)
                entry = ModelEntry(name, "embedded", "decoder", embedded.describe, parameters=parameters,
                                   max_length=context)
            else:  # in chunks, not joined yet: its size is known, its shapes only after the first use converts it
                entry = ModelEntry(name, "embedded", "decoder", embedded.describe)
            entry.size_mb = size_mb
        entry.use, entry.license, entry.base = f"--model {name}", embedded.license, embedded.base
        out.append(entry)
    return out


def _gguf_bytes(embedded, gguf_file: Path) -> int:
    """The GGUF's size: the file, or the sum of its chunks as their packages recorded them."""
    if gguf_file.exists():
        return gguf_file.stat().st_size
    from importlib import metadata

    total = 0
    for module in embedded.chunks:
        try:
            total += sum(f.size or 0 for f in metadata.distribution(module.replace("_", "-")).files or []
                         if ".gguf.part" in f.name)
        except metadata.PackageNotFoundError:
            pass
    return total


def preset_entries(seq_len: int = 512) -> list[ModelEntry]:
    """The from-scratch size presets of each pretraining family, counted with a 30,000-token vocabulary and 512
    positions (``--seq-len`` sets them when pretraining)."""
    import torch
    from transformers import (
        BertConfig,
        BertForPreTraining,
        GPT2Config,
        GPT2LMHeadModel,
        T5Config,
        T5ForConditionalGeneration,
    )

    from lmforge.models import quiet_transformers

    quiet_transformers()
    builders = {
        "bert": ("encoder", "BERT (MLM + NSP)", BERT_SIZES,
                 lambda s: BertForPreTraining(BertConfig(vocab_size=PRESET_VOCAB, max_position_embeddings=seq_len, **s))),
        "gpt": ("decoder", "GPT-2 (causal LM)", GPT_SIZES,
                lambda s: GPT2LMHeadModel(GPT2Config(vocab_size=PRESET_VOCAB, n_positions=seq_len, **s))),
        "t5": ("encoder-decoder", "T5 (span corruption)", T5_SIZES,
               lambda s: T5ForConditionalGeneration(T5Config(vocab_size=PRESET_VOCAB, feed_forward_proj="gated-gelu",
                                                             tie_word_embeddings=False, **s))),
    }
    out = []
    for family_name, (family, describe, sizes, build) in builders.items():
        for size, shape in sizes.items():
            with torch.device("meta"):
                model = build(shape)
            parameters = sum(p.numel() for p in model.parameters())
            objective = {"bert": "mlm-nsp", "gpt": "clm", "t5": "span-corruption"}[family_name]
            out.append(ModelEntry(f"{family_name}:{size}", "preset", family, f"{describe}, {size}",
                                  parameters=parameters, size_mb=round(parameters * 4 / 1e6, 1),
                                  max_length=None if family_name == "t5" else seq_len,
                                  use=f"pretrain --objective {objective} --size {size}"))
    return out


def run_entries(root: Path) -> list[ModelEntry]:
    """Run dirs directly under ``root`` (those with a model)."""
    import yaml

    out = []
    if not root.is_dir():
        return out
    for run in sorted(p for p in root.iterdir() if (p / "lmforge.yaml").is_file() and (p / "model" / "config.json").is_file()):
        try:
            info = yaml.safe_load((run / "lmforge.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
        metric = {}
        if (run / "eval.json").is_file():
            try:
                scores = json.loads((run / "eval.json").read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                scores = {}
            metric = {k: scores[k] for k in ("accuracy", "macro_f1", "perplexity", "bleu", "rougeLsum", "f1", "em",
                                             "pass_at_1") if isinstance(scores.get(k), int | float)}
        out.append(folder_entry(str(run), "run", run / "model", f"{info.get('stage', '')} {info.get('task', '')}"
                                .strip(), task=info.get("task"), metric=metric, use=f"--model {run}"))
    return out


def measure(entry: ModelEntry, *, seconds: float = 3.0) -> dict | None:
    """Inference speed here: encoders, examples/s (batches of 32 texts of 128 tokens; a sentence encoder embeds
    them); decoders, tokens/s (greedy, one sequence); encoder-decoders, texts/s (greedy, 16 tokens out, batch of 8).
    Presets are timed with random weights."""
    import torch

    if entry.kind == "preset":
        return None if entry.family == "encoder-decoder" else _measure_preset(entry, seconds)
    if entry.kind == "embedded" and entry.family == "encoder":  # a sentence encoder: what it does here is embed
        from lmforge.kb.embed import SentenceEmbedder

        embedder = SentenceEmbedder(entry.name, max_length=128)
        texts = ["word " * 200] * 32
        embedder.embed(texts[:2])
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            embedder.embed(texts)
            count += 32
        return {"unit": "examples/s", "value": round(count / (time.perf_counter() - start), 1)}
    from lmforge.stages import load

    pipeline = load(entry.name)
    kind = getattr(pipeline, "kind", "")
    if kind == "text-generation":
        from lmforge.inference.generation import SamplingParams

        params = SamplingParams(max_new_tokens=32, temperature=0.0, ignore_eos=True)
        pipeline.generator.generate(["Hello"], SamplingParams(max_new_tokens=4, temperature=0.0))
        start, tokens = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            tokens += sum(o.completion_tokens for o in pipeline.generator.generate(["The history of"], params))
        return {"unit": "tokens/s", "value": round(tokens / (time.perf_counter() - start), 1)}
    if kind == "text2text-generation":
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            pipeline.predict(["The history of the world is long."] * 8, num_beams=1, max_new_tokens=16)
            count += 8
        return {"unit": "texts/s (16 tokens out)", "value": round(count / (time.perf_counter() - start), 1)}
    texts = ["word " * 120] * 32
    with torch.inference_mode():
        if kind == "question-answering":
            items = [{"question": "what word?", "context": "word " * 100}] * 32
            run = lambda: pipeline.predict(items)
        elif kind == "fill-mask":
            return None
        else:
            run = lambda: pipeline.predict(texts)
        run()
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            run()
            count += 32
    return {"unit": "examples/s", "value": round(count / (time.perf_counter() - start), 1)}


def _measure_preset(entry: ModelEntry, seconds: float) -> dict:
    import torch
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    family_name, size = entry.name.split(":")
    with torch.inference_mode():
        if family_name == "bert":
            model = BertModel(BertConfig(vocab_size=PRESET_VOCAB, **BERT_SIZES[size])).eval()
            ids = torch.randint(0, PRESET_VOCAB, (32, 128))
            model(input_ids=ids)
            start, count = time.perf_counter(), 0
            while time.perf_counter() - start < seconds:
                model(input_ids=ids)
                count += 32
            return {"unit": "examples/s", "value": round(count / (time.perf_counter() - start), 1)}
        model = GPT2LMHeadModel(GPT2Config(vocab_size=PRESET_VOCAB, **GPT_SIZES[size])).eval()
        ids = torch.randint(0, PRESET_VOCAB, (1, 8))
        model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
        start, tokens = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            model.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)
            tokens += 32
        return {"unit": "tokens/s", "value": round(tokens / (time.perf_counter() - start), 1)}


def catalog(runs: Path = Path("runs"), *, with_presets: bool = True) -> list[ModelEntry]:
    return [*embedded_entries(), *(preset_entries() if with_presets else []), *run_entries(runs)]
