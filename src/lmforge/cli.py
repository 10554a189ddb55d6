"""The ``lmforge`` command line: a thin typer layer over the stage functions.

Training commands are generated from the task registry and their config schemas by one factory
(:func:`config_command`): every option's type, default and help text come from the config field it sets, and the
options all training commands share are declared once (:data:`RUN_OPTIONS`). Each command builds one config
(defaults < ``--config`` file < flags < ``--set``) and calls one stage function. Bad input exits with code 2 and
one message; nothing here imports torch until a command runs.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
import textwrap
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from lmforge.config import PretrainConfig, TokenizerTrainConfig, build_config, field_of
from lmforge.errors import LmforgeError
from lmforge.tasks import registry

app = typer.Typer(
    name="lmforge",
    help="From raw text to a served language model: tokenizer, pretraining, fine-tuning, evaluation, serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)
datasets_app = typer.Typer(help="Bundled datasets.", no_args_is_help=True, rich_markup_mode=None)
tokenizer_app = typer.Typer(help="Train tokenizers.", no_args_is_help=True, rich_markup_mode=None)
finetune_app = typer.Typer(help="Fine-tune a model for a task.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(datasets_app, name="datasets")
app.add_typer(tokenizer_app, name="tokenizer")
app.add_typer(finetune_app, name="finetune")
kb_app = typer.Typer(help="Knowledge bases: build from documents, search, ask with citations.", no_args_is_help=True,
                     rich_markup_mode=None)
app.add_typer(kb_app, name="kb")
models_app = typer.Typer(help="The models lmforge can start from.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(models_app, name="models")
probe_app = typer.Typer(help="Behavioural tests of a classifier.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(probe_app, name="probe")

log = logging.getLogger("lmforge")
_state: dict[str, Any] = {"progress": True, "started": None}  # started: when main() began (budgets count from it)

# ------------------------------------------------------------------------------------- options from config schemas
# the options every training command shares, declared once: config keys (flag names follow from the last part)
RUN_OPTIONS = ("out", "train.max_steps", "train.epochs", "train.max_time", "train.batch_size", "train.lr",
               "train.seed", "resume", "overwrite")
METAVARS = {int: "N", float: "X", str: "TEXT", Path: "PATH"}


def flag_name(key: str, info: FieldInfo | None = None) -> str:
    """``train.max_steps`` -> ``--max-steps``; a field may name its flag in ``json_schema_extra={"flag": ...}``."""
    extra = info.json_schema_extra if info is not None and isinstance(info.json_schema_extra, dict) else {}
    if extra.get("flag"):
        return str(extra["flag"])
    name = key.rpartition(".")[2]
    return "--" + name.removesuffix("_s").replace("_", "-")


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """The field's value type without ``None``/``Annotated``, and whether it is a list."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        return _base_type(annotation)
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def _shown_default(info: FieldInfo) -> str | None:
    if info.is_required():
        return None
    default = info.get_default(call_default_factory=True)
    if default is None or default is False or default == [] or default == {}:
        return None
    return ", ".join(map(str, default)) if isinstance(default, list) else str(default)


def _parameter(key: str, info: FieldInfo, *, choices: list[str] | None = None,
               help_text: str | None = None) -> inspect.Parameter:
    """One typer option for the config field ``key``: its type, help and default come from the field."""
    base, is_list = _base_type(info.annotation)
    text = help_text or info.description or ""
    if info.is_required():
        text += " (required, here or in --config)"
    shown = _shown_default(info)
    if shown is not None:
        text += f"  [default: {shown}]"
    flag = flag_name(key, info)
    name = key.replace(".", "__")
    if base is bool and not is_list:
        if info.get_default() is False:  # a switch: present means true; absent leaves the config's value
            return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=False,
                                     annotation=Annotated[bool, typer.Option(flag, help=text, show_default=False)])
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            bool | None, typer.Option(f"{flag}/--no-{flag[2:]}", help=text, show_default=False)])
    if choices is None and typing.get_origin(base) is Literal:
        choices = [str(c) for c in typing.get_args(base)]
    if choices:
        kind: Any = Literal[tuple(choices)]  # type: ignore[valid-type]
        metavar = "[" + "|".join(choices) + "]"
    elif "duration" in text.lower() or key.endswith("max_time"):
        kind, metavar = str, "TIME"
    else:
        kind, metavar = (base if base in METAVARS else str), METAVARS.get(base, "TEXT")
    option = typer.Option(flag, help=text, show_default=False, metavar=metavar + ("..." if is_list else ""))
    annotation = Annotated[list[kind] | None if is_list else kind | None, option]  # type: ignore[valid-type]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


CONFIG_FILE = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
    Path | None, typer.Option("--config", help="YAML config file; flags override it", metavar="FILE")])
SETS = inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
    list[str] | None, typer.Option("--set", metavar="KEY=VALUE",
                                      help="override any config key, e.g. --set train.lr=3e-5 (repeatable)")])


def config_command(schema: type[BaseModel], keys: tuple[str, ...], run: Callable[[BaseModel], None], doc: str, *,
                   pick: Callable[[dict], type[BaseModel]] | None = None,
                   choices: dict[str, list[str]] | None = None, helps: dict[str, str] | None = None) -> Callable:
    """A typer command whose options are ``schema``'s fields ``keys`` plus ``--config`` and ``--set``; it builds the
    config (``pick`` may choose the final class from the merged keys) and hands it to ``run``."""
    choices, helps = choices or {}, helps or {}
    params = [_parameter(k, field_of(schema, k), choices=choices.get(k), help_text=helps.get(k)) for k in keys]

    def command(**values: Any) -> None:
        flags = {}
        for key in keys:
            value = values[key.replace(".", "__")]
            flags[key] = (None if value is False or value == [] else value, flag_name(key, field_of(schema, key)))
        run(build_config(pick or schema, file=values["config"], flags=flags, sets=values["set_"]))

    command.__signature__ = inspect.Signature([*params, CONFIG_FILE, SETS])  # type: ignore[attr-defined]
    command.__annotations__ = {}
    command.__doc__ = doc
    return command


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

    rows = [{"name": d.name, "task": d.task, "splits": list(d.splits), "size_kb": round(file_size(d) / 1024, 1),
             "license": d.license, "description": d.description, "source": d.source} for d in BUNDLED.values()]
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


@models_app.command("list")
def models_list(
    names: Annotated[list[str] | None, typer.Argument(help="only these (names as listed)", metavar="[NAME...]")] = None,
    runs: Annotated[Path, typer.Option("--runs", metavar="DIR", help="folder of run dirs to include")] = Path("runs"),
    measure: Annotated[bool, typer.Option("--measure", help="time each model's inference on this machine (a few "
                                          "seconds each)")] = False,
    presets: Annotated[bool, typer.Option("--presets/--no-presets", help="include the from-scratch size presets")] = True,
    seconds: Annotated[float, typer.Option("--seconds", min=0.1, max=600, metavar="S",
                                           help="with --measure: how long to time each model")] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Every model lmforge can use offline: the embedded ones, the size presets, and the runs under --runs; what each
    is for, parameters, size on disk, longest input, and with --measure its speed here."""
    from lmforge.catalog import catalog
    from lmforge.catalog import measure as time_model

    entries = catalog(runs, with_presets=presets)
    if names:
        unknown = [n for n in names if n not in {e.name for e in entries}]
        if unknown:
            raise LmforgeError(f"no model named {', '.join(unknown)}", fix="see `lmforge models list` for the names")
        entries = [e for e in entries if e.name in names]
    if measure:
        for entry in entries:
            entry.speed = time_model(entry, seconds=seconds)
    if as_json:
        _echo_json([e.as_dict() for e in entries])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="models lmforge can start from")
    for column in ("name", "family", "parameters", "on disk", "max tokens", *(["speed here"] if measure else []),
                   "good for", "license", "use"):
        table.add_column(column, justify="right" if column in ("parameters", "on disk", "max tokens") else "left")
    for e in entries:
        speed = [f"{e.speed['value']:,} {e.speed['unit']}" if e.speed else "-"] if measure else []
        what = e.good_for if e.kind != "run" else f"{e.task} run" + (
            "; " + ", ".join(f"{k} {v:.3g}" for k, v in e.metric.items()) if e.metric else "")
        if e.base:
            what = "a base model (no chat template): translate/summarize few-shot, or fine-tune it"
        table.add_row(e.name, e.family, f"{e.parameters / 1e6:,.1f}M" if e.parameters else "-",
                      f"{e.size_mb:,.0f} MB" if e.size_mb is not None else "-",
                      f"{e.max_length:,}" if e.max_length else "any", *speed, what, e.license or "-", e.use)
    Console(width=220).print(table)


KB_ARG = Annotated[Path, typer.Argument(help="knowledge base folder (lmforge kb build), or with --store its name",
                                        metavar="KB")]
STORE_HELP = ("keep the KB in PostgreSQL (postgresql://user@host/db), shared by every server that names it; KB is "
              "then its name there (default: KB is a folder)")
KB_STORE = Annotated[str | None, typer.Option("--store", metavar="URL", envvar="LMFORGE_KB_STORE", help=STORE_HELP)]
KB_MODE = Annotated[str, typer.Option("--mode", metavar="MODE", help="bm25 (words), dense (meaning: sentence vectors) "
                                      "or hybrid (both, reciprocal-rank fusion)")]


@kb_app.command("build")
def kb_build(
    docs: Annotated[list[str], typer.Option("--docs", metavar="DOCS", help="passages: a .jsonl/.csv/.tsv/.parquet "
                                            "file with 'text' (and optional 'id', 'title'), a bundled name (e.g. "
                                            "python-docs-kb), or a folder of documents (text, Markdown, reST, HTML "
                                            "and passage files); repeatable")],
    out: Annotated[Path, typer.Option("--out", metavar="KB", help="the KB folder (or with --store its name): made if "
                                      "missing; an existing KB gets only the passages whose ids it does not hold")],
    store: KB_STORE = None,
    model: Annotated[str, typer.Option("--model", metavar="MODEL", help="sentence-embedding encoder (new KBs)")] = "minilm",
    max_length: Annotated[int, typer.Option("--max-length", min=16, max=512, metavar="N",
                                            help="tokens of each passage embedded (new KBs; BM25 reads all of it)")] = 128,
    precision: Annotated[str, typer.Option("--precision", metavar="P", help="int8: the encoder's matrix products in "
                                           "int8 on the CPU, ~1.35x faster, same retrieval (README); float32: exact "
                                           "(new KBs)")] = "int8",
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Build a knowledge base (or add documents to one): passages with a full-text index and their sentence
    vectors, in a folder (SQLite + a memory-mapped file) or PostgreSQL (--store). All or nothing: readers see the new
    passages when the build ends, none if it fails or is killed."""
    from lmforge.inference.encoder import keep_freed_memory
    from lmforge.kb import KnowledgeBase, check_docs

    check_docs(docs)
    keep_freed_memory()
    result = KnowledgeBase.build(out, docs, store=store, model=model, max_length=max_length, precision=precision,
                                 show_progress=_state["progress"])
    if as_json:
        _echo_json(result)
        return
    typer.echo(f"{result['kb']}: {result['added']:,} passages added ({result['skipped']:,} already there), "
               f"{result['passages']:,} in all, {result['size_mb']} MB; {result['seconds']} s "
               f"(embedding {result['embed_s']} s, {result['precision']})")


def _open_kb(kb: Path, store: str | None):
    from lmforge.kb import KnowledgeBase

    return KnowledgeBase.open(kb, store)


@kb_app.command("search")
def kb_search(
    kb: KB_ARG,
    query: Annotated[str, typer.Argument(help="what to look for", metavar="QUESTION")],
    k: Annotated[int, typer.Option("--k", min=1, max=100, metavar="N", help="passages to return")] = 5,
    mode: KB_MODE = "hybrid",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines, one per hit")] = False,
    store: KB_STORE = None,
) -> None:
    """The passages that best match a question: id, title, score and text of each."""
    base = _open_kb(kb, store)
    hits = base.search(query, k=k, mode=mode)
    for hit in hits:
        if as_json:
            _echo_json(hit.as_dict())
        else:
            typer.echo(f"{hit.rank}. [{hit.id}] {hit.title}  (score {hit.score:.4g}, similarity {hit.similarity:.2f})")
            typer.echo(textwrap.indent(textwrap.shorten(hit.text, 400), "   "))
    if not hits and not as_json:
        typer.echo("no passage matches")


@kb_app.command("ask")
def kb_ask(
    kb: KB_ARG,
    question: Annotated[str, typer.Argument(help="the question", metavar="QUESTION")],
    reader: Annotated[str, typer.Option("--reader", metavar="MODEL", help="who answers: smollm2 or a chat run "
                                        "(writes an answer citing [1], [2]), or an extractive QA run (a span)")] = "smollm2",
    k: Annotated[int, typer.Option("--k", min=1, max=20, metavar="N", help="passages the reader is given")] = 4,
    mode: KB_MODE = "hybrid",
    min_similarity: Annotated[float, typer.Option("--min-similarity", min=-1.0, max=1.0, metavar="X",
                                                  help="below this the answer is 'not found in the knowledge base'")] = 0.3,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, max=2048, metavar="N")] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object (answer, citations, passages)")] = False,
    store: KB_STORE = None,
) -> None:
    """Answer from the knowledge base: retrieve passages, let the reader answer from them only, with citations.
    The answer streams as it is written."""
    from lmforge.kb.ask import ask, reader_kind
    from lmforge.stages import load

    base = _open_kb(kb, store)
    pipeline = load(reader)
    reader_kind(pipeline)
    result: dict = {}
    for event in ask(base, question, pipeline, k=k, mode=mode, min_similarity=min_similarity,
                     max_new_tokens=max_new_tokens):
        if event["type"] == "passages":
            result["passages"] = event["passages"]
        elif event["type"] == "delta" and not as_json:
            sys.stdout.write(event["text"])
            sys.stdout.flush()
        elif event["type"] == "done":
            result = {**{k_: v for k_, v in event.items() if k_ != "type"}, **result}
    if as_json:
        _echo_json(result)
        return
    typer.echo("")
    cited = {c["n"] for c in result["citations"]}
    for p in result["passages"]:
        mark = "*" if p["n"] in cited else " "
        typer.echo(f"{mark}[{p['n']}] {p['id']}  {p['title']}  (similarity {p['similarity']:.2f})")


def _train_tokenizer(cfg: TokenizerTrainConfig) -> None:
    import time

    from lmforge.data.tokenizer import train_tokenizer

    start = time.monotonic()
    path = train_tokenizer(cfg, show_progress=_state["progress"])
    typer.echo(f"tokenizer ({cfg.kind}) written to {path} in {time.monotonic() - start:.1f}s")


tokenizer_app.command("train")(config_command(
    TokenizerTrainConfig, ("corpus", "kind", "vocab_size", "lowercase", "out", "overwrite"), _train_tokenizer,
    "Train a WordPiece (BERT) or byte-level BPE (GPT) tokenizer on a corpus."))


def _pretrain(cfg: BaseModel) -> None:
    from lmforge.stages import pretrain

    _print_summary(pretrain(cfg, show_progress=_state["progress"], started=_state["started"]))


def _pretrain_command() -> Callable:
    objectives = registry.tasks("pretrain")
    described = "; ".join(f"{t.name}: {t.summary}" for t in objectives)

    def pick(merged: dict) -> type[BaseModel]:
        from lmforge.stages import pretrain_task

        return pretrain_task(merged.get("objective")).config

    return config_command(
        PretrainConfig, ("objective", "corpus", "tokenizer", "size", "init", "seq_len", *RUN_OPTIONS), _pretrain,
        "Pretrain an encoder or a decoder on raw text, from scratch (--size) or from --init.",
        pick=pick, choices={"objective": [t.name for t in objectives]},
        helps={"objective": f"the pretraining objective ({described})"})


app.command("pretrain")(_pretrain_command())


def _finetune_runner(name: str) -> Callable[[BaseModel], None]:
    def run(cfg: BaseModel) -> None:
        from lmforge.stages import finetune

        _print_summary(finetune(name, cfg, show_progress=_state["progress"], started=_state["started"]))

    return run


for _task in registry.tasks("finetune"):
    finetune_app.command(_task.name)(config_command(_task.config, (*_task.flags, *RUN_OPTIONS),
                                                    _finetune_runner(_task.name), _task.summary))

# sampling options, declared once for every command that generates (defaults differ per command)
SAMPLING_OPTIONS = {
    "max_new_tokens": (int, typer.Option("--max-new-tokens", min=1, metavar="N", help="tokens to generate at most")),
    "temperature": (float, typer.Option("--temperature", min=0, metavar="X", help="scales logits before the softmax; 0 is greedy")),
    "top_k": (int, typer.Option("--top-k", min=0, metavar="N", help="sample among the k most likely tokens (0: off)")),
    "top_p": (float, typer.Option("--top-p", min=0.01, max=1, metavar="X",
                                  help="nucleus sampling: smallest set with this mass (1: off)")),
    "repetition_penalty": (float, typer.Option("--repetition-penalty", min=0.01, metavar="X",
                                               help="penalize tokens already present (1: off)")),
    "stop": (list[str] | None, typer.Option("--stop", metavar="TEXT", help="stop when this text appears (repeatable)")),
    "seed": (int | None, typer.Option("--seed", metavar="N", help="makes sampling reproducible")),
}


def sampling_command(doc: str, defaults: dict[str, Any], arguments: list[inspect.Parameter],
                     body: Callable[..., None]) -> Callable:
    """A command taking ``arguments`` and the sampling options (with these ``defaults``); ``body`` gets the
    arguments by name and ``params``, the SamplingParams built from the options."""
    sampling = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=defaults.get(name),
                                  annotation=Annotated[kind, option])
                for name, (kind, option) in SAMPLING_OPTIONS.items() if name in defaults]

    def command(**values: Any) -> None:
        from lmforge.inference.generation import SamplingParams

        chosen = {k: values.pop(k) for k in defaults}
        chosen["stop"] = chosen.get("stop") or []
        body(**values, params=SamplingParams(**chosen))

    command.__signature__ = inspect.Signature([*arguments, *sampling])  # type: ignore[attr-defined]
    command.__annotations__ = {}
    command.__doc__ = doc
    return command


def _argument(name: str, kind: Any, marker: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, marker])


PRECISION = _argument("precision", Literal["auto", "float32", "bfloat16", "int8"], typer.Option(
    "--precision", help="weights to decode with: auto (int8 on a CPU, bfloat16 on a GPU, for Llama models like "
    "smollm2), float32 (exactly the model)"), "auto")


def _generation_pipeline(run: Path, precision: str = "auto"):
    from lmforge.inference.pipelines import GenerationPipeline
    from lmforge.stages import load

    pipeline = load(run, precision=precision)
    if not isinstance(pipeline, GenerationPipeline):
        raise LmforgeError(f"'{run}' is a {pipeline.task} run; generation needs a causal LM",
                           fix="pretrain one with --objective clm, or fine-tune with finetune chat/code")
    return pipeline


def _generate(run: Path, prompt: str, stream: bool, as_json: bool, precision: str, params) -> None:
    pipeline = _generation_pipeline(run, precision)
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


app.command("generate")(sampling_command(
    "Generate a continuation of PROMPT (KV cache; sampling reproducible with --seed).",
    {"max_new_tokens": 64, "temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0, "stop": None,
     "seed": None},
    [_argument("run", Path, typer.Argument(help="run dir or HF folder of a causal LM", metavar="RUN")),
     _argument("prompt", str, typer.Argument(help="text to continue", metavar="PROMPT")),
     _argument("stream", bool, typer.Option("--stream", help="print tokens as they are produced"), False),
     _argument("as_json", bool, typer.Option("--json", help="print one JSON object (text, finish_reason, usage)"),
               False), PRECISION],
    _generate))


def _chat(run: Path, system: str | None, precision: str, params) -> None:
    pipeline = _generation_pipeline(run, precision)
    if not pipeline.has_chat_template:
        raise pipeline.no_chat
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


app.command("chat")(sampling_command(
    "Chat in the terminal; the conversation is kept. /reset starts over, /exit (or Ctrl-D) leaves.",
    {"max_new_tokens": 128, "temperature": 0.7, "top_k": 50, "top_p": 0.95, "repetition_penalty": 1.1,
     "seed": None},
    [_argument("run", Path, typer.Argument(help="a chat run (lmforge finetune chat)", metavar="RUN")),
     _argument("system", str | None, typer.Option("--system", metavar="TEXT", help="a system message to start with"),
               None), PRECISION],
    _chat))


SHOTS_HELP = ("translate/summarize with a causal LM: show it K training pairs of the task before each text "
              "(few-shot; greedy). Default: 4 for a base model without a chat template (gemma3), 0 otherwise")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="run dir, or any model (e.g. smollm2: zero-shot; with --task)",
                                        metavar="RUN")],
    data: Annotated[str | None, typer.Option("--data", metavar="DATA", help="data to score on: a file or bundled name[:split] "
                                                "(default: the task's own, e.g. the run's held-out text)")] = None,
    task: Annotated[str | None, typer.Option("--task", metavar="TASK", help="evaluate as this task (e.g. code, chat; "
                                             "default: the run's)")] = None,
    text_field: Annotated[str | None, typer.Option("--text-field", metavar="FIELD", help="text field (default: the run's)")] = None,
    label_field: Annotated[str | None, typer.Option("--label-field", metavar="FIELD", help="label field (default: the run's)")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="N", help="examples per forward pass")] = 64,
    limit: Annotated[int | None, typer.Option("--limit", metavar="N", help="score the first N examples only (slow generative "
                                                 "metrics, e.g. code)")] = None,
    shots: Annotated[int | None, typer.Option("--shots", min=0, max=16, metavar="K", help=SHOTS_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object of metrics on stdout")] = False,
    store: Annotated[str | None, typer.Option("--store", metavar="URL", help="a knowledge base in PostgreSQL: RUN is "
                                              "its name there (retrieval on question/answer pairs)")] = None,
) -> None:
    """Evaluate a run with its task's metrics (classification: accuracy/F1; LMs: perplexity; code: pass@1, ...);
    writes RUN/eval.json."""
    from lmforge.stages import evaluate as run_evaluation

    result = run_evaluation(run, data, task=task, text_field=text_field, label_field=label_field,
                            batch_size=batch_size, limit=limit, shots=shots, store=store)
    if as_json:
        _echo_json(result)
        return
    _print_eval(result)


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="run dir (a classifier, or a masked LM to fill [MASK]s)", metavar="RUN")],
    texts: Annotated[list[str] | None, typer.Argument(help="texts to predict for", metavar="TEXT...")] = None,
    input_: Annotated[str | None, typer.Option("--input", metavar="FILE", help="a .jsonl/.csv/.tsv/.parquet file of texts")] = None,
    output: Annotated[Path | None, typer.Option("--output", metavar="FILE", help="write JSON lines here instead of stdout")] = None,
    text_field: Annotated[str, typer.Option("--text-field", metavar="FIELD", help="text field of --input rows")] = "text",
    top_k: Annotated[int, typer.Option("--top-k", min=1, metavar="N", help="masked LMs: candidates per [MASK]")] = 5,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing --output file")] = False,
    question: Annotated[str | None, typer.Option("--question", metavar="TEXT", help="question-answering runs: the "
                                                 "question (with --context)")] = None,
    context: Annotated[str | None, typer.Option("--context", metavar="TEXT", help="question-answering runs: the text "
                                                "that holds the answer")] = None,
) -> None:
    """Predict with a run: one JSON object per input on stdout or in --output (a classifier: label, score,
    probabilities; a masked LM: the top tokens for each [MASK]; a question-answering run, given --question and
    --context: the answer, its score and its character offsets in the context)."""
    from lmforge.inference.pipelines import PIPELINES, FillMaskPipeline, QuestionAnsweringPipeline
    from lmforge.stages import load, resolve_task

    asks = question is not None or context is not None
    if asks or not (texts or input_):  # the run's kind says which inputs it takes (read cheaply, before loading it)
        task = resolve_task(run)[0]
        if PIPELINES[task.pipeline] is QuestionAnsweringPipeline:
            _answer(run, question, context, bool(texts or input_), output, overwrite)
            return
        if asks:
            raise LmforgeError(f"--question and --context are for question-answering runs; '{run}' is a {task.name} "
                               "run", fix=f'lmforge predict {run} "a text"')
    texts = _inputs("predict", texts, input_, text_field, output, overwrite)
    pipeline = load(run)
    if pipeline.predict_hint:
        raise LmforgeError(f"'{run}' is a {pipeline.task} run: {pipeline.predict_hint}")
    options = {"top_k": top_k} if isinstance(pipeline, FillMaskPipeline) else {}
    _write_results([{"text": t, **r} for t, r in zip(texts, pipeline.predict(texts, **options))], output)


def _answer(run: Path, question: str | None, context: str | None, has_texts: bool, output: Path | None,
            overwrite: bool) -> None:
    """``lmforge predict`` for a question-answering run: the answer to --question, found in --context."""
    from lmforge.errors import DataError
    from lmforge.stages import load

    usage = f'lmforge predict {run} --question "Who ...?" --context "the text that holds the answer"'
    if has_texts or question is None or context is None:
        raise LmforgeError(f"'{run}' answers questions: give --question and --context"
                           + (" (instead of TEXT or --input)" if has_texts else ""), fix=usage)
    if not question.strip() or not context.strip():
        raise LmforgeError(f"--{'question' if not question.strip() else 'context'} is empty", fix=usage)
    if output is not None and output.exists() and not overwrite:
        raise DataError(f"'{output}' exists", fix="pass --overwrite to replace it, or choose another --output")
    answer = load(run).predict([(question, context)])[0]
    _write_results([{"question": question, **answer}], output)


@probe_app.command("bias")
def probe_bias(
    run: Annotated[Path, typer.Argument(help="a classify run", metavar="RUN")],
    templates: Annotated[Path | None, typer.Option("--templates", metavar="FILE", help="JSON with more group sets "
                                                   "and templates: {\"sets\": {name: {group: [terms]}}, "
                                                   "\"templates\": {name: [\"... {X} ...\"]}}")] = None,
    data: Annotated[str | None, typer.Option("--data", metavar="DATA", help="real inputs to swap identity terms in "
                                             "and to test invariance on, e.g. movie-reviews:test")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Counterfactual tests (swap identity terms between groups: gender, names, nationality, religion, age), invariance
    (typos, names, numbers) and negation; writes RUN/bias.json and RUN/bias.png, shown on the model card."""
    from lmforge.inference.pipelines import ClassificationPipeline
    from lmforge.inference.probe import bias_png, probe
    from lmforge.rundir import write_json
    from lmforge.stages import load

    pipeline = load(run)
    if not isinstance(pipeline, ClassificationPipeline):
        raise LmforgeError(f"'{run}' is a {pipeline.task} model; the bias probe tests classifiers",
                           fix="give a run of `lmforge finetune classify`")
    texts = None
    if data:
        from lmforge.data.labeled import load_text_label

        texts = load_text_label(data, "text", None).texts
    result = {"run": str(run), "data": data, **probe(pipeline, templates=templates, texts=texts)}
    written = []
    if (run / "lmforge.yaml").exists():
        write_json(run / "bias.json", result)
        written = [run / "bias.json", bias_png(result, run / "bias.png")]
    if as_json:
        _echo_json(result)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    table = Table(title=f"{run}: templates, the label's probability by group (change from the median over all groups; 95% CI)")
    for column in ("set", "group", "mean change", "95% CI", "flip rate", "flagged"):
        table.add_column(column, justify="left" if column in ("set", "group") else "right")
    for name, groups in result["templates"].items():
        for group, r in groups.items():
            table.add_row(name, group, f"{r['mean_change']:+.4f}", f"[{r['change_ci'][0]:+.4f}, {r['change_ci'][1]:+.4f}]",
                          f"{r['flip_rate']:.3f}", "yes" if r["flagged"] else "")
    console.print(table)
    for name, found in (result.get("inputs") or {}).items():
        worst = max(found["groups"].items(), key=lambda kv: abs(kv[1]["mean_change"]))
        console.print(f"inputs, {name}: {found['texts']} texts; largest change {worst[0]} "
                      f"{worst[1]['mean_change']:+.4f}, flip rates "
                      + ", ".join(f"{g} {r['flip_rate']:.3f}" for g, r in found["groups"].items()), markup=False)
    for test, r in (result.get("invariance") or {}).items():
        if r.get("n"):
            console.print(f"invariance, {test}: {r['n']} texts, flip rate {r['flip_rate']:.3f}, mean |change| "
                          f"{r['mean_abs_change']:.4f}", markup=False)
    if result.get("negation"):
        r = result["negation"]
        console.print(f"negation: {r['n']} positive statements negated; positive probability did not fall for "
                      f"{r['failure_rate']:.0%}, label flipped to negative for {r['flipped_to_negative']:.0%}",
                      markup=False)
    for path in written:
        console.print(f"written: {path}", markup=False)


@app.command("learning-curve")
def learning_curve_command(
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="folder for curve.json, curve.png and the runs")],
    data: Annotated[str | None, typer.Option("--data", metavar="DATA", help="a bundled classification dataset with "
                                             "dev and test splits (movie-reviews, wordnet-topics, spam)")] = None,
    model: Annotated[str, typer.Option("--model", metavar="MODEL", help="the encoder to fine-tune")] = "minilm",
    fractions: Annotated[str, typer.Option("--fractions", metavar="F,F,...", help="shares of the training split "
                                           "(nested subsets)")] = "0.01,0.03,0.1,0.3,1",
    seeds: Annotated[int, typer.Option("--seeds", min=1, max=20, metavar="N", help="subsets and runs per fraction")] = 1,
    first_seed: Annotated[int, typer.Option("--first-seed", min=0, metavar="S", help="run seeds S..S+N-1, so one "
                                            "curve's seeds can run in separate processes or machines")] = 0,
    compare: Annotated[list[str] | None, typer.Option("--compare", metavar="INIT", help="also train from: "
                                                      "random-init (the same architecture, random weights)")] = None,
    epochs: Annotated[float, typer.Option("--epochs", min=0.01, metavar="X", help="passes over each subset")] = 3.0,
    min_steps: Annotated[int, typer.Option("--min-steps", min=1, metavar="N", help="but never fewer optimizer "
                                           "steps than this")] = 100,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="N")] = 32,
    max_length: Annotated[int, typer.Option("--max-length", min=8, metavar="N")] = 128,
    sets: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="training-loop settings, "
                                                   "e.g. --set lr=3e-5 (keys of train.*)")] = None,
    merge: Annotated[list[Path] | None, typer.Option("--merge", metavar="DIR", help="train nothing: pool the curves "
                                                      "in these folders (seeds run apart) into one in --out")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing curve in --out")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print curve.json")] = False,
) -> None:
    """Accuracy and macro-F1 vs the number of labels: fine-tune on nested subsets of the training split (same
    budget rule for each), score on the test split; with --compare random-init, the same from random weights."""
    from lmforge.curves import learning_curve, merge_curves, parse_fractions

    if merge:
        _print_curve(merge_curves(merge, out, overwrite=overwrite), out, as_json)
        return
    if data is None:
        raise LmforgeError("no dataset given", where="--data", fix="e.g. --data movie-reviews")
    extra = {}
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise LmforgeError(f"'{item}' is not KEY=VALUE", where="--set", fix="e.g. --set lr=3e-5")
        extra[key.removeprefix("train.")] = yaml_value(value)
    result = learning_curve(model=model, data=data, out=out, fractions=parse_fractions(fractions), seeds=seeds,
                            first_seed=first_seed, compare=compare, epochs=epochs, min_steps=min_steps,
                            batch_size=batch_size, max_length=max_length, overwrite=overwrite,
                            show_progress=_state["progress"], extra=extra)
    _print_curve(result, out, as_json)


def _print_curve(result: dict, out: Path, as_json: bool) -> None:
    if as_json:
        _echo_json(result)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['model']} on {result['data']}: test accuracy and macro-F1 by labeled examples "
                        "(mean ± sd over seeds)")
    for column in ("init", "fraction", "labels", "seeds", "accuracy", "macro-F1"):
        table.add_column(column, justify="left" if column == "init" else "right")
    for r in result["table"]:
        table.add_row(r["init"], f"{r['fraction']:g}", f"{r['labels']:,}", str(r["seeds"]),
                      f"{r['accuracy']:.3f} ± {r['accuracy_std']:.3f}",
                      f"{r['macro_f1']:.3f} ± {r['macro_f1_std']:.3f}")
    Console(width=120).print(table)
    typer.echo(f"written: {out / 'curve.json'}, {out / 'curve.png'}")


def yaml_value(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _explainer(run: Path):
    from lmforge.inference.explain import Explainer
    from lmforge.stages import resolve_task

    task, model_dir, info = resolve_task(run)
    if "explain" not in task.routes:  # the tasks whose models can be explained say so (classification)
        raise LmforgeError(f"'{run}' is a {task.name} model; explanations are for classifiers",
                           fix="give a run of `lmforge finetune classify`")
    return Explainer(model_dir, info)


@app.command()
def explain(
    run: Annotated[Path, typer.Argument(help="a classify run (or a sequence-classifier folder)", metavar="RUN")],
    text: Annotated[str | None, typer.Argument(help="the text to explain", metavar="TEXT")] = None,
    method: Annotated[str, typer.Option("--method", metavar="METHOD",
                                        help="integrated-gradients or occlusion (Captum)")] = "integrated-gradients",
    target: Annotated[str | None, typer.Option("--target", metavar="LABEL", help="explain this label (default: "
                                               "the predicted one)")] = None,
    steps: Annotated[int, typer.Option("--steps", min=2, max=512, metavar="N",
                                       help="integrated gradients: points on the path")] = 32,
    attention: Annotated[bool, typer.Option("--attention", help="also the attention weights of every layer and head "
                                            "(in --json; a heatmap with --attention-png)")] = False,
    attention_png: Annotated[Path | None, typer.Option("--attention-png", metavar="FILE",
                                                       help="write the attention heatmap of --layer here")] = None,
    layer: Annotated[int | None, typer.Option("--layer", metavar="N", help="layer of the heatmap (default: "
                                              "the last)")] = None,
    html_file: Annotated[Path | None, typer.Option("--html", metavar="FILE", help="write the shaded text as a "
                                                   "standalone HTML page")] = None,
    faithfulness: Annotated[bool, typer.Option("--faithfulness", help="instead of one text: the deletion test on "
                                               "--data (top-k attributed words vs k random words removed)")] = False,
    data: Annotated[str | None, typer.Option("--data", metavar="DATA", help="with --faithfulness: texts, e.g. "
                                             "movie-reviews:test")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, metavar="N", help="with --faithfulness: the first N "
                                              "texts")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace existing output files")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Why a classifier decided: a score per word (colored in the terminal, --json, --html), the attention weights,
    or the deletion test of the attributions' faithfulness."""
    from lmforge.errors import DataError
    from lmforge.inference.explain import METHODS, deletion_curves, html_report
    from lmforge.inference.explain import attention_png as write_png

    if method not in METHODS:
        raise LmforgeError(f"unknown method '{method}'", where="--method", fix=f"use one of {', '.join(METHODS)}")
    for path in (attention_png, html_file):
        if path is not None and path.exists() and not overwrite:
            raise DataError(f"'{path}' exists", fix="pass --overwrite to replace it, or choose another file")
    if faithfulness:
        if text is not None or data is None:
            raise LmforgeError("--faithfulness scores texts from --data, not one TEXT",
                               fix="lmforge explain RUN --faithfulness --data movie-reviews:test --limit 200")
        from lmforge.data.labeled import load_text_label

        texts = load_text_label(data, "text", None).texts[: limit or None]
        result = deletion_curves(_explainer(run), texts, method, steps=steps)
        result["data"] = data
        if as_json:
            _echo_json(result)
            return
        typer.echo(f"deletion test, {method}, {result['texts']} texts of {data}: mean drop of the predicted class's "
                   "probability")
        typer.echo("  k:          " + "  ".join(f"{k:6d}" for k in result["k"]))
        typer.echo("  top-k:      " + "  ".join(f"{d:6.3f}" for d in result["top_drop"]) + f"   area {result['top_area']:.3f}")
        typer.echo("  random k:   " + "  ".join(f"{d:6.3f}" for d in result["random_drop"]) + f"   area {result['random_area']:.3f}")
        return
    if text is None:
        raise LmforgeError("give a TEXT to explain (or --faithfulness --data D)", fix=f'lmforge explain {run} "a text"')
    result = _explainer(run).explain(text, method=method, target=target, steps=steps,
                                     attention=attention or attention_png is not None)
    if attention_png is not None:
        write_png(result, attention_png, layer)
        typer.echo(f"attention heatmap written to {attention_png}", err=True)
    if html_file is not None:
        html_file.write_text(html_report(result, text), encoding="utf-8")
        typer.echo(f"explanation written to {html_file}", err=True)
    if as_json:
        _echo_json(result if attention else {k: v for k, v in result.items() if k != "attention"})
        return
    from rich.console import Console
    from rich.text import Text

    top = max((abs(w["score"]) for w in result["words"]), default=0.0) or 1.0
    shaded, cursor = Text(), 0
    for w in result["words"]:
        shaded.append(text[cursor : w["start"]])
        level = int(40 + 160 * min(1.0, abs(w["score"]) / top))
        color = f"rgb(0,{level},60)" if w["score"] >= 0 else f"rgb({level},0,30)"
        shaded.append(text[w["start"] : w["end"]], style=f"bold white on {color}")
        cursor = w["end"]
    shaded.append(text[cursor:])
    console = Console()
    probs = ", ".join(f"{k} {v:.3f}" for k, v in result["probabilities"].items())
    console.print(f"{result['label']} ({probs}); word scores toward {result['target']} by {method} "
                  "(green: for, red: against)", markup=False)
    console.print(shaded)
    ranked = sorted(result["words"], key=lambda w: -w["score"])[:5]
    console.print("top: " + ", ".join(f"{w['word']} {w['score']:+.3f}" for w in ranked), markup=False)


def _inputs(command: str, texts: list[str] | None, input_: str | None, text_field: str, output: Path | None,
            overwrite: bool) -> list[str]:
    """The texts a command is given as arguments or in --input; --output checked before any work."""
    from lmforge.errors import DataError

    if bool(texts) == bool(input_):
        raise LmforgeError("give texts as arguments or --input FILE (one of the two)",
                           fix=f'lmforge {command} RUN "a text"   or   lmforge {command} RUN --input texts.jsonl')
    if output is not None and output.exists() and not overwrite:
        raise DataError(f"'{output}' exists", fix="pass --overwrite to replace it, or choose another --output")
    if input_:
        from lmforge.data.labeled import load_text_label

        return load_text_label(input_, text_field, None).texts
    return list(texts or [])


def _write_results(results: list[dict], output: Path | None) -> None:
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
    if output is None:
        sys.stdout.write(lines)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(lines, encoding="utf-8")
        typer.echo(f"{len(results)} results written to {output}", err=True)


def _seq2seq_command(task: str, doing: str) -> Callable:
    option = lambda name, kind, default, flag, **o: inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, typer.Option(flag, **o)])
    params = [
        inspect.Parameter("run", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[Path, typer.Argument(
            help=f"a {task} run (lmforge finetune {task}) or a seq2seq model folder", metavar="RUN")]),
        inspect.Parameter("texts", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            list[str] | None, typer.Argument(help=f"texts to {task}", metavar="TEXT...")]),
        option("input_", str | None, None, "--input", metavar="FILE",
               help="a .jsonl/.csv/.tsv/.parquet file of texts"),
        option("output", Path | None, None, "--output", metavar="FILE",
               help="write JSON lines here instead of stdout"),
        option("text_field", str, "text", "--text-field", metavar="FIELD",
               help="text field of --input rows"),
        option("num_beams", int | None, None, "--num-beams", min=1, max=32, metavar="N",
               help="beam width (1: greedy); default: the run's"),
        option("max_new_tokens", int | None, None, "--max-new-tokens", min=1, metavar="N",
               help="longest output in tokens; default: the run's"),
        option("length_penalty", float | None, None, "--length-penalty", metavar="X",
               help="beam scores are divided by length ** X (above 1 favours longer outputs); default: the run's"),
        option("no_repeat_ngram_size", int | None, None, "--no-repeat-ngram-size", min=0, metavar="N",
               help="never repeat an n-gram of this size (0: off); default: the run's"),
        option("sample", bool, False, "--sample", help="sample tokens instead of taking the likeliest"),
        option("temperature", float | None, None, "--temperature", min=0.01, metavar="X",
               help="with --sample: divide the logits by this (below 1: safer)"),
        option("top_p", float | None, None, "--top-p", min=0.01, max=1.0, metavar="P",
               help="with --sample: sample from the likeliest tokens holding this much probability"),
        option("seed", int | None, None, "--seed", metavar="N", help="with --sample: make the samples repeatable"),
        option("shots", int | None, None, "--shots", min=0, max=16, metavar="K", help=SHOTS_HELP),
        option("overwrite", bool, False, "--overwrite", help="replace an existing --output file"),
    ]

    def command(run: Path, texts: list[str] | None, input_: str | None, output: Path | None, text_field: str,
                num_beams: int | None, max_new_tokens: int | None, length_penalty: float | None,
                no_repeat_ngram_size: int | None, sample: bool, temperature: float | None, top_p: float | None,
                seed: int | None, shots: int | None, overwrite: bool) -> None:
        from lmforge.inference.pipelines import GenerationPipeline, Seq2SeqPipeline
        from lmforge.stages import resolve_task
        from lmforge.tasks import registry
        from lmforge.tasks.seq2seq import few_shot, task_settings

        items = _inputs(task, texts, input_, text_field, output, overwrite)
        found, model_dir, info = resolve_task(run)
        if found.pipeline not in (Seq2SeqPipeline.kind, GenerationPipeline.kind):
            raise LmforgeError(f"'{run}' is a {found.name} model, which cannot {task}",
                               fix=f"give a run of `lmforge finetune {task}`, a seq2seq model folder or a causal LM "
                                   "(e.g. smollm2)")
        # a causal LM that is no translate/summarize run answers asked the task's own instruction, or a base model
        # (no chat template) few-shot, shown the task's training pairs nearest each text
        settings = task_settings(registry.get(task).config, info, task)
        zero_shot = found.pipeline == GenerationPipeline.kind
        causal = zero_shot or info.get("family") == "decoder"
        examples = few_shot(settings, registry.get(task).default_data) if causal else None
        pipeline = Seq2SeqPipeline(model_dir, name=Path(run).name, info=info, task=found.name,
                                   instruction=settings.instruction if zero_shot else None, few_shot=examples)
        if seed is not None:
            import torch

            torch.manual_seed(seed)
        results = pipeline.predict(items, shots=shots, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                   length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                                   do_sample=True if sample else None, temperature=temperature, top_p=top_p)
        _write_results([{"input": t, "output": r["text"]} for t, r in zip(items, results)], output)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {}
    command.__doc__ = f"{doing}: one JSON object per input (input, output) on stdout or in --output."
    return command


app.command("translate")(_seq2seq_command("translate", "Translate texts with a translation run"))
app.command("summarize")(_seq2seq_command("summarize", "Summarize texts with a summarization run"))


def _serve_command() -> Callable:
    """``lmforge serve``: one option per server setting (ServeSettings; each also reads ``LMFORGE_<NAME>`` from the
    environment, e.g. LMFORGE_API_KEY), plus the runs to serve."""
    from lmforge.serve.settings import ServeSettings

    keys = tuple(ServeSettings.model_fields)
    params = [inspect.Parameter("runs", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        list[str] | None, typer.Argument(help="run dirs or model folders to serve (RUN or name=RUN)",
                                         metavar="RUN...")])]
    params += [_parameter(k, ServeSettings.model_fields[k]) for k in keys]

    def command(**values: Any) -> None:
        from lmforge.serve.run import serve as run_server

        given = {k: values[k] for k in keys if values[k] is not None and values[k] is not False and values[k] != []}
        settings = _serve_settings(given)
        if not values["runs"] and settings.kb is None:
            raise LmforgeError("nothing to serve", fix="give run dirs or models, e.g. lmforge serve runs/sentiment "
                               "smollm2 (and/or --kb KB)")
        if settings.kb is not None:
            from lmforge.kb.location import read_meta

            read_meta(settings.kb, settings.kb_store)  # a clear error before the port opens, not a server that never gets ready
        specs = check_servable(values["runs"] or [])
        check_port_free(settings.host, settings.port)
        run_server(specs, settings, on_started=lambda url: typer.echo(
            f"lmforge is serving {len(specs)} model(s){' and a knowledge base' if settings.kb else ''} at {url}  (web UI: {url}/, API docs: {url}/docs); "
            "Ctrl+C stops it"))

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {}
    command.__doc__ = "Serve runs as a REST API (task routes + OpenAI-compatible) with a web UI at /."
    return command


def _serve_settings(given: dict):
    from pydantic import ValidationError

    from lmforge.serve.settings import ServeSettings

    try:
        return ServeSettings(**given)
    except ValidationError as exc:
        problems = [f"{flag_name(str(e['loc'][0]), ServeSettings.model_fields.get(str(e['loc'][0])))}: {e['msg']}"
                    for e in exc.errors()]
        raise LmforgeError("invalid server settings", problems=problems, fix="see lmforge serve --help") from None


app.command("serve")(_serve_command())


def check_servable(runs: list[str]) -> list[str]:
    """Every run loads as some task the server answers: checked before the port is opened."""
    from lmforge.serve.registry import parse_model_specs
    from lmforge.stages import resolve_task

    for _, path in parse_model_specs(runs):
        task, _, _ = resolve_task(path)
        if not task.routes:
            servable = [t.name for t in registry.tasks() if t.routes]
            raise LmforgeError(f"run '{path}' is a {task.name} run, which no route serves",
                               fix=f"serve runs of these tasks: {', '.join(servable)}")
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


def free_port(host: str, port: int) -> int:
    """``port`` if it is free, else the next free one above it (0: let the system choose)."""
    import socket

    for candidate in range(port, port + 50):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, candidate))
                return candidate
            except OSError:
                continue
    return 0


@app.command()
def quickstart(
    from_scratch: Annotated[bool, typer.Option("--from-scratch", help="train a tokenizer and pretrain a tiny BERT first")] = False,
    no_serve: Annotated[bool, typer.Option("--no-serve", help="stop after the report")] = False,
    out: Annotated[Path | None, typer.Option("--out", metavar="PATH", help="run dir (default: runs/quickstart-<time>)")] = None,
    max_time: Annotated[str | None, typer.Option("--max-time", metavar="TIME", help="budget of the fine-tuning stage, evaluations included (default: 3m on CPU)")] = None,
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="N", help="port (the next free one is used if taken)")] = 8000,
) -> None:
    """The main job: fine-tune the embedded encoder on movie reviews, evaluate, report, and serve it with the embedded
    smollm2 chat model (API + web UI)."""
    from lmforge.config import parse_duration
    from lmforge.quickstart import quickstart as run_quickstart

    try:
        budget = parse_duration(max_time) if max_time else None
    except ValueError as exc:
        raise LmforgeError(str(exc), where="--max-time") from None
    report = run_quickstart(from_scratch=from_scratch, out=out, max_time=budget, show_progress=_state["progress"],
                            echo=typer.echo)
    if no_serve:
        return
    from lmforge.models import resolve_model_path
    from lmforge.serve.run import serve as run_server
    from lmforge.serve.settings import ServeSettings

    served = [f"sentiment={report['run']}"]
    try:  # the embedded instruction-tuned decoder answers the chat page (converted once, on first use)
        typer.echo("preparing smollm2 for the chat page (the first time converts it: about a minute)")
        resolve_model_path("smollm2")
        served.append("smollm2")
    except LmforgeError as exc:
        log.warning("serving without a chat model: %s", exc)
    run_server(served, ServeSettings(host=host, port=free_port(host, port)),
               on_started=lambda url: typer.echo(f"serving at {url}  (web UI: {url}/, API docs: {url}/docs); "
                                                 "Ctrl+C stops it"))


# ------------------------------------------------------------------------------------- output helpers
def _print_summary(summary: dict) -> None:
    from lmforge import dist

    if not dist.is_main():
        return
    parts = [f"run: {summary['run']}", f"steps: {summary['steps']}", f"epochs: {summary['epochs']}",
             f"time: {summary['elapsed_s']}s", f"stopped by: {summary['stopped_by']}"]
    typer.echo("  ".join(parts))
    timing = summary.get("timing") or {}
    if timing:
        typer.echo("time spent: " + ", ".join(f"{k} {v}s" for k, v in timing.items()))
    if summary.get("last_eval"):
        typer.echo("last eval: " + "  ".join(f"{k} {v:.4f}" for k, v in summary["last_eval"].items()))
    best = summary.get("best") or {}
    if best.get("value") is not None:
        typer.echo(f"kept model/: best {best['metric']} {best['value']:.4f} at step {best['step']}")
    for warning in summary.get("warnings") or []:
        typer.echo(f"warning: {warning}")


def _print_eval(result: dict) -> None:
    from rich.console import Console

    console = Console()
    if result.get("task") == "kb":
        _print_kb_eval(console, result)
        return
    task = registry.get(result.get("task"))
    if task.report is not None:
        for renderable in task.report(result):
            console.print(renderable)
    else:
        shown = {k: v for k, v in result.items() if not isinstance(v, (list, dict)) and v is not None}
        console.print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()),
                      markup=False)
    if (Path(result["run"]) / "lmforge.yaml").exists():
        console.print(f"written: {Path(result['run']) / 'eval.json'}", markup=False)


def _print_kb_eval(console, result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{result['run']} on {result['data']}: {result['n']} questions, each one's answer among "
                        f"{result['passages']:,} passages")
    metrics = list(next(iter(result["modes"].values())))
    for column in ("mode", *metrics):
        table.add_column(column, justify="right")
    for mode, values in result["modes"].items():
        table.add_row(mode, *(f"{values[m]:.1f}" if m.endswith("_ms") else f"{values[m]:.3f}" for m in metrics))
    console.print(table)
    console.print(f"written: {Path(result['run']) / 'eval.json'}", markup=False)


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
    from rich.console import Console
    from rich.logging import RichHandler

    logger = logging.getLogger("lmforge")
    logger.handlers.clear()
    handler = RichHandler(show_time=False, show_path=False, markup=False, rich_tracebacks=False,
                          console=Console(stderr=True))
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def report_error(exc: BaseException) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False).print("[bold red]error:[/] " + escape(str(exc)), soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    import time

    _state["started"] = time.monotonic()
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
