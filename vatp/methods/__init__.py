"""Token-importance methods: one file each, registered by one line in :data:`vatp.names.METHODS`.

A method (:class:`~.base.Method`) says how it scores the prompt and each
decode step, and its budget. VATP is a modifier that wraps any method
(:class:`~.value_aware.ValueAware`): ``get_method(name, apval=True)``.
"""
from importlib import import_module

from ..budget_hint import BudgetError
from ..names import METHODS, check_choice
from .base import Method, Prompt, Scores
from .value_aware import ValueAware


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``: its file's ``METHOD``."""
    return import_module(f".{check_choice('method', name, METHODS)}", __name__).METHOD


def get_method(name: str, apval: bool = False, **params) -> Method:
    """The method registered as ``name`` with ``params`` as its fields, and VATP's value weighting if ``apval``."""
    method = method_class(name)(**params)
    return ValueAware(method) if apval else method


def attention_methods() -> list[str]:
    """The registered methods whose scores are attention: those VATP and AdaKV apply to."""
    return [name for name in METHODS if method_class(name).scores.is_attention]


__all__ = ["BudgetError", "Method", "Prompt", "Scores", "ValueAware", "attention_methods", "get_method",
           "method_class"]
