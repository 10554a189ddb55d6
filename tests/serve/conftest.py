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
