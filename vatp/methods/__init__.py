"""Token-importance methods: one file each, registered by one line in :data:`vatp.names.METHODS`.

A method (:class:`~.base.Method`) says how it scores the prompt and each
decode step, and its budget. VATP is a modifier that wraps any method
(:class:`~.value_aware.ValueAware`): ``get_method(name, apval=True)``.
"""
from importlib import import_module

from ..names import METHODS as NAMES
from ..names import check_choice
from .base import BudgetError, Method
from .value_aware import ValueAware


def get_method(name: str, apval: bool = False) -> Method:
    """The method registered as ``name`` (its file's ``METHOD``), with VATP's value weighting if ``apval``."""
    method = import_module(f".{check_choice('method', name, NAMES)}", __name__).METHOD
    return ValueAware(method) if apval else method


METHODS: dict[str, Method] = {name: get_method(name) for name in NAMES}

__all__ = ["METHODS", "BudgetError", "Method", "ValueAware", "get_method"]
