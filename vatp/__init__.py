"""vatp: Value-Aware Token Pruning (Guo, Kamigaito, Watanabe, EMNLP 2024) for transformers models.

    import vatp
    session = vatp.enable(model, heavy_ratio=0.25, h2o=True, apval=True, sink_len=20)
    model.generate(...)
    vatp.disable(model)
"""
from .config import VatpConfig
from .methods import METHODS, BudgetError
from .patch import disable, enable, enabled, session_of
from .session import VatpSession

__all__ = ["METHODS", "BudgetError", "VatpConfig", "VatpSession", "disable", "enable", "enabled", "session_of"]
