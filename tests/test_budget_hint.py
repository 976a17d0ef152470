"""A refused heavy_ratio's BudgetError names the smallest ratio that works, exactly, for every prompt length."""
import math
import re

import pytest

from conftest import method_variants
from vatp import VatpConfig
from vatp.methods import BudgetError, get_method

HINT = re.compile(r"use heavy_ratio >= (\S+) for this prompt length")
NO_RATIO = "no heavy_ratio <= 1"
# (method, sink_len, sinks) as VatpSession passes them: sinks = VatpConfig.scorer.protects_sinks, apval off and on.
SETTINGS = sorted({(name, sink_len, VatpConfig(method=name, sink_len=sink_len, apval=apval).scorer.protects_sinks)
                   for name, apval, _ in method_variants(adakv=(False,)) for sink_len in (0, 4, 20)})


def refusal(name: str, prompt_len: int, ratio: float, sink_len: int, sinks: bool) -> str | None:
    """checked_budget's error message, or None if it accepts the ratio."""
    try:
        get_method(name).checked_budget(prompt_len, ratio, sink_len, sinks)
    except BudgetError as err:
        return str(err)
    return None


@pytest.mark.parametrize("name,sink_len,sinks", SETTINGS)
def test_min_ratio_is_the_smallest_ratio_that_works_for_every_prompt_length(name, sink_len, sinks):
    # Every length for each method's richest rule (20 sinks on top of its own thresholds); the short
    # lengths, where the thresholds meet, and a sample of the rest for the other settings (a few seconds in all).
    lengths = range(1, 32769) if (sink_len, sinks) == (20, True) else [*range(1, 2049), *range(2049, 32769, 97)]
    for prompt_len in lengths:
        ratio = get_method(name).min_ratio(prompt_len, sink_len, sinks)
        if ratio is None:  # nothing up to 1 works: the message says so and names no ratio
            message = refusal(name, prompt_len, 1.0, sink_len, sinks)
            assert NO_RATIO in message and not HINT.search(message), message
            continue
        assert 0 < ratio <= 1 and refusal(name, prompt_len, ratio, sink_len, sinks) is None
        if ratio == math.ulp(0.0):  # every ratio works
            assert refusal(name, prompt_len, 1.0, sink_len, sinks) is None
            continue
        below = math.nextafter(ratio, 0)
        message = refusal(name, prompt_len, below, sink_len, sinks)
        assert message is not None, (prompt_len, ratio)  # so ratio is exactly the smallest
        assert float(HINT.search(message)[1]) == ratio, message  # and the message names it


@pytest.mark.parametrize("name,sink_len,sinks", SETTINGS)
def test_every_ratio_above_the_hint_works(name, sink_len, sinks):
    # Brute force over every budget of short prompts: int(r * L) takes every value n at r = (n + 0.5) / L.
    for prompt_len in range(1, 64):
        smallest = get_method(name).min_ratio(prompt_len, sink_len, sinks)
        for n in range(prompt_len + 1):
            ratio = min(1.0, (n + 0.5) / prompt_len)
            message = refusal(name, prompt_len, ratio, sink_len, sinks)
            if smallest is not None and ratio >= smallest:
                assert message is None, (prompt_len, ratio, message)
            elif message is not None:  # the hint in a refusal does not depend on the refused ratio
                hint = HINT.search(message)
                assert float(hint[1]) == smallest if hint else smallest is None, message


@pytest.mark.parametrize("prompt_len,ratio", [(48, 0.1), (11, 0.3), (3999, 0.001), (7, 0.5)])
def test_scissorhands_hint_round_trips_and_its_rounded_form_works(prompt_len, ratio):
    message = refusal("scissorhands", prompt_len, ratio, 0, False)
    exact = get_method("scissorhands").min_ratio(prompt_len)
    text = HINT.search(message)[1]
    assert text == repr(exact) and float(text) == exact
    for shown in re.findall(r"heavy_ratio >= ([0-9.e-]+)", message):  # the exact figure, then 4 digits rounded up
        assert float(shown) >= exact and refusal("scissorhands", prompt_len, float(shown), 0, False) is None


def test_lengths_from_11_to_3999_that_the_4_digit_hint_got_wrong_now_work():
    method = get_method("scissorhands")
    for prompt_len in range(11, 4000):  # 2 * int(r * L) - 10 < 0 for r below about 5 / L
        message = refusal("scissorhands", prompt_len, 1e-9, 0, False)
        assert "gives a negative heavy budget" in message
        assert method.checked_budget(prompt_len, float(HINT.search(message)[1]), 0, False).heavy == 0


def test_messages_when_no_ratio_works():
    too_short = refusal("scissorhands", 4, 0.5, 0, False)  # 2 * int(r * 4) - 10 < 0 for every r <= 1
    assert "a 4-token prompt is too short for scissorhands" in too_short and "lower sink_len" not in too_short
    sinks = refusal("h2o", 48, 0.5, 100, True)  # int(r * 48) < 100 sinks for every r <= 1
    assert "sink_len 100 exceeds the heavy budget" in sinks and "no heavy_ratio <= 1 fits 100 sinks" in sinks
    assert "lower sink_len" in sinks
    whole = refusal("streaming", 10, 0.5, 30, True)  # 2 * int(r * 10) < 30 sinks for every r <= 1
    assert "exceeds the whole budget" in whole and "lower sink_len" in whole and not HINT.search(whole)


def test_sink_errors_name_the_smallest_ratio():
    heavy = refusal("h2o", 48, 0.1, 5, True)  # heavy int(4.8) = 4 < 5 sinks
    assert "sink_len 5 exceeds the heavy budget (4)" in heavy
    assert "lower sink_len to <= 4 or use heavy_ratio >=" in heavy
    assert float(HINT.search(heavy)[1]) == get_method("h2o").min_ratio(48, 5, True)
    whole = refusal("streaming", 48, 0.02, 4, True)  # total 2 * int(0.96) = 0 < 4 sinks
    assert "exceeds the whole budget (0)" in whole and "lower sink_len or use heavy_ratio >=" in whole
    assert refusal("streaming", 48, float(HINT.search(whole)[1]), 4, True) is None
