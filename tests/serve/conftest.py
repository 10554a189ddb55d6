from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def classify_run(tmp_path_factory, tiny_bert_dir, sentiment_files):
    """A small but real classification run dir (tiny BERT, a few steps on real reviews), evaluated on test rows."""
    from lmforge import FinetuneClassifyConfig, finetune_classify
    from lmforge import evaluate as evaluate_run

    out = tmp_path_factory.mktemp("serve") / "sentiment"
    finetune_classify(FinetuneClassifyConfig.model_validate({
        "model": str(tiny_bert_dir), "data": str(sentiment_files["train"]), "eval": str(sentiment_files["dev"]),
        "out": str(out), "max_length": 64, "train": {"max_steps": 30, "batch_size": 16, "lr": 2e-3, "eval_every": 10,
                                                     "log_every": 2}}), show_progress=False)
    evaluate_run(out, str(sentiment_files["test"]))
    return out


@pytest.fixture(scope="session")
def qa_run(tmp_path_factory, tiny_bert_dir):
    """A tiny extractive QA run (a few steps on the bundled SQuAD sample): enough to answer, not to be right."""
    from lmforge.tasks.qa import FinetuneQAConfig, finetune_qa

    out = tmp_path_factory.mktemp("serve") / "qa"
    finetune_qa(FinetuneQAConfig.model_validate({
        "model": str(tiny_bert_dir), "data": "squad-sample", "out": str(out), "max_length": 96, "stride": 32,
        "train": {"max_steps": 2, "batch_size": 8, "threads": 1}}), show_progress=False)
    return out


@pytest.fixture(scope="session")
def kb_dir(tmp_path_factory):
    """A knowledge base of 30 real passages of the Python docs (minilm vectors)."""
    from lmforge.kb import KnowledgeBase
    from tests.conftest import BUNDLED, read_jsonl_gz, write_jsonl

    folder = tmp_path_factory.mktemp("kb")
    docs = write_jsonl(folder / "docs.jsonl",
                       read_jsonl_gz(BUNDLED / "python-docs-kb" / "python_docs_kb.jsonl.gz", 300)[::10])
    KnowledgeBase.build(folder / "kb", [str(docs)], show_progress=False)
    return folder / "kb"
