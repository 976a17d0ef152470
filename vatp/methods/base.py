"""What a token-importance method is: a prefill score and a budget rule."""
from __future__ import annotations

from ..policy import Budget


class BudgetError(ValueError):
    """A setting gives no valid cache budget for this prompt length."""


class Method:
    """A token-importance rule, as the paper's code parameterises it.

    The prefill score of key ``j`` is the attention it receives, summed over
    the last ``query_window`` prompt queries (all of them if ``None``) and
    divided by ``score_divisor``. Decode steps add each new query's attention.
    Subclasses set the class attributes and implement :meth:`budget`.
    """

    name: str = ""
    query_window: int | None = None
    score_divisor: float = 1.0
    # StreamingLLM-style methods keep sinks whatever ``apval`` says.
    always_sinks: bool = False

    def budget(self, prompt_len: int, ratio: float, sink_len: int = 0) -> Budget:
        raise NotImplementedError

    def checked_budget(self, prompt_len: int, ratio: float, sink_len: int, sinks: bool) -> Budget:
        """The budget for this prompt, or a :class:`BudgetError` that says how to fix it."""
        budget = self.budget(prompt_len, ratio, sink_len)
        if budget.recent < 0:
            raise BudgetError(f"{self.name}: sink_len {sink_len} exceeds the whole budget ({budget.total}) for a "
                              f"{prompt_len}-token prompt; lower sink_len or raise heavy_ratio")
        if budget.heavy < 0:
            raise BudgetError(
                f"{self.name}: heavy_ratio {ratio} gives a negative heavy budget ({budget.heavy}) "
                f"for a {prompt_len}-token prompt (the paper's code crashes here); "
                f"use heavy_ratio >= {self.min_ratio(prompt_len):.4g} for this prompt length"
            )
        if sinks and sink_len > budget.heavy and budget.recent > 0:
            raise BudgetError(
                f"{self.name}: sink_len {sink_len} exceeds the heavy budget ({budget.heavy}) for a "
                f"{prompt_len}-token prompt, so the sinks alone overflow it; lower sink_len to "
                f"<= {budget.heavy} or raise heavy_ratio"
            )
        return budget

    def min_ratio(self, prompt_len: int) -> float:
        """Smallest ratio whose heavy budget is not negative."""
        return 1.0 / prompt_len
