"""Translation and summarization fine-tuning on a tiny encoder-decoder built in code: overfit a few pairs and give
them back exactly, plain transformers loads the run and answers the same, metrics against the baselines."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import BUNDLED, read_jsonl_gz, write_jsonl


@pytest.fixture(scope="module")
def verses(tmp_path_factory):
    rows = [r for r in read_jsonl_gz(BUNDLED / "translation" / "bible_en_es.dev.jsonl.gz") if len(r["es"]) < 60][:4]
    return write_jsonl(tmp_path_factory.mktemp("verses") / "four.jsonl", rows * 8), rows


def test_translation_overfits_and_plain_transformers_translates_the_same(cli, tiny_t5_dir, verses, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    import lmforge

    data, rows = verses
    out = tmp_path / "mt"
    result = cli("finetune", "translate", "--model", tiny_t5_dir, "--data", data, "--eval", data, "--out", out,
                 "--max-steps", "300", "--lr", "3e-3", "--batch-size", "8", "--num-beams", "2",
                 "--set", "train.warmup=0", "--set", "train.threads=1")
    assert result.code == 0, result.text
    translated = [r["text"] for r in lmforge.load(out).predict([r["en"] for r in rows])]
    assert translated == [r["es"] for r in rows]
    tok = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForSeq2SeqLM.from_pretrained(out / "model").eval()
    with torch.no_grad():
        ids = model.generate(**tok([rows[0]["en"]], return_tensors="pt"), num_beams=2, max_new_tokens=128)
    assert tok.decode(ids[0], skip_special_tokens=True).strip() == rows[0]["es"]
    scored = json.loads(cli("evaluate", out, "--data", data, "--json").out)
    assert scored["bleu"] == pytest.approx(100) and scored["baseline"]["bleu"] < 10
    assert scored["bleu_signature"].startswith("nrefs:1") and scored["examples"][0]["output"] == rows[0]["es"]
    # each evaluation during training also translated the dev pairs: the run's metrics are its learning curve
    curve = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert len(curve) >= 2 and curve[0]["eval"]["bleu"] < 50 and curve[-1]["eval"]["bleu"] == pytest.approx(100)
    assert curve[-1]["elapsed_s"] > curve[0]["elapsed_s"] and curve[-1]["eval"]["chrf"] == pytest.approx(100)


def test_the_direction_turns_around_with_source_and_target(cli, tiny_t5_dir, verses, tmp_path):
    data, _ = verses
    out = tmp_path / "es-en"
    result = cli("finetune", "translate", "--model", tiny_t5_dir, "--data", data, "--source", "es", "--target", "en",
                 "--out", out, "--max-steps", "1")
    assert result.code == 0, result.text
    info = (out / "lmforge.yaml").read_text()
    assert "source_field: es" in info and "target_field: en" in info


def test_summaries_score_against_lead_1(cli, tiny_t5_dir, tmp_path):
    rows = read_jsonl_gz(BUNDLED / "summarization" / "debian_descriptions.dev.jsonl.gz", 6)
    data = write_jsonl(tmp_path / "six.jsonl", rows)
    out = tmp_path / "sum"
    result = cli("finetune", "summarize", "--model", tiny_t5_dir, "--data", data, "--eval", data, "--out", out,
                 "--max-steps", "2", "--num-beams", "1")
    assert result.code == 0, result.text
    scored = json.loads(cli("evaluate", out, "--data", data, "--json").out)
    assert {"rouge1", "rouge2", "rougeL", "rougeLsum"} <= set(scored) and scored["n"] == 6
    assert scored["baseline"]["name"] == "lead-1" and scored["baseline"]["rougeLsum"] > 0


def test_a_causal_lm_learns_translation_as_an_exchange_and_transformers_answers_the_same(cli, gpt_run, verses,
                                                                                          tmp_path):
    """A CLM run is asked the instruction and the verse as a chat exchange (ChatML: it has no template of its own)
    and learns to answer with the translation; the saved folder's own chat template reproduces the prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lmforge

    data, rows = verses
    out = tmp_path / "mt-gpt"
    result = cli("finetune", "translate", "--model", gpt_run, "--data", data, "--eval", data, "--out", out,
                 "--max-steps", "300", "--lr", "3e-3", "--batch-size", "8", "--num-beams", "1",
                 "--set", "train.warmup=0", "--set", "train.threads=1")
    assert result.code == 0, result.text
    pipeline = lmforge.load(out)
    assert pipeline.causal and "Spanish" in pipeline.instruction
    assert [r["text"] for r in pipeline.predict([r["en"] for r in rows])] == [r["es"] for r in rows]
    # sampling from the single likeliest token is greedy decoding: the sampling options reach generate
    assert pipeline.predict(rows[0]["en"], do_sample=True, top_k=1)[0]["text"] == rows[0]["es"]
    tok = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    prompt = tok.apply_chat_template([{"role": "user", "content": f"{pipeline.instruction}\n\n{rows[0]['en']}"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        ids = model.generate(**prompt, max_new_tokens=64, do_sample=False)
    assert tok.decode(ids[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True).strip() == rows[0]["es"]
    scored = json.loads(cli("evaluate", out, "--data", data, "--json").out)
    assert scored["bleu"] == pytest.approx(100)
    # the CLM run it started from translates zero-shot too, asked the task's instruction (it has not learned to)
    zero_shot = cli("translate", gpt_run, rows[0]["en"], "--num-beams", "1", "--max-new-tokens", "3")
    assert zero_shot.code == 0, zero_shot.text
    assert json.loads(zero_shot.out)["output"] != rows[0]["es"]


def test_a_causal_lm_takes_its_32_pairs_a_step_in_micro_batches_of_8_unless_told(cli, gpt_run, verses, tmp_path):
    """A causal LM reads prompt and answer as one long sequence: 32 in one micro-batch took 19 GB for smollm2."""
    import yaml

    data = write_jsonl(tmp_path / "verses.jsonl", verses[1] * 32)  # 96 pairs or more
    for flags, expected in (((), (8, 4)), (("--batch-size", "16"), (16, 1))):
        out = tmp_path / f"mb{len(flags)}"
        result = cli("finetune", "summarize", "--model", gpt_run, "--data", data, "--eval", data, "--out", out,
                     "--max-steps", "1", "--source-field", "en", "--target-field", "es", *flags)
        assert result.code == 0, result.text
        train = yaml.safe_load((out / "lmforge.yaml").read_text())["config"]["train"]
        assert (train["batch_size"], train["grad_accum"]) == expected, result.text


def test_bert2bert_warm_starts_from_an_encoder(cli, tiny_bert_dir, tmp_path):
    """An encoder (a BERT with MLM heads) becomes both halves of an EncoderDecoderModel and learns short summaries;
    plain transformers loads it as a seq2seq model."""
    from transformers import AutoModelForSeq2SeqLM

    import lmforge

    rows = [{"text": "it is a truth universally acknowledged that a single man must be in want of a wife",
             "summary": "a single man"},
            {"text": "she was the youngest of the two daughters of a most affectionate father", "summary": "the youngest"},
            {"text": "the family of dashwood had long been settled in sussex", "summary": "the family"}]
    data = write_jsonl(tmp_path / "three.jsonl", rows * 8)
    out = tmp_path / "b2b"
    result = cli("finetune", "summarize", "--model", tiny_bert_dir, "--data", data, "--eval", data, "--out", out,
                 "--max-steps", "250", "--lr", "3e-3", "--batch-size", "8", "--num-beams", "1",
                 "--set", "train.warmup=0", "--set", "train.threads=1")
    assert result.code == 0, result.text
    assert "family: encoder" in (out / "lmforge.yaml").read_text()
    assert [r["text"] for r in lmforge.load(out).predict([r["text"] for r in rows])] == [r["summary"] for r in rows]
    model = AutoModelForSeq2SeqLM.from_pretrained(out / "model")
    assert type(model).__name__ == "EncoderDecoderModel" and model.config.decoder.add_cross_attention


def test_lora_is_for_causal_lms_and_the_refusal_writes_nothing(cli, tiny_t5_dir, verses, tmp_path):
    data, _ = verses
    result = cli("finetune", "translate", "--model", tiny_t5_dir, "--data", data, "--out", tmp_path / "x", "--lora")
    assert result.code == 2 and "--lora" in result.err and "encoder-decoder" in result.err
    assert not (tmp_path / "x").exists()


def test_random_init_keeps_the_shape_and_drops_the_weights(cli, tiny_t5_dir, gpt_run, verses, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    data, _ = verses
    out = tmp_path / "scratch"
    # (the fixture is itself a fresh T5 drawn with seed 0: another seed draws other weights)
    result = cli("finetune", "translate", "--model", tiny_t5_dir, "--data", data, "--out", out, "--random-init",
                 "--max-steps", "1", "--lr", "1e-9", "--seed", "7")
    assert result.code == 0, result.text
    theirs, ours = (AutoModelForSeq2SeqLM.from_pretrained(p) for p in (tiny_t5_dir, out / "model"))
    assert ours.config.d_model == theirs.config.d_model and ours.num_parameters() == theirs.num_parameters()
    assert not torch.allclose(ours.shared.weight, theirs.shared.weight, atol=1e-3)
    # its first loss is near ln(vocabulary), not the ~sqrt(d_model)-sized logits' tens of nats transformers' T5 v1.1
    # init starts from
    first = next(json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x)
    assert first["loss"] < math.log(ours.config.vocab_size) + 2, first
    refused = cli("finetune", "translate", "--model", gpt_run, "--data", data, "--out", tmp_path / "y", "--random-init")
    assert refused.code == 2 and "--random-init" in refused.err and not (tmp_path / "y").exists()


def test_a_model_that_cannot_generate_is_refused(cli, tmp_path, verses):
    from transformers import DistilBertConfig, DistilBertModel

    folder = tmp_path / "distil"
    DistilBertModel(DistilBertConfig(dim=32, n_layers=1, n_heads=2, hidden_dim=64)).save_pretrained(folder)
    result = cli("finetune", "translate", "--model", folder, "--data", verses[0], "--out", tmp_path / "x")
    assert result.code == 2 and "neither generate text nor warm-start a decoder" in result.err


def test_served_translation_and_its_limits(cli, tiny_t5_dir, verses, tmp_path):
    from fastapi.testclient import TestClient

    from lmforge.serve.app import create_app
    from lmforge.serve.settings import ServeSettings

    data, rows = verses
    out = tmp_path / "mt"
    assert cli("finetune", "translate", "--model", tiny_t5_dir, "--data", data, "--out", out, "--max-steps", "1",
               "--set", "max_source_length=16").code == 0
    app = create_app([f"mt={out}"], ServeSettings(max_batch_inputs=4), load_in_background=False)
    with TestClient(app) as client:
        short = " ".join(rows[0]["en"].split()[:5])
        ok = client.post("/v1/translate", json={"inputs": [short, short], "num_beams": 2, "max_new_tokens": 5})
        assert ok.status_code == 200 and len(ok.json()["results"]) == 2
        assert ok.json()["results"][0] == ok.json()["results"][1]
        long = client.post("/v1/translate", json={"inputs": rows[0]["en"] * 3})
        assert long.status_code == 422 and "longer than the model's 16 tokens" in long.json()["detail"]
        assert client.post("/v1/translate", json={"inputs": rows[0]["en"] * 3, "truncate": True}).status_code == 200
        assert client.post("/v1/translate", json={"inputs": ["a"] * 5}).status_code == 422
        assert client.post("/v1/translate", json={"inputs": "a", "num_beams": 99}).status_code == 422
        assert client.post("/v1/summarize", json={"inputs": "a"}).status_code == 422  # not a summarizer
        assert client.get("/v1/models/mt").json()["routes"] == ["translate"]


def test_the_translate_and_summarize_commands(cli, tiny_t5_dir, verses, tmp_path, monkeypatch):
    data, rows = verses
    out = tmp_path / "mt"
    assert cli("finetune", "translate", "--model", tiny_t5_dir, "--data", data, "--out", out, "--max-steps", "1").code == 0
    result = cli("translate", out, rows[0]["en"], rows[1]["en"], "--num-beams", "1", "--max-new-tokens", "4")
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert result.code == 0 and [x["input"] for x in lines] == [rows[0]["en"], rows[1]["en"]]
    # an untrained model repeats itself: forbidding repeated 1-grams leaves every generated token new
    from transformers import GenerationMixin

    calls, original = [], GenerationMixin.generate

    def spy(self, *args, **kwargs):
        calls.append((kwargs, original(self, *args, **kwargs)))
        return calls[-1][1]

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    free = cli("translate", out, rows[0]["en"], "--num-beams", "2", "--max-new-tokens", "12",
               "--no-repeat-ngram-size", "1", "--length-penalty", "0.5")
    assert free.code == 0, free.text
    (kwargs, generated), = calls
    assert kwargs["no_repeat_ngram_size"] == 1 and kwargs["length_penalty"] == 0.5
    tokens = generated[0, 1:].tolist()  # after the decoder's start token
    assert len(tokens) > 2 and len(tokens) == len(set(tokens))
    written = tmp_path / "out.jsonl"
    assert cli("summarize", out, "--input", data, "--text-field", "en", "--output", written,
               "--max-new-tokens", "2").code == 0
    assert len(written.read_text().splitlines()) == 8 * len(rows)
    again = cli("summarize", out, "--input", data, "--text-field", "en", "--output", written)
    assert again.code == 2 and "--overwrite" in again.err
    assert cli("translate", out).code == 2


def test_a_model_that_cannot_translate_is_refused_by_the_command(cli, tiny_bert_dir):
    result = cli("translate", tiny_bert_dir, "Jesus wept.")
    assert result.code == 2 and "cannot translate" in result.err and "smollm2" in result.err


def test_every_decoding_setting_reaches_generate():
    """The run's decoding settings and what the pipeline passes to generate() are the same set of names."""
    from lmforge.inference.pipelines import DECODING, SAMPLING, generate_options
    from lmforge.tasks.seq2seq import DecodingSettings

    assert set(DecodingSettings.model_fields) == set(DECODING) | set(SAMPLING)
    greedy = generate_options({**DecodingSettings().model_dump(), "temperature": 0.5})
    assert "temperature" not in greedy and greedy["num_beams"] == 4
    assert generate_options({"do_sample": True, "temperature": 0.5, "top_k": 3})["temperature"] == 0.5


# ------------------------------------------------------------------------------- few-shot prompts for base decoders
def test_a_few_shot_prompt_shows_the_nearest_training_pairs_the_nearest_last():
    from lmforge.inference.pipelines import FewShot

    pairs = [("the cat sat on the mat", "el gato se sentó en la alfombra"), ("grace and peace to you", "gracia y paz"),
             ("the dog sat on the mat", "el perro se sentó en la alfombra"), ("one cat\nsleeps", "un gato duerme")]
    few = FewShot("English", "Spanish", pairs)
    prompt = few.prompt("the  cat sat on a mat", 2)
    assert prompt == few.prompt("the  cat sat on a mat", 2)  # deterministic
    blocks = prompt.split("\n\n")
    assert blocks == ["English: the dog sat on the mat\nSpanish: el perro se sentó en la alfombra",
                      "English: the cat sat on the mat\nSpanish: el gato se sentó en la alfombra",
                      "English: the cat sat on a mat\nSpanish:"]
    # a text that is itself a training source never sees its own answer; newlines inside a pair become spaces
    own = few.prompt("the cat sat on the mat", 3)
    assert "el gato se sentó" not in own and "English: one cat sleeps\nSpanish: un gato duerme" in own


def test_a_base_decoder_translates_few_shot_from_the_training_split(cli, tiny_gemma3_dir, monkeypatch):
    from lmforge.inference import pipelines
    from lmforge.tasks import seq2seq

    shown = []
    real = pipelines.FewShot.prompt
    monkeypatch.setattr(pipelines.FewShot, "prompt", lambda self, text, k: shown.append((self, k)) or real(self, text, k))
    loaded = []
    real_load = seq2seq.load_pairs
    monkeypatch.setattr(seq2seq, "load_pairs", lambda spec, *a: loaded.append(spec) or real_load(spec, *a))
    result = cli("evaluate", tiny_gemma3_dir, "--task", "translate", "--data", "translation:dev", "--limit", "3",
                 "--json")
    assert result.code == 0, result.text
    scores = json.loads(result.out)
    assert scores["n"] == 3 and all("\n" not in e["output"] for e in scores["examples"])
    assert "translation:train" in loaded and {k for _, k in shown} == {4}  # no template: 4 shots by default
    few = shown[0][0]
    assert (few.source_label, few.target_label) == ("English", "Spanish")
    dev = {" ".join(r["en"].split()) for r in read_jsonl_gz(BUNDLED / "translation" / "bible_en_es.dev.jsonl.gz")}
    assert not dev & {s for s, _ in few.pairs}  # examples never come from the split being scored
    from lmforge.tasks.summarize import FinetuneSummarizeConfig

    summaries = seq2seq.few_shot(seq2seq.task_settings(FinetuneSummarizeConfig, {}, "summarize"), "summarization")
    assert loaded[-1] == "summarization:train" and (summaries.source_label, summaries.target_label) == ("Text",
                                                                                                       "Summary")


def test_few_shot_limits_are_clear(tiny_gemma3_dir, tiny_t5_dir):
    from lmforge.errors import LmforgeError
    from lmforge.inference.pipelines import FewShot, InputTooLong, Seq2SeqPipeline

    few = FewShot("English", "Spanish", [("a b c", "x y z")] * 3)
    pipeline = Seq2SeqPipeline(tiny_gemma3_dir, few_shot=few)
    assert pipeline.base and pipeline.default_shots == 4
    with pytest.raises(LmforgeError, match="at most 3 shots"):
        pipeline.predict(["hello"], shots=4)
    pipeline.max_length = 100_000
    with pytest.raises(InputTooLong, match="longer than the model's 4096 tokens"):  # prompt + answer past the context
        pipeline.predict(["word " * 5000], shots=1, truncate=False)
    # truncating: a long text is shown fewer examples, then cut, so prompt and answer fit
    assert len(pipeline.predict(["word " * 5000], shots=3, max_new_tokens=4)) == 1
    with pytest.raises(LmforgeError, match="encoder-decoder"):
        Seq2SeqPipeline(tiny_t5_dir, few_shot=few).predict(["hello"], shots=2)


def test_a_served_base_decoder_translates_few_shot_and_says_it_cannot_chat(tiny_gemma3_dir, tmp_path):
    from fastapi.testclient import TestClient

    from lmforge.serve.app import create_app
    from lmforge.serve.settings import ServeSettings

    app = create_app([f"base={tiny_gemma3_dir}"], ServeSettings(), load_in_background=False)
    with TestClient(app) as client:
        assert client.get("/v1/models/base").json()["routes"] == ["openai", "translate", "summarize"]
        asked = {"inputs": ["In the beginning God created the heavens and the earth."], "max_new_tokens": 4}
        ok = client.post("/v1/translate", json={**asked, "shots": 2})
        assert ok.status_code == 200 and "\n" not in ok.json()["results"][0]["text"]
        assert client.post("/v1/translate", json=asked).json() == client.post("/v1/translate", json=asked).json()
        assert client.post("/v1/translate", json={**asked, "shots": 17}).status_code == 422
        chat = client.post("/v1/chat/completions", json={"model": "base", "messages": [
            {"role": "user", "content": "hello"}]})
        assert chat.status_code == 400 and "base model" in chat.json()["error"]["message"]
        assert "lmforge finetune chat --model base" in chat.json()["error"]["message"]


def test_lora_on_a_base_gemma3_learns_the_pairs_and_its_runs_carry_the_license(cli, tiny_gemma3_dir, verses, tmp_path):
    """gemma3's architecture fine-tuned with LoRA as a chat exchange (ChatML added: a base model has no template);
    the weights' license terms in the base's config reach the run's model card and `models list`."""
    import shutil

    import lmforge

    base = tmp_path / "licensed-gemma3"
    shutil.copytree(tiny_gemma3_dir, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "license_terms": "Gemma Terms of Use"}))
    data, rows = verses
    runs = tmp_path / "runs"
    out = runs / "mt-gemma3"
    result = cli("finetune", "translate", "--model", base, "--lora", "--data", data, "--eval", data, "--out", out,
                 "--max-steps", "60", "--lr", "1e-2", "--batch-size", "8", "--num-beams", "1",
                 "--set", "train.warmup=0", "--set", "train.threads=1")
    assert result.code == 0, result.text
    evals = [json.loads(line)["eval"]["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    assert evals[-1] < evals[0] - 1  # measured 5.52 -> 3.93: adapters on a frozen random model learn slowly
    assert (out / "model" / "adapter").is_dir() and "Gemma Terms of Use" in (out / "model" / "README.md").read_text()
    first = [r["text"] for r in lmforge.load(out).predict([r["en"] for r in rows])]
    assert first == [r["text"] for r in lmforge.load(out).predict([r["en"] for r in rows])]  # save -> load
    listed = {e["name"]: e for e in json.loads(cli("models", "list", "--runs", runs, "--no-presets", "--json").out)}
    assert listed[str(out)]["license"] == "Gemma Terms of Use"
