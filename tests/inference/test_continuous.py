"""Continuous batching: sequences joining and leaving a running batch decode exactly as they would alone."""

from __future__ import annotations

import threading

import pytest

from lmforge.inference.continuous import ContinuousScheduler, Sequence
from lmforge.inference.generation import SamplingParams, TextGenerator

PROMPTS = ["It is a truth universally acknowledged", "Mrs. Dashwood",
           ("The family of Dashwood had long been settled in Sussex. Their estate was large, and their residence was "
           "at Norland Park, in the centre of their property, where, for many generations, they had lived"),
           "Elinor", "Marianne was sensible and clever; but eager in everything", "Edward"]


class Collector:
    """Deltas of several sequences, by their index, until each has finished."""

    def __init__(self, count: int) -> None:
        self.texts, self.reasons, self.deltas = [""] * count, [None] * count, [[] for _ in range(count)]
        self.left, self.done = count, threading.Event()
        self.hooks: dict[int, callable] = {}  # index -> called once at its first delta

    def emit(self, delta) -> None:
        assert not isinstance(delta, BaseException), delta
        i = delta.index
        assert self.reasons[i] is None, "a delta after the sequence finished"
        self.deltas[i].append(delta)
        self.texts[i] += delta.text
        if i in self.hooks:
            self.hooks.pop(i)()
        if delta.finish_reason:
            self.reasons[i] = delta.finish_reason
            self.left -= 1
            if not self.left:
                self.done.set()


def sequences(collector: Collector, prompts, gen: TextGenerator, params: list[SamplingParams]) -> list[Sequence]:
    return [Sequence(gen.encode(p), params[i], collector.emit, index=i) for i, p in enumerate(prompts)]


@pytest.mark.parametrize("fixture", ["model_and_tok", "tiny_llama", "tiny_gemma3"])
def test_greedy_sequences_joining_a_running_batch_match_each_alone(fixture, request):
    model, tok = request.getfixturevalue(fixture)
    gen = TextGenerator(model, tok, precision="float32")
    limits = [20, 7, 16, 20, 3, 12]  # rows leave at different steps and the waiting ones take them
    params = [SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True) for n in limits]
    alone = [gen.generate([p], params[i])[0].text for i, p in enumerate(PROMPTS)]
    # 3 rows for 6 sequences; prompts read in chunks of 16 tokens (the long one takes 3 chunks between decode steps)
    scheduler = ContinuousScheduler(gen, rows=3, chunk=16)
    out = Collector(len(PROMPTS))
    seqs = sequences(out, PROMPTS, gen, params)
    out.hooks[0] = lambda: scheduler.submit(seqs[3:])  # these arrive while the first three are decoding
    scheduler.submit(seqs[:3])
    assert out.done.wait(120)
    scheduler.close()
    assert out.texts == alone
    assert out.reasons == ["length"] * len(PROMPTS)
    for i, deltas in enumerate(out.deltas):
        assert [d.finish_reason for d in deltas].count("length") == 1 and deltas[-1].completion_tokens == limits[i]
        assert deltas[-1].prompt_tokens == len(gen.encode(PROMPTS[i]))


def test_seeded_sampling_is_the_same_alone_or_beside_other_sampling(tiny_llama):
    gen = TextGenerator(*tiny_llama, precision="float32")
    seeded = SamplingParams(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=11, ignore_eos=True)
    others = [SamplingParams(max_new_tokens=16, temperature=1.3, top_k=5, ignore_eos=True),
              SamplingParams(max_new_tokens=16, temperature=0, repetition_penalty=1.3, ignore_eos=True)]

    def run(prompts, params):
        scheduler = ContinuousScheduler(gen, rows=4, chunk=64)
        out = Collector(len(prompts))
        scheduler.submit(sequences(out, prompts, gen, params))
        assert out.done.wait(60)
        scheduler.close()
        return out.texts

    alone = run(PROMPTS[:1], [seeded])[0]
    together = run([PROMPTS[1], PROMPTS[0], PROMPTS[2]], [others[0], seeded, others[1]])
    assert together[1] == alone
    assert alone == gen.generate([PROMPTS[0]], seeded)[0].text  # the same draws as the unbatched path
    assert run(PROMPTS[:1], [SamplingParams(**{**seeded.__dict__, "seed": 12})])[0] != alone
    # the penalized greedy row is what it is alone too
    assert together[2] == gen.generate([PROMPTS[2]], others[1])[0].text


def test_a_cancelled_or_stopped_sequence_frees_its_row_for_the_next(tiny_llama):
    gen = TextGenerator(*tiny_llama, precision="float32")
    free_text = gen.generate([PROMPTS[0]], SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True))[0].text
    stop = free_text[5:9]
    cancel = threading.Event()
    scheduler = ContinuousScheduler(gen, rows=1, chunk=64)  # one row: each waits for the one before to leave
    out = Collector(3)
    params = SamplingParams(max_new_tokens=30, temperature=0, ignore_eos=True)
    seqs = [Sequence(gen.encode(PROMPTS[0]), params, out.emit, cancel=cancel, index=0),
            Sequence(gen.encode(PROMPTS[0]), SamplingParams(**{**params.__dict__, "stop": [stop]}), out.emit, index=1),
            Sequence(gen.encode(PROMPTS[1]), SamplingParams(**{**params.__dict__, "max_new_tokens": 4}), out.emit,
                     index=2)]
    out.hooks[0] = cancel.set  # its client goes away after the first piece
    scheduler.submit(seqs)
    assert out.done.wait(60)
    scheduler.close()
    assert out.reasons == ["cancelled", "stop", "length"]
    assert len(out.texts[0]) < len(free_text)
    assert out.texts[1] == free_text[: free_text.index(stop)] and stop not in out.texts[1]
    assert out.deltas[2][-1].completion_tokens == 4


def test_logprobs_are_the_models_own(tiny_llama):
    import torch

    model, tok = tiny_llama
    gen = TextGenerator(model, tok, precision="float32")
    scheduler = ContinuousScheduler(gen, rows=2)
    out = Collector(1)
    ids = gen.encode(PROMPTS[0])
    scheduler.submit([Sequence(ids, SamplingParams(max_new_tokens=3, temperature=0, ignore_eos=True), out.emit,
                               logprobs=2)])
    assert out.done.wait(60)
    scheduler.close()
    records = [r for d in out.deltas[0] for r in (d.logprobs or [])]
    assert len(records) == 3
    with torch.no_grad():
        first = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)
    assert records[0].logprob == pytest.approx(float(first.max()), abs=1e-4)  # greedy: the likeliest token
    assert records[0].top[0][1] == pytest.approx(records[0].logprob, abs=1e-6) and len(records[0].top) == 2
    assert records[0].top[1][1] <= records[0].top[0][1]
    assert "".join(r.token for r in records) == out.texts[0]
