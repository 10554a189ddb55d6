"""Machine translation: fine-tune an encoder-decoder on sentence pairs; sacreBLEU BLEU and chrF against the
copy-the-source baseline. The bundled ``translation`` data (Bible verses) has ``en`` and ``es`` fields, so
``--source es --target en`` turns the direction around."""

from __future__ import annotations

from pydantic import Field, model_validator

from lmforge.rundir import RunDir
from lmforge.tasks.common import training_stage
from lmforge.tasks.registry import EvalOptions, Task, register
from lmforge.tasks.seq2seq import Seq2SeqConfig, eval_pairs, examples, generate, prepare_seq2seq


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


finetune_translate = training_stage(lambda config: prepare_seq2seq(config, "translate"),
                                    "Fine-tune an encoder-decoder to translate; returns the run summary.")


def evaluate_translate(run: RunDir, info: dict, options: EvalOptions) -> dict:
    """BLEU and chrF (with signatures) of the run's translations, and of copying the source unchanged."""
    from lmforge.evaluation.seq2seq import bleu_chrf

    pairs = eval_pairs(info, options, "test")
    outputs = generate(run, info, pairs.sources, options.batch_size)
    scores = bleu_chrf(outputs, pairs.targets)
    copy = bleu_chrf(pairs.sources, pairs.targets)
    return {"data": pairs.spec, "n": len(pairs), **scores,
            "baseline": {"name": "copy the source", "bleu": copy["bleu"], "chrf": copy["chrf"]},
            "examples": examples(pairs, outputs)}


TASK = register(Task(
    name="translate", stage="finetune", config=FinetuneTranslateConfig, train=finetune_translate,
    evaluate=evaluate_translate, pipeline="text2text-generation", routes=("translate",),
    summary="Fine-tune an encoder-decoder for translation (a span-corruption run or an HF seq2seq model).",
    flags=("model", "data", "eval", "source", "target", "source_field", "target_field", "decoding.num_beams"),
    metrics=("bleu", "chrf", "n", "baseline"),
))
