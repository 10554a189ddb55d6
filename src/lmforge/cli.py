"""The ``lmforge`` command line: a thin typer layer. Each command parses options, builds one config (defaults <
``--config`` file < flags < ``--set``), and calls one stage function. Bad input exits with code 2 and one message."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from lmforge.config import (
    FinetuneChatConfig,
    FinetuneClassifyConfig,
    FinetuneCodeConfig,
    PretrainConfig,
    PretrainTrainConfig,
    TokenizerTrainConfig,
    build_config,
    field_help,
)
from lmforge.errors import LmforgeError

app = typer.Typer(
    name="lmforge",
    help="From raw text to a served language model: tokenizer, pretraining, fine-tuning, evaluation, serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
datasets_app = typer.Typer(help="Bundled datasets.", no_args_is_help=True)
tokenizer_app = typer.Typer(help="Train tokenizers.", no_args_is_help=True)
finetune_app = typer.Typer(help="Fine-tune a model for a task.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(finetune_app, name="finetune")

log = logging.getLogger("lmforge")
_state = {"progress": True}

# ------------------------------------------------------------------------------------- shared options
ConfigFile = Annotated[Optional[Path], typer.Option("--config", help="YAML config file (flags override it)")]
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", help="override any config key, e.g. --set train.lr=3e-5 (repeatable)")
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="replace an existing output folder")]
Resume = Annotated[bool, typer.Option("--resume", help="continue from the newest complete checkpoint")]
MaxSteps = Annotated[Optional[int], typer.Option("--max-steps", help=field_help(PretrainTrainConfig, "max_steps"))]
Epochs = Annotated[Optional[float], typer.Option("--epochs", help=field_help(PretrainTrainConfig, "epochs"))]
MaxTime = Annotated[Optional[str], typer.Option("--max-time", help=field_help(PretrainTrainConfig, "max_time"))]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", help="examples per device per micro-batch")]
LearningRate = Annotated[Optional[float], typer.Option("--lr", help="peak learning rate")]
Seed = Annotated[Optional[int], typer.Option("--seed", help=field_help(PretrainTrainConfig, "seed"))]


def _run_flags(out, resume, overwrite, max_steps, epochs, max_time, batch_size, lr, seed) -> dict:
    """The flags every training command shares, mapped to their config keys."""
    return {
        "out": (out, "--out"),
        "resume": (_true_or_none(resume), "--resume"),
        "overwrite": (_true_or_none(overwrite), "--overwrite"),
        "train.max_steps": (max_steps, "--max-steps"),
        "train.epochs": (epochs, "--epochs"),
        "train.max_time": (max_time, "--max-time"),
        "train.batch_size": (batch_size, "--batch-size"),
        "train.lr": (lr, "--lr"),
        "train.seed": (seed, "--seed"),
    }


def _true_or_none(value: bool) -> bool | None:
    return True if value else None


def _echo_json(data) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------- commands
@app.callback()
def _root(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="only warnings and errors")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    _configure_logging(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    _state["progress"] = not quiet


@datasets_app.command("list")
def datasets_list(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """The bundled datasets: name, task, splits, size and license."""
    from lmforge.data.registry import BUNDLED, file_size

    rows = []
    for d in BUNDLED.values():
        rows.append({
            "name": d.name, "task": d.task, "splits": list(d.splits) if d.task != "pretraining" else ["train", *[s for s in d.splits if s != "train"]],
            "size_kb": round(file_size(d) / 1024, 1), "license": d.license, "description": d.description,
            "source": d.source,
        })
    if as_json:
        _echo_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bundled datasets (use the name, or name:split, wherever data is asked for)")
    for column in ("name", "task", "splits", "size", "license", "description"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["name"], r["task"], ", ".join(r["splits"]), f"{r['size_kb']:,.0f} KB", r["license"],
                      r["description"])
    Console(width=200).print(table)


@tokenizer_app.command("train")
def tokenizer_train(
    corpus: Annotated[Optional[list[str]], typer.Option("--corpus", help="corpus files or bundled names (several allowed)")] = None,
    kind: Annotated[Optional[str], typer.Option("--kind", help="wordpiece or bpe")] = None,
    vocab_size: Annotated[Optional[int], typer.Option("--vocab-size", help=field_help(TokenizerTrainConfig, "vocab_size"))] = None,
    lowercase: Annotated[Optional[bool], typer.Option("--lowercase/--no-lowercase", help=field_help(TokenizerTrainConfig, "lowercase"))] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help=field_help(TokenizerTrainConfig, "out"))] = None,
    overwrite: Overwrite = False,
    config: ConfigFile = None,
    set_: SetOpt = None,
) -> None:
    """Train a WordPiece (BERT) or byte-level BPE (GPT) tokenizer on a corpus."""
    import time

    from lmforge.tokenizer import train_tokenizer

    cfg = build_config(
        TokenizerTrainConfig, file=config, sets=set_,
        flags={"corpus": (corpus, "--corpus"), "kind": (kind, "--kind"), "vocab_size": (vocab_size, "--vocab-size"),
               "lowercase": (lowercase, "--lowercase"), "out": (out, "--out"),
               "overwrite": (_true_or_none(overwrite), "--overwrite")},
    )
    start = time.monotonic()
    path = train_tokenizer(cfg)
    from transformers import AutoTokenizer

    size = len(AutoTokenizer.from_pretrained(path))
    typer.echo(f"tokenizer ({cfg.kind}, {size:,} tokens) written to {path} in {time.monotonic() - start:.1f}s")


@app.command()
def pretrain(
    objective: Annotated[Optional[str], typer.Option("--objective", help=field_help(PretrainConfig, "objective"))] = None,
    corpus: Annotated[Optional[list[str]], typer.Option("--corpus", help="corpus files or bundled names (several allowed)")] = None,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help=field_help(PretrainConfig, "tokenizer"))] = None,
    size: Annotated[Optional[str], typer.Option("--size", help="tiny, mini, small or base")] = None,
    init: Annotated[Optional[str], typer.Option("--init", help=field_help(PretrainConfig, "init"))] = None,
    seq_len: Annotated[Optional[int], typer.Option("--seq-len", help=field_help(PretrainConfig, "seq_len"))] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help=field_help(PretrainConfig, "out"))] = None,
    max_steps: MaxSteps = None,
    epochs: Epochs = None,
    max_time: MaxTime = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    seed: Seed = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    config: ConfigFile = None,
    set_: SetOpt = None,
) -> None:
    """Pretrain an encoder (mlm-nsp) or a decoder (clm) on raw text, from scratch or from --init."""
    from lmforge.stages import pretrain as run_pretrain

    cfg = build_config(
        PretrainConfig, file=config, sets=set_,
        flags={"objective": (objective, "--objective"), "corpus": (corpus, "--corpus"),
               "tokenizer": (tokenizer, "--tokenizer"), "size": (size, "--size"), "init": (init, "--init"),
               "seq_len": (seq_len, "--seq-len"),
               **_run_flags(out, resume, overwrite, max_steps, epochs, max_time, batch_size, lr, seed)},
    )
    summary = run_pretrain(cfg, show_progress=_state["progress"])
    _print_summary(summary)


@finetune_app.command("classify")
def finetune_classify_cmd(
    model: Annotated[Optional[str], typer.Option("--model", help=field_help(FinetuneClassifyConfig, "model"))] = None,
    data: Annotated[Optional[str], typer.Option("--data", help=field_help(FinetuneClassifyConfig, "data"))] = None,
    eval_: Annotated[Optional[str], typer.Option("--eval", help=field_help(FinetuneClassifyConfig, "eval"))] = None,
    text_field: Annotated[Optional[str], typer.Option("--text-field", help=field_help(FinetuneClassifyConfig, "text_field"))] = None,
    label_field: Annotated[Optional[str], typer.Option("--label-field", help=field_help(FinetuneClassifyConfig, "label_field"))] = None,
    max_length: Annotated[Optional[int], typer.Option("--max-length", help=field_help(FinetuneClassifyConfig, "max_length"))] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help=field_help(FinetuneClassifyConfig, "out"))] = None,
    max_steps: MaxSteps = None,
    epochs: Epochs = None,
    max_time: MaxTime = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    seed: Seed = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    config: ConfigFile = None,
    set_: SetOpt = None,
) -> None:
    """Fine-tune a text classifier (sentiment, topic, spam, ...); the best checkpoint on dev data is kept."""
    from lmforge.tasks.classify import finetune_classify

    cfg = build_config(
        FinetuneClassifyConfig, file=config, sets=set_,
        flags={"model": (model, "--model"), "data": (data, "--data"), "eval": (eval_, "--eval"),
               "text_field": (text_field, "--text-field"), "label_field": (label_field, "--label-field"),
               "max_length": (max_length, "--max-length"),
               **_run_flags(out, resume, overwrite, max_steps, epochs, max_time, batch_size, lr, seed)},
    )
    summary = finetune_classify(cfg, show_progress=_state["progress"])
    _print_summary(summary)


@finetune_app.command("chat")
def finetune_chat_cmd(
    model: Annotated[Optional[str], typer.Option("--model", help=field_help(FinetuneChatConfig, "model"))] = None,
    data: Annotated[Optional[str], typer.Option("--data", help=field_help(FinetuneChatConfig, "data"))] = None,
    eval_: Annotated[Optional[str], typer.Option("--eval", help=field_help(FinetuneChatConfig, "eval"))] = None,
    max_length: Annotated[Optional[int], typer.Option("--max-length", help=field_help(FinetuneChatConfig, "max_length"))] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help=field_help(FinetuneChatConfig, "out"))] = None,
    max_steps: MaxSteps = None,
    epochs: Epochs = None,
    max_time: MaxTime = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    seed: Seed = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    config: ConfigFile = None,
    set_: SetOpt = None,
) -> None:
    """Fine-tune a causal LM into a chatbot on multi-turn conversations (loss on assistant turns only)."""
    from lmforge.tasks.chat import finetune_chat

    cfg = build_config(
        FinetuneChatConfig, file=config, sets=set_,
        flags={"model": (model, "--model"), "data": (data, "--data"), "eval": (eval_, "--eval"),
               "max_length": (max_length, "--max-length"),
               **_run_flags(out, resume, overwrite, max_steps, epochs, max_time, batch_size, lr, seed)},
    )
    _print_summary(finetune_chat(cfg, show_progress=_state["progress"]))


@finetune_app.command("code")
def finetune_code_cmd(
    model: Annotated[Optional[str], typer.Option("--model", help=field_help(FinetuneCodeConfig, "model"))] = None,
    data: Annotated[Optional[str], typer.Option("--data", help=field_help(FinetuneCodeConfig, "data"))] = None,
    eval_: Annotated[Optional[str], typer.Option("--eval", help=field_help(FinetuneCodeConfig, "eval"))] = None,
    seq_len: Annotated[Optional[int], typer.Option("--seq-len", help=field_help(FinetuneCodeConfig, "seq_len"))] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help=field_help(FinetuneCodeConfig, "out"))] = None,
    max_steps: MaxSteps = None,
    epochs: Epochs = None,
    max_time: MaxTime = None,
    batch_size: BatchSize = None,
    lr: LearningRate = None,
    seed: Seed = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    config: ConfigFile = None,
    set_: SetOpt = None,
) -> None:
    """Continue training a causal LM on Python functions (docstring -> function) for code completion."""
    from lmforge.tasks.code import finetune_code

    cfg = build_config(
        FinetuneCodeConfig, file=config, sets=set_,
        flags={"model": (model, "--model"), "data": (data, "--data"), "eval": (eval_, "--eval"),
               "seq_len": (seq_len, "--seq-len"),
               **_run_flags(out, resume, overwrite, max_steps, epochs, max_time, batch_size, lr, seed)},
    )
    _print_summary(finetune_code(cfg, show_progress=_state["progress"]))


MaxNew = Annotated[int, typer.Option("--max-new-tokens", help="tokens to generate at most", min=1)]
Temperature = Annotated[float, typer.Option("--temperature", help="scales logits before the softmax; 0 is greedy", min=0)]
TopK = Annotated[int, typer.Option("--top-k", help="sample among the k most likely tokens (0: off)", min=0)]
TopP = Annotated[float, typer.Option("--top-p", help="nucleus sampling: smallest set with this mass (1: off)", min=0.01, max=1)]
RepPenalty = Annotated[float, typer.Option("--repetition-penalty", help="penalize tokens already present (1: off)", min=0.01)]
Stops = Annotated[Optional[list[str]], typer.Option("--stop", help="stop when this text appears (repeatable)")]
GenSeed = Annotated[Optional[int], typer.Option("--seed", help="makes sampling reproducible")]


def _generation_pipeline(run: Path):
    from lmforge.inference import load
    from lmforge.inference.pipelines import GenerationPipeline

    pipeline = load(run)
    if not isinstance(pipeline, GenerationPipeline):
        raise LmforgeError(f"'{run}' is a {pipeline.task} run; generation needs a causal LM",
                           fix="pretrain one with --objective clm, or fine-tune with finetune chat/code")
    return pipeline


@app.command()
def generate(
    run: Annotated[Path, typer.Argument(help="run dir or HF folder of a causal LM")],
    prompt: Annotated[str, typer.Argument(help="text to continue")],
    max_new_tokens: MaxNew = 64,
    temperature: Temperature = 1.0,
    top_k: TopK = 50,
    top_p: TopP = 1.0,
    repetition_penalty: RepPenalty = 1.0,
    stop: Stops = None,
    seed: GenSeed = None,
    stream: Annotated[bool, typer.Option("--stream", help="print tokens as they are produced")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object (text, finish_reason, usage)")] = False,
) -> None:
    """Generate a continuation of PROMPT (KV cache; sampling reproducible with --seed)."""
    from lmforge.inference.generation import SamplingParams

    pipeline = _generation_pipeline(run)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            repetition_penalty=repetition_penalty, stop=stop or [], seed=seed)
    if as_json:
        out = pipeline.generator.generate([prompt], params)[0]
        _echo_json({"prompt": prompt, **vars(out)})
        return
    if not stream:
        out = pipeline.generator.generate([prompt], params)[0]
        sys.stdout.write(prompt + out.text + "\n")
        return
    sys.stdout.write(prompt)
    sys.stdout.flush()
    for delta in pipeline.generator.stream([prompt], params):
        sys.stdout.write(delta.text)
        sys.stdout.flush()
    sys.stdout.write("\n")


@app.command()
def chat(
    run: Annotated[Path, typer.Argument(help="a chat run (lmforge finetune chat)")],
    system: Annotated[Optional[str], typer.Option("--system", help="a system message to start with")] = None,
    max_new_tokens: MaxNew = 128,
    temperature: Temperature = 0.7,
    top_k: TopK = 50,
    top_p: TopP = 0.95,
    repetition_penalty: RepPenalty = 1.1,
    seed: GenSeed = None,
) -> None:
    """Chat in the terminal; the conversation is kept. /reset starts over, /exit (or Ctrl-D) leaves."""
    from lmforge.inference.generation import SamplingParams

    pipeline = _generation_pipeline(run)
    if not pipeline.has_chat_template:
        raise LmforgeError(f"'{run}' has no chat template", fix="fine-tune it first: lmforge finetune chat --model RUN")
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            repetition_penalty=repetition_penalty, seed=seed)
    history = [{"role": "system", "content": system}] if system else []
    typer.echo(f"chatting with {run} -- /reset starts over, /exit leaves", err=True)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            typer.echo("", err=True)
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            history = history[:1] if system else []
            typer.echo("(conversation cleared)", err=True)
            continue
        history.append({"role": "user", "content": text})
        sys.stdout.write("bot> ")
        sys.stdout.flush()
        reply = ""
        for delta in pipeline.generator.stream([pipeline.chat_prompt(history)], params):
            reply += delta.text
            sys.stdout.write(delta.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": reply.strip()})


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="run dir")],
    data: Annotated[Optional[str], typer.Option("--data", help="labeled data: a file or bundled name[:split]")] = None,
    text_field: Annotated[Optional[str], typer.Option("--text-field", help="text field (default: the run's)")] = None,
    label_field: Annotated[Optional[str], typer.Option("--label-field", help="label field (default: the run's)")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="examples per forward pass")] = 64,
    limit: Annotated[Optional[int], typer.Option("--limit", help="code runs: evaluate the first N functions only")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object of metrics on stdout")] = False,
) -> None:
    """Evaluate a run (classification: accuracy/F1; LMs: perplexity; code: parse rate, chrF, pass@1); writes eval.json."""
    from lmforge.evaluation.evaluate import evaluate_run

    result = evaluate_run(run, data, text_field=text_field, label_field=label_field, batch_size=batch_size,
                          limit=limit)
    if as_json:
        _echo_json(result)
        return
    _print_eval(result)


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="run dir")],
    texts: Annotated[Optional[list[str]], typer.Argument(help="texts to classify")] = None,
    input_: Annotated[Optional[str], typer.Option("--input", help="a .jsonl/.csv/.tsv/.parquet file of texts")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="write JSON lines here instead of stdout")] = None,
    text_field: Annotated[str, typer.Option("--text-field", help="text field of --input rows")] = "text",
    overwrite: Overwrite = False,
) -> None:
    """Predict with a run: one JSON object per input (label, score, probabilities) on stdout or in --output."""
    from lmforge.errors import DataError
    from lmforge.inference import load

    if bool(texts) == bool(input_):
        raise LmforgeError("give texts as arguments or --input FILE (one of the two)",
                           fix='lmforge predict RUN "a text"   or   lmforge predict RUN --input texts.jsonl')
    if output is not None and output.exists() and not overwrite:
        raise DataError(f"'{output}' exists", fix="pass --overwrite to replace it, or choose another --output")
    if input_:
        from lmforge.data.labeled import load_text_label

        texts = load_text_label(input_, text_field, None).texts
    pipeline = load(run)
    results = [{"text": t, **r} for t, r in zip(texts, pipeline.predict(texts))]
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
    if output is None:
        sys.stdout.write(lines)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(lines, encoding="utf-8")
        typer.echo(f"{len(results)} predictions written to {output}", err=True)


@app.command()
def serve(
    runs: Annotated[list[str], typer.Argument(help="run dirs to serve (RUN or name=RUN)")],
    host: Annotated[str, typer.Option("--host", help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="port to listen on")] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="LMFORGE_API_KEY",
                                                   help="require 'Authorization: Bearer KEY' on /v1 routes")] = None,
    cors_origin: Annotated[Optional[list[str]], typer.Option("--cors-origin", help="allow this origin (repeatable)")] = None,
    max_in_flight: Annotated[int, typer.Option("--max-in-flight", help="requests at once; more get 429")] = 64,
    micro_batch: Annotated[bool, typer.Option("--micro-batch/--no-micro-batch", help="gather concurrent requests")] = True,
    batch_wait_ms: Annotated[float, typer.Option("--batch-wait-ms", help="wait this long to gather a batch")] = 5.0,
    shutdown_delay: Annotated[float, typer.Option("--shutdown-delay", help="seconds not-ready before closing on SIGTERM")] = 0.0,
) -> None:
    """Serve runs as a REST API (task routes + OpenAI-compatible) with a web UI at /."""
    from lmforge.serve.run import serve as run_server
    from lmforge.serve.settings import ServeSettings

    specs = check_servable(runs)
    check_port_free(host, port)
    settings = ServeSettings(host=host, port=port, api_key=api_key, cors_origins=cors_origin or [],
                             max_in_flight=max_in_flight, micro_batch=micro_batch, batch_wait_ms=batch_wait_ms,
                             shutdown_delay_s=shutdown_delay)
    run_server(specs, settings, on_started=lambda url: typer.echo(
        f"lmforge is serving {len(specs)} model(s) at {url}  (web UI: {url}/, API docs: {url}/docs); Ctrl+C stops it"))


def check_servable(runs: list[str]) -> list[str]:
    from lmforge.inference.pipelines import PIPELINES
    from lmforge.rundir import RunDir
    from lmforge.serve.registry import parse_model_specs

    for name, path in parse_model_specs(runs):
        info = RunDir.open(path).info()
        if info.get("task") not in PIPELINES:
            raise LmforgeError(f"run '{path}' is a {info.get('task')} run, which cannot be served",
                               fix=f"serve runs of these tasks: {', '.join(PIPELINES)}")
    return runs


def check_port_free(host: str, port: int) -> None:
    import socket

    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise LmforgeError(f"cannot listen on {host}:{port}: {exc.strerror}",
                               fix="choose another --port, or stop what is using it") from None


@app.command()
def quickstart(
    from_scratch: Annotated[bool, typer.Option("--from-scratch", help="train a tokenizer and pretrain a tiny BERT first")] = False,
    no_serve: Annotated[bool, typer.Option("--no-serve", help="stop after the report")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="run dir (default: runs/quickstart-<time>)")] = None,
    max_time: Annotated[Optional[str], typer.Option("--max-time", help="fine-tuning budget (default: 2m30s on CPU)")] = None,
    host: Annotated[str, typer.Option("--host", help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="port (the next free one is used if taken)")] = 8000,
) -> None:
    """The main job: fine-tune the embedded encoder on movie reviews, evaluate, report, and serve API + web UI."""
    from lmforge.config import parse_duration
    from lmforge.quickstart import quickstart as run_quickstart

    try:
        budget = parse_duration(max_time) if max_time else None
    except ValueError as exc:
        raise LmforgeError(str(exc), where="--max-time") from None
    run_quickstart(from_scratch=from_scratch, serve=not no_serve, out=out, max_time=budget, host=host, port=port,
                   show_progress=_state["progress"], echo=typer.echo)


# ------------------------------------------------------------------------------------- output helpers
def _print_summary(summary: dict) -> None:
    from lmforge.training import dist

    if not dist.is_main():
        return
    parts = [f"run: {summary['run']}", f"steps: {summary['steps']}", f"epochs: {summary['epochs']}",
             f"time: {summary['elapsed_s']}s", f"stopped by: {summary['stopped_by']}"]
    typer.echo("  ".join(parts))
    if summary.get("last_eval"):
        typer.echo("last eval: " + "  ".join(f"{k} {v:.4f}" for k, v in summary["last_eval"].items()))
    best = summary.get("best") or {}
    if best.get("value") is not None:
        typer.echo(f"kept model/: best {best['metric']} {best['value']:.4f} at step {best['step']}")


def _print_eval(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if result.get("task") == "classify":
        base = result["baseline"]
        console.print(
            f"[bold]{result['data']}[/]  n={result['n']}  accuracy [bold]{result['accuracy']:.4f}[/]  "
            f"macro-F1 [bold]{result['macro_f1']:.4f}[/]   (majority '{base['majority_label']}': accuracy "
            f"{base['accuracy']:.4f}, macro-F1 {base['macro_f1']:.4f})"
        )
        table = Table("label", "precision", "recall", "f1", "support")
        for label, m in result["per_class"].items():
            table.add_row(label, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
        console.print(table)
    else:
        shown = {k: v for k, v in result.items() if not isinstance(v, (list, dict))}
        console.print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()),
                      markup=False)
    console.print(f"written: {Path(result['run']) / 'eval.json'}")


# ------------------------------------------------------------------------------------- entry point
MULTI_VALUE_FLAGS = ("--corpus",)


def expand_multi_value(argv: list[str]) -> list[str]:
    """Let ``--corpus a.txt b.txt`` mean ``--corpus a.txt --corpus b.txt`` (click options take one value each)."""
    out: list[str] = []
    current = None
    for arg in argv:
        if arg in MULTI_VALUE_FLAGS:
            current = arg
            out.append(arg)
            continue
        if arg.startswith("-"):
            current = None
        elif current and out and out[-1] != current:
            out.append(current)
        out.append(arg)
    return out


def _configure_logging(level: int) -> None:
    from rich.logging import RichHandler

    logger = logging.getLogger("lmforge")
    logger.handlers.clear()
    handler = RichHandler(show_time=False, show_path=False, markup=False, rich_tracebacks=False,
                          console=__import__("rich.console", fromlist=["Console"]).Console(stderr=True))
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def report_error(exc: BaseException) -> None:
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    console.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True) if not isinstance(exc, LmforgeError) else \
        console.print("[bold red]error:[/] " + _escape(str(exc)), soft_wrap=True)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def main(argv: list[str] | None = None) -> None:
    args = expand_multi_value(list(sys.argv[1:] if argv is None else argv))
    try:
        app(args=args, prog_name="lmforge", standalone_mode=True)
    except LmforgeError as exc:
        report_error(exc)
        sys.exit(exc.exit_code)
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        report_error(LmforgeError(f"{exc.strerror or exc}: {exc.filename}", fix="check the path and its permissions"))
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
