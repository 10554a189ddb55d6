"""Code generation: fine-tuning a causal LM on Python functions (signature, docstring, body). A model with a chat
template (an instruction-tuned one, e.g. smollm2) learns to answer a request for a function, given its signature and
docstring, with the function; any other continues the functions' packed source.

Evaluation (``lmforge evaluate`` on a code run, or any model with ``--task code``) prompts with each held-out
function's signature and docstring (as a request to a chat model), generates greedily and takes the body, then reports the share of functions that parse with a body (``ast.parse``; a docstring
alone does not count), chrF against the reference body (sacrebleu), and pass@1 on the functions whose doctests the
reference itself passes, each run in a sandboxed subprocess (see :mod:`lmforge.evaluation.sandbox`).
"""

from __future__ import annotations

import ast
import logging

import numpy as np
from pydantic import Field

from lmforge.config import DecoderFinetuneConfig
from lmforge.data.conversations import CodeRows, load_code
from lmforge.errors import DataError
from lmforge.rundir import RunDir
from lmforge.tasks.common import bundled_dev_split, data_info, training_stage
from lmforge.tasks.lm import eos_id, fixed_windows, lm_objective, load_decoder, packed_lm_task, score_lm
from lmforge.tasks.registry import EvalOptions, Task, register

log = logging.getLogger("lmforge")


class FinetuneCodeConfig(DecoderFinetuneConfig):
    data: str = Field("code", description="Python functions: rows with a 'code' field (docstring -> function)")
    eval: str | None = Field(
        None, description="dev rows (default: the bundled dev split, else a held-out share of the training data)"
    )
    code_field: str = Field("code", description="field holding the function source")
    seq_len: int = Field(256, ge=16, description="tokens per packed training sequence")
    dev_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of rows held out when no dev data")

# a function ends where a line starts at column 0; these cover what usually follows one
STOP = ["\ndef ", "\nclass ", "\n@", "\nif __name__", "\n#", "\nimport ", "\nfrom ", "\nasync def "]


def code_stream(tokenizer, rows: list[dict], field: str) -> np.ndarray:
    eos = [tokenizer.eos_token_id]
    encoded = tokenizer([r[field] for r in rows], add_special_tokens=False)["input_ids"]
    return np.concatenate([np.asarray(ids + eos, dtype=np.int64) for ids in encoded])


def split_prompt(code: str) -> tuple[str, str] | None:
    """``(signature + docstring, body)`` of a function's source, or None when it has no docstring to prompt with."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    if not tree.body or not isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    func = tree.body[0]
    first = func.body[0] if func.body else None
    if not (isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)
            and isinstance(first.value.value, str)) or len(func.body) < 2:
        return None
    lines = code.splitlines(keepends=True)
    prompt = "".join(lines[: first.end_lineno])
    if not prompt.endswith("\n"):
        prompt += "\n"
    return prompt, "".join(lines[first.end_lineno :])


def defines_body(prompt: str, body: str) -> bool:
    """The completed function parses and has at least one statement after its docstring (a completion of blank
    lines leaves a docstring-only function, which parses but writes no code)."""
    try:
        tree = ast.parse(prompt + body)
    except SyntaxError:
        return False
    func = tree.body[0] if tree.body else None
    return isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)) and len(func.body) >= 2


def _indent(prompt: str) -> str:
    """The indentation of the function's body: its docstring's last line's."""
    last = prompt.rstrip("\n").splitlines()[-1]
    return last[: len(last) - len(last.lstrip())]


def cut_function(completion: str) -> str:
    """Keep the body: stop at the first non-empty line that starts at column 0."""
    out = []
    for line in completion.splitlines(keepends=True):
        if line.strip() and not line[0].isspace():
            break
        out.append(line)
    return "".join(out).rstrip() + "\n"


CHAT_INSTRUCTION = "Complete this Python function. Reply with the whole function in a ```python code block."


def body_from_reply(reply: str, name: str, indent: str) -> str:
    """The body (after the docstring) of function ``name`` in a chat reply, indented by ``indent``: the code block's
    function, cut back to its last complete line when generation stopped inside it. Empty when there is none."""
    import re
    import textwrap

    block = re.search(r"```(?:python|py)?\n(.*?)(?:```|$)", reply, re.DOTALL)
    lines = (block.group(1) if block else reply).splitlines()
    for end in range(len(lines), 0, -1):  # the longest prefix that parses
        try:
            tree = ast.parse("\n".join(lines[:end]))
        except SyntaxError:
            continue
        func = next((n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                     and n.name == name), None)
        if func is None:
            return ""
        first = func.body[0]
        has_doc = isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)
        statements = func.body[1:] if has_doc else func.body
        if not statements:
            return ""
        body = textwrap.dedent("\n".join(lines[statements[0].lineno - 1 : func.end_lineno]))
        return textwrap.indent(body, indent).rstrip() + "\n"
    return ""


def ask_for(prompt: str) -> list[dict]:
    """The chat turn that asks a chat model for the function whose signature and docstring are ``prompt``."""
    return [{"role": "user", "content": f"{CHAT_INSTRUCTION}\n\n```python\n{prompt}```"}]


def as_conversation(code: str) -> list[dict] | None:
    """A function as a chat exchange: asked for by its signature and docstring, answered with the whole function."""
    pair = split_prompt(code)
    if pair is None:
        return None
    return [*ask_for(pair[0]), {"role": "assistant", "content": f"```python\n{code.rstrip()}\n```"}]


def _chat_task(rows: list[dict], dev_rows: list[dict], config: FinetuneCodeConfig, decoder):
    """For a model with a chat template: each function a conversation, the loss on the answer only."""
    from lmforge.data.chat_format import ChatBatches, conversation_batches, encode_conversation
    from lmforge.training.loop import TaskSpec

    tokenizer, field, max_length = decoder.tokenizer, config.code_field, 2 * config.seq_len  # docstring twice
    encode = lambda items: [encode_conversation(tokenizer, c, max_length)
                            for c in (as_conversation(r[field]) for r in items) if c is not None]
    train, dev = encode(rows), encode(dev_rows)
    if not train:
        raise DataError(f"{config.data} has no function with a docstring and a body to learn from",
                        fix="check the code field")
    pad_id = tokenizer.pad_token_id
    max_tokens = config.train.batch_size * config.seq_len  # what a packed batch holds: long functions come fewer at once
    dev_batches = conversation_batches(dev, config.train.batch_size, pad_id, max_tokens)
    return TaskSpec(
        name="finetune code", model=lm_objective(decoder.model),
        train_data=ChatBatches(train, config.train.batch_size, config.train.seed, pad_id, max_tokens),
        save_model=decoder.save, evaluate=(lambda wrapper: score_lm(wrapper.model, dev_batches)) if dev else None,
        best_metric="loss" if dev else None, greater_is_better=False,
        count_tokens=lambda b: int(b["attention_mask"].sum()), eval_size=len(dev),
    ), sum(len(ids) for ids, _ in train)


def prepare_code(config: FinetuneCodeConfig):
    """A model with a chat template (e.g. smollm2) learns to answer a request for a function with it (the format
    its evaluation asks in); any other continues the packed source of the functions."""
    from lmforge.models import load_tokenizer, resolve_model_path
    from lmforge.training.loop import seed_everything

    resolve_model_path(config.model)
    data = load_code(config.data, config.code_field)
    eval_spec = bundled_dev_split(config.data, config.eval)
    if eval_spec:
        train_rows, dev = data.rows, load_code(eval_spec, config.code_field)
        dev_rows, dev_name, dev_files = dev.rows, dev.spec, dev.files
    else:
        order = np.random.default_rng(config.train.seed).permutation(len(data.rows))
        cut = max(1, round(config.dev_fraction * len(order)))
        dev_rows = [data.rows[i] for i in sorted(order[:cut])]
        train_rows = [data.rows[i] for i in sorted(order[cut:])]
        dev_name, dev_files = f"{config.data} (held-out {config.dev_fraction:.0%})", data.files
    tokenizer = load_tokenizer(config.model)
    chat = bool(getattr(tokenizer, "chat_template", None))
    eos_id(tokenizer, "code fine-tuning separates functions with it")
    stream = None if chat else code_stream(tokenizer, train_rows, config.code_field)
    if stream is not None and len(stream) < (config.seq_len + 1) * config.train.batch_size:
        raise DataError(f"{config.data} holds {len(stream):,} tokens: too few for one batch of "
                        f"{config.train.batch_size} x {config.seq_len}", fix="lower --set seq_len or add code")
    run = RunDir.create(config.out, overwrite=config.overwrite, resume=config.resume)
    seed_everything(config.train.seed)
    decoder = load_decoder(config, tokenizer)
    if chat:
        spec, tokens = _chat_task(train_rows, dev_rows, config, decoder)
    else:
        dev_batches = fixed_windows(code_stream(tokenizer, dev_rows, config.code_field), config.seq_len, 256,
                                    config.train.batch_size)
        spec, tokens = packed_lm_task(
            "finetune code", decoder.model, tokenizer, stream, config.seq_len, config.train.batch_size,
            config.train.seed, dev_batches, best_metric="loss" if dev_batches else None, greater_is_better=False,
            save_model=decoder.save), len(stream)
    run.write_info(
        stage="finetune", task="code", config=config,
        extra={"format": "chat: asked for the function, answered with it" if chat else "packed source",
               "data": {"train": data_info(config.data, data.files, functions=len(train_rows), tokens=tokens),
                        "dev": data_info(dev_name, dev_files, functions=len(dev_rows))}},
    )
    return spec, run, {}


finetune_code = training_stage(prepare_code, "Fine-tune a causal LM on Python functions; returns the run summary.")


def evaluate_code(run: RunDir, info: dict, options: EvalOptions, *, max_new_tokens: int = 128,
                  timeout: float = 5.0) -> dict:
    """Generate each held-out function's body from its signature and docstring; parse rate, chrF, pass@1."""
    import sacrebleu

    from lmforge.evaluation.sandbox import run_doctests
    from lmforge.inference.generation import SamplingParams
    from lmforge.inference.pipelines import GenerationPipeline

    config = info.get("config") or {}
    field = config.get("code_field", "code")
    spec = options.data or "code:test"
    rows: CodeRows = load_code(spec, field)
    pipeline = GenerationPipeline(run.model_dir, info=info)
    items = [(r, split_prompt(r[field])) for r in rows.rows]
    items = [(r, pair) for r, pair in items if pair is not None][: options.limit or None]
    if not items:
        raise DataError(f"{spec} has no functions with a docstring to prompt with", fix="check the code field")
    # a model with a chat template (smollm2 zero-shot, or a code run trained from one) is asked for the function;
    # any other continues the prompt, as its code run trained it to
    chat = pipeline.has_chat_template
    params = SamplingParams(max_new_tokens=max_new_tokens * (2 if chat else 1), temperature=0.0,
                            stop=[] if chat else STOP)
    completions = []
    for start in range(0, len(items), 8):
        chunk = items[start : start + 8]
        if not chat:
            outs = pipeline.generator.generate([pair[0] for _, pair in chunk], params)
            completions += [cut_function(o.text) for o in outs]
            continue
        prompts = [pipeline.chat_prompt(ask_for(p)) for _, (p, _) in chunk]
        outs = pipeline.generator.generate(prompts, params)
        completions += [body_from_reply(o.text, r["name"].rpartition(".")[2], _indent(p))
                        for (r, (p, _)), o in zip(chunk, outs)]
    parses = [defines_body(prompt, body) for (_, (prompt, _)), body in zip(items, completions)]
    chrf = sacrebleu.corpus_chrf(completions, [[pair[1] for _, pair in items]]).score
    # pass@1: top-level functions with doctests that the reference itself passes in the sandbox
    doctested = [(i, r) for i, (r, _) in enumerate(items) if ">>>" in (r.get("docstring") or "")
                 and "." not in r.get("name", ".") and r.get("module")]
    checked = passed = 0
    for i, r in doctested:
        reference = run_doctests(r["module"], r["name"], r[field], r["docstring"], timeout=timeout)
        if not reference.passed:
            continue
        checked += 1
        prompt = items[i][1][0]  # a function left without a body passes nothing, even a doctest that prints nothing
        passed += parses[i] and run_doctests(r["module"], r["name"], prompt + completions[i], r["docstring"], timeout=timeout).passed
    tokenizer = pipeline.tokenizer
    stream = code_stream(tokenizer, [r for r, _ in items], field)
    lm = score_lm(pipeline.model, fixed_windows(stream, int(config.get("seq_len", 256)), 256, 8))
    examples = [{"name": r.get("name"), "prompt": pair[0], "completion": body}
                for (r, pair), body in list(zip(items, completions))[:5]]
    return {"data": spec, "n": len(items), "prompting": "chat" if chat else "continuation",
            "parse_rate": sum(parses) / len(parses), "chrf": chrf,
            "pass_at_1": passed / checked if checked else None, "doctest_functions": checked,
            "loss": lm["loss"], "perplexity": lm["perplexity"], "examples": examples}


TASK = register(Task(
    name="code", stage="finetune", config=FinetuneCodeConfig, train=finetune_code, evaluate=evaluate_code,
    summary="Continue training a causal LM on Python functions (docstring -> function) for code completion.",
    pipeline="text-generation", routes=("openai",), flags=("model", "data", "eval", "seq_len", "lora.enabled"),
    metrics=("pass_at_1", "parse_rate", "chrf", "perplexity", "loss", "n"),
))
