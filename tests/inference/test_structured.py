"""Structured output: a response_format's grammar holds against logits that fight it, EOS comes exactly when the
document is complete, padded vocabularies stay masked, and bad response_formats say what is wrong."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from lmforge.inference.structured import Constraint, ResponseFormatError, grammar_for

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "colour": {"enum": ["red", "green", "blue"]},
    },
    "required": ["name", "age", "colour"],
    "additionalProperties": False,
}
PADDING = 12  # models pad the embedding past the tokenizer's vocabulary


def schema_format(schema: dict, strict: bool = True) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": strict}}


@pytest.fixture(scope="module")
def tok(bpe_dir):
    return AutoTokenizer.from_pretrained(bpe_dir)


@pytest.fixture(scope="module")
def eos(tok) -> list[int]:
    """What the generator stops on: the tokenizer's EOS and the chat turn's end."""
    return sorted({tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")})


@pytest.fixture(scope="module")
def adversary(tok, eos) -> torch.Tensor:
    """A bias over a padded vocabulary for logits that would rather say anything but JSON: the padding ids most of
    all, then EOS (an empty answer), then a special token, with a quote or brace now and then."""
    vocab = len(tok)
    bias = torch.zeros(vocab + PADDING)
    bias[vocab:] += 100
    bias[eos] += 50
    bias[tok.convert_tokens_to_ids("<|im_start|>")] += 40
    bias[[i for i in range(vocab) if set(tok.decode([i])) & set('"}')]] += 2
    return bias


def greedy(constraint: Constraint, tok, eos: list[int], bias: torch.Tensor, seed: int,
           max_steps: int = 400) -> str:
    """mask -> argmax -> advance over random logits plus `bias` until the grammar is done or EOS is taken;
    checks, every step, that EOS is allowed exactly when the document so far is complete, that the argmax is an
    allowed token and that every other token is -inf. The text."""
    generator, ids = torch.Generator().manual_seed(seed), []
    padding = torch.zeros(PADDING, dtype=torch.bool)
    for _ in range(max_steps):
        if constraint.done:
            return tok.decode(ids)
        allowed = constraint.allowed()
        assert bool(allowed[eos].all()) == bool(allowed[eos].any()) == constraint.accepting
        logits = torch.randn(len(bias), generator=generator) + bias
        constraint.mask(logits)
        token = int(logits.argmax())
        assert bool(allowed[token]) and torch.equal(torch.isinf(logits), ~torch.cat([allowed, padding]))
        constraint.advance(token)
        assert constraint.error is None
        if token in eos:
            return tok.decode(ids)
        ids.append(token)
    pytest.fail(f"no end in {max_steps} tokens: {tok.decode(ids)!r}")


@pytest.mark.parametrize("seed", range(6))
def test_a_json_schema_holds_against_adversarial_logits(tok, eos, adversary, seed):
    """The schema bounds every string and number, so even a model set on a word ("Sure") must finish."""
    constraint = grammar_for(tok, schema_format(PERSON), eos).constraint()
    assert not constraint.allowed()[eos].any()  # an empty answer is not a document
    bias = adversary.clone()
    bias[tok("Sure", add_special_tokens=False)["input_ids"][0]] += 30
    text = greedy(constraint, tok, eos, bias, seed)
    person = json.loads(text)
    assert set(person) == {"name", "age", "colour"}
    assert isinstance(person["name"], str) and len(person["name"]) <= 12
    assert type(person["age"]) is int and 0 <= person["age"] <= 120
    assert person["colour"] in {"red", "green", "blue"}


@pytest.mark.parametrize("seed", range(6))
def test_json_object_gives_an_object(tok, eos, adversary, seed):
    """Any object: its strings are unbounded (a model set on a word fills one until max_tokens), so the adversary
    here pushes EOS, a special token and the padding, and random text otherwise."""
    text = greedy(grammar_for(tok, {"type": "json_object"}, eos).constraint(), tok, eos, adversary, seed)
    assert isinstance(json.loads(text), dict)


def test_the_grammar_is_done_when_the_document_closes_and_eos_alone_may_follow(tok, eos):
    constraint = grammar_for(tok, {"type": "json_object"}, eos).constraint()
    for token in tok('{"a": [1, 2]}', add_special_tokens=False)["input_ids"]:
        assert not constraint.done
        constraint.advance(token)
    assert constraint.done and constraint.accepting and constraint.error is None
    assert constraint.allowed().nonzero().flatten().tolist() == eos
    constraint.advance(eos[0])
    assert constraint.done and constraint.error is None


def test_a_token_the_mask_forbade_ends_the_row_with_an_error(tok, eos):
    constraint = grammar_for(tok, {"type": "json_object"}, eos).constraint()
    constraint.advance(tok("Sure", add_special_tokens=False)["input_ids"][0])
    assert constraint.done and constraint.error
    assert constraint.allowed().nonzero().flatten().tolist() == eos  # all it may do now is stop


def test_the_torch_path_masks_like_the_numpy_one(tok, eos):
    """bfloat16 (or GPU) logits take the torch path; float32 CPU logits the numpy one: same tokens masked."""
    constraint = grammar_for(tok, schema_format(PERSON), eos).constraint()
    constraint.advance(tok("{", add_special_tokens=False)["input_ids"][0])
    logits = torch.randn(len(tok) + PADDING, generator=torch.Generator().manual_seed(0))
    half = logits.to(torch.bfloat16)
    constraint.mask(logits)
    constraint.mask(half)
    assert torch.equal(torch.isinf(logits), torch.isinf(half)) and 0 < int((~torch.isinf(logits)).sum()) < 20
    assert torch.equal(half[~torch.isinf(half)], logits[~torch.isinf(logits)].to(torch.bfloat16))


def test_the_llguidance_tokenizer_is_built_once_per_tokenizer(tok, eos):
    first = grammar_for(tok, {"type": "json_object"}, eos)
    assert grammar_for(tok, schema_format(PERSON), eos).ll_tokenizer is first.ll_tokenizer


def test_plain_text_has_no_grammar(tok):
    assert grammar_for(tok, None) is None and grammar_for(tok, {"type": "text"}) is None


@pytest.mark.parametrize(("response_format", "says"), [
    (schema_format({"type": "objekt"}), "Invalid type: objekt"),
    (schema_format({"type": "string", "pattern": "(("}), "unclosed group"),
    (schema_format({"$ref": "#/definitions/missing"}), "/definitions/missing"),
    (schema_format({"type": "string", "format": "postcode"}), "Unknown format: postcode"),  # strict: no guesses
    ({"type": "json_schema"}, "response_format.json_schema must be an object with a 'name'"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}, "must be a JSON Schema object"),
    ({"type": "xml"}, "response_format.type must be"),
])
def test_a_bad_response_format_raises_value_error_naming_it(tok, response_format, says):
    with pytest.raises(ValueError, match="response_format") as err:
        grammar_for(tok, response_format)
    assert isinstance(err.value, ResponseFormatError) and says in str(err.value)


def test_a_non_strict_schema_ignores_keywords_it_cannot_enforce(tok, eos):
    grammar = grammar_for(tok, schema_format({"type": "string", "format": "postcode"}, strict=False), eos)
    constraint = grammar.constraint()
    for token in tok('"N1 9GU"', add_special_tokens=False)["input_ids"]:
        constraint.advance(token)
    assert constraint.accepting and constraint.error is None


@pytest.mark.slow
def test_smollm2_answers_a_schema_it_was_not_shown_in_valid_json():
    """The real model and its 49k-token vocabulary, greedy: the prompt does not give the schema, the grammar alone
    holds the answer to it."""
    from transformers import AutoModelForCausalLM

    from lmforge.models import resolve_model_path

    folder = resolve_model_path("smollm2")
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
    eos = sorted({tok.eos_token_id, *([model.generation_config.eos_token_id] if isinstance(
        model.generation_config.eos_token_id, int) else model.generation_config.eos_token_id or [])})
    constraint = grammar_for(tok, schema_format(PERSON), eos).constraint()
    prompt = tok.apply_chat_template([{"role": "user", "content": "Describe Elinor Dashwood, aged 19, briefly."}],
                                     add_generation_prompt=True, return_dict=True, return_tensors="pt")
    ids, out = prompt["input_ids"][0].tolist(), []
    with torch.no_grad():  # no KV cache: short, and free of the cache argument's renaming across transformers 5.x
        for _ in range(80):
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1].float()
            constraint.mask(logits)
            token = int(logits.argmax())
            constraint.advance(token)
            if token in eos:
                break
            out.append(token)
            if constraint.done:
                break
    person = json.loads(tok.decode(out))
    assert set(person) == {"name", "age", "colour"} and type(person["age"]) is int and constraint.error is None
    assert person["colour"] in {"red", "green", "blue"} and 0 <= person["age"] <= 120
