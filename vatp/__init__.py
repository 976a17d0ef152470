"""vatp: Value-Aware Token Pruning (Guo, Kamigaito, Watanabe, EMNLP 2024) for transformers models.

    import vatp
    session = vatp.enable(model, heavy_ratio=0.25, h2o=True, apval=True, sink_len=20)
    model.generate(...)                       # or model.generate_batch(...): pruned in continuous batching
    vatp.disable(model)

The names below are imported on first use, so tools that need neither torch
nor transformers (``eval.py``, ``python -m vatp.longbench.suite``) start quickly.
"""
from importlib import import_module

_EXPORTS = {
    "VatpConfig": ".config", "METHODS": ".names", "BudgetError": ".budget_hint", "VatpSession": ".session",
    "enable": ".hook", "disable": ".hook", "enabled": ".hook", "session_of": ".hook",
    "engine_config": ".engine.settings",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vatp' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
