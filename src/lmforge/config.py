"""Typed configs for every stage: pydantic v2 models, YAML files and ``--set key=value`` overrides.

Each field carries its description; ``--help`` texts and the comments in a run's ``lmforge.yaml`` come from there.
Precedence: field defaults < ``--config FILE`` < command-line flags < ``--set`` overrides. Every problem names
where the bad value came from (``file.yaml:12``, ``--max-steps`` or ``--set train.lr=x``) and is reported at once.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from lmforge.errors import ConfigError

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m(?:in)?)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$")


def parse_duration(value: Any) -> float | None:
    """``"10m"`` -> 600.0; ``"1h30m"``, ``"90s"``, ``"2.5m"`` and plain seconds (``600``) are accepted."""
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if value is None else float(value)
    text = str(value).strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    match = _DURATION.match(text)
    if not text or not match or not any(match.groups()):
        raise ValueError(f"'{value}' is not a duration; write it like 90s, 10m, 1h30m or a number of seconds")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


Duration = Annotated[float | None, BeforeValidator(parse_duration)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# ----------------------------------------------------------------------------------------------- the one loop
class TrainConfig(Strict):
    """Settings of the one training loop, shared by pretraining and every fine-tuning task."""

    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    epochs: float | None = Field(None, gt=0, description="passes over the training data (fractions allowed)")
    max_time: Duration = Field(
        None, description="wall-time budget for the whole run (set-up, training, evaluations, checkpoints), "
        "e.g. 90s, 10m, 1h30m"
    )
    batch_size: int = Field(32, ge=1, description="examples per device per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches accumulated per optimizer step")
    lr: float | None = Field(5e-5, gt=0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not applied to biases and norms)")
    warmup: float = Field(0.06, ge=0, description="warmup: a fraction of the steps if < 1, else a step count")
    schedule: Literal["linear", "cosine", "constant"] = Field("linear", description="decay after warmup")
    clip_grad: float | None = Field(1.0, gt=0, description="clip the gradient norm to this (null: no clipping)")
    eval_every: int | None = Field(
        None, ge=1, description="evaluate every N steps (default: at the end of each epoch and of training)"
    )
    save_every: int | None = Field(
        None, ge=1, description="write a resumable checkpoint every N steps (default: at evaluations and at the end)"
    )
    keep_checkpoints: int = Field(2, ge=1, description="how many of the newest checkpoints to keep")
    log_every: int = Field(10, ge=1, description="write a metrics.jsonl line every N steps")
    seed: int = Field(0, description="seed for data order, masking, dropout and initialization")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU that supports it, fp32 on CPU"
    )
    compile: bool | None = Field(None, description="torch.compile the model (default: on with CUDA, off on CPU)")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: all cores)")
    workers: int | None = Field(None, ge=0, description="data loader worker processes (default: 0 on CPU, 4 on GPU)")


class PretrainTrainConfig(TrainConfig):
    batch_size: int = Field(32, ge=1, description="sequences per device per micro-batch")
    lr: float | None = Field(
        None, gt=0, description="peak learning rate (default: 1e-4 with --init, else by --size: tiny 1e-3, mini 5e-4, "
        "small 3e-4, base 1e-4)"
    )
    warmup: float = Field(0.05, ge=0, description="warmup: a fraction of the steps if < 1, else a step count")
    eval_every: int | None = Field(None, ge=1, description="evaluate every N steps (default: 10 times per run)")


class GenerativeTrainConfig(TrainConfig):
    """The loop's defaults for fine-tuning a causal LM (dialogue, code)."""

    epochs: float | None = Field(3, gt=0, description="passes over the training data (fractions allowed)")
    batch_size: int = Field(16, ge=1, description="sequences per device per micro-batch")
    lr: float | None = Field(None, gt=0, description="peak learning rate (AdamW; default: 2e-4 with --lora, else "
                             "5e-5, gentle enough for a pretrained model)")


class LoraSettings(Strict):
    """Low-rank adaptation (LoRA, through peft): train small adapter matrices beside frozen weights."""

    enabled: bool = Field(False, description="train LoRA adapters instead of every weight; the run saves the adapter "
                          "(model/adapter) and the merged model", json_schema_extra={"flag": "--lora"})
    rank: int = Field(16, ge=1, description="rank of each adapter")
    alpha: float = Field(32.0, gt=0, description="adapter scaling: updates are multiplied by alpha / rank")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: list[str] | str = Field(
        "all-linear", description="modules to adapt, by name (e.g. [q_proj, v_proj]); all-linear: every linear "
        "layer but the output head")


# ----------------------------------------------------------------------------------------------- stages
class TokenizerTrainConfig(Strict):
    corpus: list[str] = Field(description="corpus files or bundled names (e.g. corpus); several allowed",
                              min_length=1)
    kind: Literal["wordpiece", "bpe", "unigram"] = Field(
        "wordpiece", description="wordpiece (BERT), byte-level bpe (GPT) or unigram (SentencePiece-style, T5; keeps case "
        "and accents)")
    vocab_size: int = Field(30000, ge=64, le=1_000_000, description="target vocabulary size")
    lowercase: bool | None = Field(None, description="lowercase text (default: yes for wordpiece, no for bpe and "
                                   "unigram)")
    min_frequency: int = Field(2, ge=1, description="drop merges/pieces seen fewer times than this")
    max_length: int = Field(512, ge=8, description="model_max_length stored with the tokenizer")
    out: Path = Field(description="folder to write the tokenizer to")
    overwrite: bool = Field(False, description="replace an existing tokenizer folder")


class RunConfig(Strict):
    """What every training stage shares: where the run dir goes and the loop's settings (tasks narrow ``train``)."""

    out: Path = Field(description="run dir to write")
    overwrite: bool = Field(False, description="replace an existing run dir")
    resume: bool = Field(False, description="continue from the newest complete checkpoint in the run dir")
    train: TrainConfig = Field(default_factory=TrainConfig, description="training loop")


class PretrainConfig(RunConfig):
    """Pretraining from raw text; each objective (a task module) adds its own keys in a subclass."""

    objective: str = Field("mlm-nsp", description="the pretraining objective")
    corpus: list[str] = Field(["corpus"], min_length=1, description="corpus files or bundled names; several allowed")
    tokenizer: str | None = Field(None, description="tokenizer folder (default: the --init model's tokenizer)")
    size: Literal["tiny", "mini", "small", "base"] = Field("mini", description="model size preset (from scratch)")
    init: str | None = Field(None, description="continue from this model (run dir, HF folder, hub id, minilm)")
    arch: dict[str, int | float] = Field(
        default_factory=dict, description="override fields of the size preset, e.g. --set arch.hidden_size=64"
    )
    seq_len: int = Field(128, ge=16, le=8192, description="tokens per training sequence (packed)")
    eval_fraction: float = Field(0.01, ge=0, lt=0.5, description="share of the corpus tokens held out (whole docs)")
    max_eval_sequences: int = Field(256, ge=1, description="cap on held-out sequences scored at each evaluation")
    train: PretrainTrainConfig = Field(default_factory=PretrainTrainConfig, description="training loop")


class FinetuneConfig(RunConfig):
    """Fine-tuning a model on task data; each task (a module in lmforge.tasks) narrows this."""

    model: str = Field("minilm", description="run dir, HF folder, hub id, or minilm (the embedded encoder)")
    data: str = Field(description="training data: a file (.jsonl/.csv/.tsv/.parquet) or a bundled name")
    eval: str | None = Field(
        None, description="dev data (default: the bundled dev split, else a held-out share of the training data)"
    )
    dev_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of training data held out when no dev data")


class DecoderFinetuneConfig(FinetuneConfig):
    """Fine-tuning a causal LM (dialogue, code): every weight, or LoRA adapters."""

    model: str = Field(description="a causal LM: smollm2 (the embedded instruction-tuned model), a run dir (e.g. from "
                       "pretrain --objective clm), an HF folder or a hub id")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="low-rank adaptation")
    train: GenerativeTrainConfig = Field(default_factory=GenerativeTrainConfig, description="training loop")


# ----------------------------------------------------------------------------------------------- building
def field_of(model: type[BaseModel], dotted: str) -> FieldInfo:
    """The definition of a (possibly nested) field: its type, default and description (``--help`` reads these)."""
    for part in dotted.split(".")[:-1]:
        model = model.model_fields[part].annotation  # type: ignore[assignment]
    return model.model_fields[dotted.split(".")[-1]]


def field_help(model: type[BaseModel], dotted: str) -> str:
    """The description of a (possibly nested) field, for ``--help`` and error messages."""
    return field_of(model, dotted).description or ""


class _LineLoader(yaml.SafeLoader):
    pass


def _load_yaml_with_lines(path: Path) -> tuple[dict, dict[tuple, int]]:
    """Parse YAML and remember the line of every key, so errors can point at ``file:line``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' not found", where="--config",
                          fix="check the path given to --config") from None
    except IsADirectoryError:
        raise ConfigError(f"'{path}' is a folder, not a config file", where="--config",
                          fix="give a YAML file, e.g. --config configs/finetune-sentiment.yaml") from None
    except PermissionError:
        raise ConfigError(f"config file '{path}' cannot be read (permission denied)", where="--config",
                          fix="check the file's permissions") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file '{path}' is not UTF-8 ({exc.reason})", fix="save it as UTF-8") from None
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"invalid YAML: {getattr(exc, 'problem', exc)}", where=where, fix="fix the syntax") from None
    if node is None:
        return {}, {}
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError("a config file must be a mapping of keys to values", where=f"{path}:1")
    lines: dict[tuple, int] = {}

    def walk(n: yaml.Node, prefix: tuple) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = (*prefix, key_node.value)
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)

    walk(node, ())
    data = yaml.load(text, Loader=_LineLoader)
    return data, lines


def _set_path(target: dict, keys: tuple, value: Any) -> None:
    for key in keys[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    target[keys[-1]] = value


def parse_set(expr: str) -> tuple[tuple, Any]:
    """``"train.lr=3e-5"`` -> ``(("train", "lr"), 3e-05)``; the value is parsed as YAML."""
    key, sep, raw = expr.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set '{expr}' is not key=value", fix="write it like --set train.lr=3e-5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return tuple(key.strip().split(".")), value


def _known_keys(model: type[BaseModel], prefix: tuple = ()) -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        keys.append(".".join((*prefix, name)))
        sub = info.default_factory
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += _known_keys(sub, (*prefix, name))
    return keys


def build_config(
    model: type[BaseModel] | Callable[[dict], type[BaseModel]],
    *,
    file: Path | None = None,
    flags: dict[str, tuple[Any, str]] | None = None,
    sets: list[str] | None = None,
    base: dict | None = None,
):
    """Merge defaults < ``base`` < file < flags < ``--set`` and validate once, reporting every problem with its origin.

    ``flags`` maps a dotted key to ``(value, "--flag-name")``; a ``None`` value means the flag was not given.
    ``model`` is the config class, or a function that picks it from the merged keys (e.g. by ``objective``).
    """
    merged: dict = {}
    origins: dict[tuple, str] = {}
    for key, value in (base or {}).items():
        _set_path(merged, tuple(key.split(".")), value)
    if file is not None:
        data, lines = _load_yaml_with_lines(Path(file))
        if not isinstance(data, dict):
            raise ConfigError("a config file must be a mapping of keys to values", where=f"{file}:1")

        def merge(src: dict, prefix: tuple) -> None:
            for key, value in src.items():
                path = (*prefix, str(key))
                origins[path] = f"{file}:{lines.get(path, 1)}"
                if isinstance(value, dict):
                    merge(value, path)
                else:
                    _set_path(merged, path, value)

        merge(data, ())
    for key, (value, flag) in (flags or {}).items():
        if value is not None:
            path = tuple(key.split("."))
            _set_path(merged, path, value)
            origins[path] = flag
    for expr in sets or []:
        path, value = parse_set(expr)
        _set_path(merged, path, value)
        origins[path] = f"--set {expr}"
    if not isinstance(model, type):
        model = model(merged)
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        known = _known_keys(model)
        problems = []
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            dotted = ".".join(loc)
            origin = next((origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origins), None)
            if err["type"] == "extra_forbidden":
                close = difflib.get_close_matches(dotted, known, n=1)
                message = f"unknown key '{dotted}'" + (f" (did you mean '{close[0]}'?)" if close else "")
            elif err["type"] == "missing":
                message = f"'{dotted}' is required ({field_help(model, dotted) if dotted in known else ''})"
            else:
                message = f"{dotted}: {err['msg']}"
                if "input" in err and not isinstance(err["input"], dict):
                    message += f" (got {err['input']!r})"
            problems.append(f"{origin}: {message}" if origin else message)
        raise ConfigError(
            f"invalid {model.__name__.replace('Config', '')} configuration",
            problems=problems,
            fix="see --help for each option and its allowed values",
        ) from None


def to_commented_yaml(config: BaseModel, indent: int = 0) -> str:
    """YAML with each field's description as a comment above it (used for lmforge.yaml)."""
    pad = " " * indent
    plain = config.model_dump(mode="json")
    out = []
    for name, info in type(config).model_fields.items():
        if info.description:
            out.append(f"{pad}# {info.description}")
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            out.append(f"{pad}{name}:")
            out.append(to_commented_yaml(value, indent + 2))
        else:
            dumped = yaml.safe_dump({name: plain[name]}, default_flow_style=True, width=10_000, sort_keys=False)
            out.append(pad + dumped.strip()[1:-1])
    return "\n".join(out)
