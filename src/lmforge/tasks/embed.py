"""Sentence embedding: a plain encoder folder (the embedded ``minilm``, any BERT-style ``...Model`` folder without a
task head) loads as this task and is served as vectors on ``POST /v1/embeddings`` (OpenAI-compatible). Mean-pooled,
normalized: :class:`lmforge.inference.pipelines.EmbeddingPipeline`. Classification and masked-LM runs answer the
same route from the encoder under their heads (their tasks list it).

lmforge does not train or score this task itself: a sentence encoder comes trained (minilm is all-MiniLM-L6-v2), and
what its vectors are worth shows in a knowledge base's retrieval (``lmforge evaluate KB``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from lmforge.errors import LmforgeError
from lmforge.rundir import RunDir
from lmforge.tasks.registry import EvalOptions, Task, register


class EmbedConfig(BaseModel):
    """Nothing to set: the encoder is loaded as it is."""

    model_config = ConfigDict(extra="forbid")


def train_embed(config: EmbedConfig, **_: object) -> dict:
    raise LmforgeError("lmforge does not train sentence encoders",
                       fix="serve one as it is (lmforge serve minilm), or fine-tune it for a task: "
                           "lmforge finetune classify --model minilm")


def evaluate_embed(run: RunDir, info: dict, options: EvalOptions) -> dict:
    raise LmforgeError(f"'{run.model_dir}' is a sentence encoder: it is scored by the retrieval of a knowledge base "
                       "it embeds",
                       fix=f"lmforge kb build --docs python-docs-kb --out runs/kb --model {run.model_dir}, then "
                           "lmforge evaluate runs/kb --data python-faq")


# plain encoders, by the class names of their ``...Model`` folders (BertModel also covers DistilBertModel and
# ModernBertModel, RobertaModel XLMRobertaModel); decoders' base classes (GPT2Model, LlamaModel) are not encoders
ENCODERS = ("BertModel", "RobertaModel", "MPNetModel", "ElectraModel", "DebertaModel", "DebertaV2Model")

TASK = register(Task(
    name="embed", stage="none", config=EmbedConfig, train=train_embed, evaluate=evaluate_embed,
    summary="Sentence vectors from an encoder (minilm): last hidden states mean-pooled and normalized",
    pipeline="feature-extraction", routes=("embeddings",), architectures=ENCODERS, metrics=(),
))
