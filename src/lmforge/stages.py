"""Stage functions that dispatch on a config field (the per-task work lives in :mod:`lmforge.tasks`)."""

from __future__ import annotations

from lmforge.config import PretrainConfig
from lmforge.errors import ConfigError


def pretrain(config: PretrainConfig, *, show_progress: bool = True) -> dict:
    if config.objective == "mlm-nsp":
        from lmforge.tasks.pretrain_mlm_nsp import pretrain_mlm_nsp

        return pretrain_mlm_nsp(config, show_progress=show_progress)
    try:
        from lmforge.tasks.pretrain_clm import pretrain_clm
    except ImportError:
        raise ConfigError(f"objective '{config.objective}' is not available yet", fix="use --objective mlm-nsp") from None
    return pretrain_clm(config, show_progress=show_progress)
