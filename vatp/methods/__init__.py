"""Registry of token-importance methods: one file each, one entry here."""
from .base import BudgetError, Method
from .h2o import H2O
from .scissorhands import Scissorhands
from .streaming import StreamingLLM

METHODS: dict[str, Method] = {m.name: m for m in (H2O(), Scissorhands(), StreamingLLM())}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}") from None


__all__ = ["METHODS", "BudgetError", "Method", "get_method"]
