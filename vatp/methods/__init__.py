"""Token-importance methods: one file each, registered by one line in :data:`vatp.names.METHODS`.

A method (:class:`~.base.Method`) says how it scores the prompt and each
decode step, and its budget. VATP is a modifier that wraps any method
(:class:`~.value_aware.ValueAware`): ``get_method(name, apval=True)``.
"""
from importlib import import_module

from ..budget_hint import BudgetError
from ..names import METHODS, check_choice
from .base import Method, Prompt
from .value_aware import ValueAware


def get_method(name: str, apval: bool = False, **params) -> Method:
    """The method registered as ``name`` (its file's ``METHOD`` class) with ``params`` as its fields, and
    VATP's value weighting if ``apval``."""
    method = import_module(f".{check_choice('method', name, METHODS)}", __name__).METHOD(**params)
    return ValueAware(method) if apval else method


__all__ = ["BudgetError", "Method", "Prompt", "ValueAware", "get_method"]
