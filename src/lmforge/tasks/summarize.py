"""Summarization: fine-tune on text -> summary pairs (an encoder-decoder, a causal LM or BERT2BERT: see
:mod:`lmforge.tasks.seq2seq`); ROUGE-1/2/L/Lsum against the lead-1
baseline (the text's first sentence). The bundled ``summarization`` data (Debian package descriptions) has ``text``
and ``summary`` fields."""

from __future__ import annotations

from pydantic import Field

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


class FinetuneSummarizeConfig(Seq2SeqConfig):
    target_field: str = Field("summary", description="field holding the summary")
    max_source_length: int = Field(512, ge=8, description="input tokens kept")
    max_target_length: int = Field(64, ge=4, description="summary tokens learned")

    def task_instruction(self) -> str:
        return "Summarize this text in one short line."

    def prompt_labels(self) -> tuple[str, str]:
        return "Text", "Summary"

    def dev_metric(self, outputs: list[str], targets: list[str]) -> dict[str, float]:
        from lmforge.evaluation.seq2seq import rouge

        return {"rougeLsum": rouge(outputs, targets)["rougeLsum"]}


finetune_summarize = training_stage(lambda config: prepare_seq2seq(config, "summarize"),
                                    "Fine-tune a model to summarize; returns the run summary.")


def evaluate_summarize(run: RunDir, info: dict, options: EvalOptions) -> dict:
    """ROUGE of the run's summaries, and of lead-1 (each text's first sentence)."""
    from lmforge.evaluation.seq2seq import lead_1, rouge

    settings = task_settings(FinetuneSummarizeConfig, info, "summarize")
    pairs = eval_pairs(settings, options, "test")
    outputs = generate(run, info, settings, pairs, options, TASK.default_data)
    lead = rouge([lead_1(s) for s in pairs.sources], pairs.targets)
    return {"data": pairs.spec, "n": len(pairs), **rouge(outputs, pairs.targets),
            "baseline": {"name": "lead-1", **lead}, "examples": examples(pairs, outputs)}


TASK = register(Task(
    name="summarize", stage="finetune", config=FinetuneSummarizeConfig, train=finetune_summarize,
    evaluate=evaluate_summarize, pipeline="text2text-generation", routes=("summarize",),
    summary="Fine-tune to summarize: an encoder-decoder, a causal LM (smollm2) or BERT2BERT from an encoder.",
    flags=("model", "data", "eval", "source_field", "target_field", "instruction", "decoding.num_beams",
           "lora.enabled", "random_init"),
    default_data="summarization",
    metrics=("rougeLsum", "rouge1", "rouge2", "rougeL", "n", "baseline"),
))
