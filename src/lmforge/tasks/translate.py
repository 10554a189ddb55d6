"""Machine translation: fine-tune on sentence pairs (an encoder-decoder, a causal LM or BERT2BERT: see
:mod:`lmforge.tasks.seq2seq`); sacreBLEU BLEU and chrF against the
copy-the-source baseline. The bundled ``translation`` data (Bible verses) has ``en`` and ``es`` fields, so
``--source es --target en`` turns the direction around."""

from __future__ import annotations

from pydantic import Field, model_validator

from lmforge.rundir import RunDir
from lmforge.tasks.common import training_stage
from lmforge.tasks.registry import EvalOptions, Task, register
from lmforge.tasks.seq2seq import (
    Seq2SeqConfig,
    eval_pairs,
    examples,
    generate,
    prepare_seq2seq,
    task_settings,
)


class FinetuneTranslateConfig(Seq2SeqConfig):
    source: str = Field("en", description="source language: the field holding the input (unless --source-field)")
    target: str = Field("es", description="target language: the field holding the output (unless --target-field)")
    source_field: str | None = Field(None, description="field holding the input text (default: the --source "
                                     "language)")
    target_field: str | None = Field(None, description="field holding the output text (default: the --target "
                                     "language)")

    @model_validator(mode="after")
    def _fields_from_languages(self):
        self.source_field = self.source_field or self.source
        self.target_field = self.target_field or self.target
        return self

    def task_instruction(self) -> str:
        name = lambda code: LANGUAGES.get(code.lower(), code)
        return (f"Translate this {name(self.source)} text into {name(self.target)}. "
                "Answer with the translation only.")

    def prompt_labels(self) -> tuple[str, str]:
        name = lambda code: LANGUAGES.get(code.lower(), code)
        return name(self.source), name(self.target)

    def dev_metric(self, outputs: list[str], targets: list[str]) -> dict[str, float]:
        from lmforge.evaluation.seq2seq import bleu_chrf

        scores = bleu_chrf(outputs, targets)
        return {"bleu": scores["bleu"], "chrf": scores["chrf"]}


# language codes a causal LM's instruction names in words (others are named by their code)
LANGUAGES = {"en": "English", "es": "Spanish", "fr": "French", "de": "German", "it": "Italian", "pt": "Portuguese",
             "nl": "Dutch", "ru": "Russian", "zh": "Chinese", "ja": "Japanese", "ar": "Arabic", "hi": "Hindi"}


finetune_translate = training_stage(lambda config: prepare_seq2seq(config, "translate"),
                                    "Fine-tune a model to translate; returns the run summary.")


def evaluate_translate(run: RunDir, info: dict, options: EvalOptions) -> dict:
    """BLEU and chrF (with signatures) of the run's translations, and of copying the source unchanged."""
    from lmforge.evaluation.seq2seq import bleu_chrf

    settings = task_settings(FinetuneTranslateConfig, info, "translate")
    pairs = eval_pairs(settings, options, "test")
    outputs = generate(run, info, settings, pairs, options, TASK.default_data)
    scores = bleu_chrf(outputs, pairs.targets)
    copy = bleu_chrf(pairs.sources, pairs.targets)
    return {"data": pairs.spec, "n": len(pairs), **scores,
            "baseline": {"name": "copy the source", "bleu": copy["bleu"], "chrf": copy["chrf"]},
            "examples": examples(pairs, outputs)}


TASK = register(Task(
    name="translate", stage="finetune", config=FinetuneTranslateConfig, train=finetune_translate,
    evaluate=evaluate_translate, pipeline="text2text-generation", routes=("translate",),
    summary="Fine-tune for translation: an encoder-decoder, a causal LM (smollm2) or BERT2BERT from an encoder.",
    flags=("model", "data", "eval", "source", "target", "source_field", "target_field", "instruction",
           "decoding.num_beams", "lora.enabled", "random_init"),
    default_data="translation",
    metrics=("bleu", "chrf", "n", "baseline"),
))
