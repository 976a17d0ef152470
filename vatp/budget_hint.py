"""A budget that does not work, refused with the smallest ``heavy_ratio`` that does.

A method's :meth:`~vatp.methods.base.Method.budget` may give a negative heavy
budget (Scissorhands at a small ratio: the paper's code crashes in ``topk``),
no room for the sinks, a recent window larger than the whole budget, or no
token at all (TOVA or KNorm when ``int(ratio * L) == 0``).
:func:`checked_budget` refuses those with a :class:`BudgetError` that names
the fix, found by :func:`min_ratio` from the method's own budget, with no
formula of the method's own.
"""
from __future__ import annotations

import math
from decimal import ROUND_CEILING, Decimal

from .policy import Budget


class BudgetError(ValueError):
    """A setting gives no valid cache budget for this prompt length."""


def checked_budget(method, prompt_len: int, ratio: float, sink_len: int = 0, sinks: bool | None = None) -> Budget:
    """``method``'s budget for this prompt, or a :class:`BudgetError` that says how to fix it.

    ``sinks``: whether the ``sink_len`` sinks must fit the heavy budget (default: ``method.protects_sinks``).
    """
    sinks = method.protects_sinks if sinks is None else sinks
    budget = method.budget(prompt_len, ratio, sink_len)
    fault = _fault(budget, sink_len, sinks)
    if fault is None:
        return budget
    prompt = f"a {prompt_len}-token prompt"
    smallest = min_ratio(method, prompt_len, sink_len, sinks, refused=ratio)
    if smallest is not None:
        fix = _hint(smallest)
    elif sink_len and min_ratio(method, prompt_len, 0, sinks) is not None:
        fix = f"no heavy_ratio <= 1 fits {sink_len} sinks in {prompt}, so lower sink_len"
    else:
        fix = f"no heavy_ratio <= 1 works: {prompt} is too short for {method.name}"
    if fault == "negative":
        raise BudgetError(f"{method.name}: heavy_ratio {ratio} gives a negative heavy budget ({budget.heavy}) "
                          f"for {prompt} (the paper's code crashes here); {fix}")
    if fault == "empty":
        raise BudgetError(f"{method.name}: heavy_ratio {ratio} keeps no token of {prompt} "
                          f"(int(heavy_ratio * {prompt_len}) = {int(ratio * prompt_len)}); {fix}")
    if fault == "whole":
        lower = "" if smallest is None else "lower sink_len or "
        raise BudgetError(f"{method.name}: sink_len {sink_len} exceeds the whole budget ({budget.total}) for "
                          f"{prompt}; {lower}{fix}")
    lower = "" if smallest is None else f"lower sink_len to <= {budget.heavy} or "
    raise BudgetError(f"{method.name}: sink_len {sink_len} exceeds the heavy budget ({budget.heavy}) for {prompt}, "
                      f"so the sinks alone overflow it; {lower}{fix}")


def min_ratio(method, prompt_len: int, sink_len: int = 0, sinks: bool | None = None,
              refused: float | None = None) -> float | None:
    """The smallest float ``r`` such that :func:`checked_budget` accepts every ratio in ``[r, 1]``.

    ``None`` if it refuses ``1.0``; the smallest positive float if it refuses nothing. Budgets depend
    on the ratio only through ``n = int(ratio * prompt_len)``, which never decreases as the ratio
    grows, and a larger ``n >= 1`` never breaks a budget that works (``n == 0`` may work on its own:
    a budget that keeps all). So: gallop then bisect for the smallest ``n >= 1`` that works, then take
    the smallest float that gives it. ``refused``, a ratio known to be refused, only speeds this up:
    the search starts above it.
    """
    sinks = method.protects_sinks if sinks is None else sinks

    def works(n: int) -> bool:
        return _fault(method.budget(prompt_len, _ratio_for(n, prompt_len), sink_len), sink_len, sinks) is None

    n = _first(works, max(1, int(refused * prompt_len) + 1) if refused is not None else 1, prompt_len)
    if n is None:
        return None
    return _ratio_for(0 if n == 1 and works(0) else n, prompt_len)


def _fault(budget: Budget, sink_len: int, sinks: bool) -> str | None:
    """Why :func:`checked_budget` refuses this budget, or ``None``."""
    if budget.recent < 0:
        return "whole"
    if budget.heavy < 0:
        return "negative"
    if sinks and sink_len > budget.heavy and not budget.keeps_all:
        return "sinks"
    if budget.total == 0 and not budget.keeps_all:
        return "empty"
    return None


def _ratio_for(n: int, prompt_len: int) -> float:
    """The smallest positive float ``r`` with ``int(r * prompt_len) >= n``: ``n / prompt_len``, nudged an ulp or two."""
    if n == 0:
        return math.ulp(0.0)
    r = n / prompt_len
    while int(math.nextafter(r, 0) * prompt_len) >= n:
        r = math.nextafter(r, 0)
    while int(r * prompt_len) < n:
        r = math.nextafter(r, 1)
    return r


def _first(works, lo: int, hi: int) -> int | None:
    """The smallest ``n`` in ``[lo, hi]`` with ``works(n)``, for ``works`` False then True there; ``None`` if none.

    Gallops up from ``lo`` (steps 1, 2, 4, ...), then bisects: O(log(answer - lo)) calls.
    """
    if lo > hi:
        return None
    bad, good, step = lo - 1, lo, 1
    while not works(good):
        if good >= hi:
            return None
        bad, good, step = good, min(good + step, hi), step * 2
    while good - bad > 1:
        mid = (bad + good) // 2
        bad, good = (bad, mid) if works(mid) else (mid, good)
    return good


def _hint(ratio: float) -> str:
    """The fix: ``ratio`` exactly (``repr`` round-trips through ``float``), and rounded up to 4 digits if that differs.

    Rounding up keeps the short figure at or above ``ratio``, so it works too.
    """
    exact = Decimal(repr(ratio))  # float(up) >= float(exact) == ratio
    up = exact.quantize(Decimal(1).scaleb(exact.adjusted() - 3), rounding=ROUND_CEILING)
    short = f"{float(up):.4g}"
    rounded = "" if float(short) == ratio else f"; heavy_ratio >= {short} rounds it up"
    return f"use heavy_ratio >= {ratio!r} for this prompt length (the smallest that works{rounded})"
