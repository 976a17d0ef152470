"""The study scripts: win/tie/loss count, averages chart (made-up scores), kept-set diagnostic."""
import importlib.util

import pytest

from conftest import REPO


def _study():
    spec = importlib.util.spec_from_file_location("study", REPO / "scripts" / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scores(study, h2o, h2o_vatp):
    """Two lengths x one budget; every task scores the same except offline_qa."""
    scores = {}
    for n in (1000, 1500):
        for name, qa in (("h2o", h2o[n]), ("h2o_vatp", h2o_vatp[n]), ("scissorhands", 10.0),
                         ("scissorhands_vatp", 10.0), ("streaming", 5.0), ("full", 30.0)):
            tasks = {t: 20.0 for t in study.TASKS} | {"offline_qa": qa}
            scores[(n, 1.0 if name == "full" else 0.5, name)] = tasks | {"Average": sum(tasks.values()) / 5}
    return scores


def test_win_loss_counts_each_task_and_the_average():
    study = _study()
    lines = study.win_loss(_scores(study, {1000: 10.0, 1500: 12.0}, {1000: 15.0, 1500: 12.0}), [1000, 1500], [0.5])
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")[:2]): line.split("|")[3:6] for line in lines[2:]}
    count = lambda pair, task: [int(c) for c in rows[(pair, task)]]
    assert count("H2O+VATP vs H2O", "offline_qa") == [1, 1, 0]  # better at 1000, equal at 1500
    assert count("H2O+VATP vs H2O", "offline_code") == [0, 2, 0]
    assert count("H2O+VATP vs H2O", "Average") == [1, 1, 0]
    assert count("H2O+VATP vs H2O", "**all tasks**") == [1, 9, 0]  # 5 tasks x 2 lengths, Average apart
    assert count("Scissorhands+VATP vs Scissorhands", "**all tasks**") == [0, 10, 0]


def test_averages_chart_is_written(tmp_path):
    study = _study()
    path = tmp_path / "averages.png"
    study.averages_chart(_scores(study, {1000: 10.0, 1500: 12.0}, {1000: 15.0, 1500: 12.0}), [1000, 1500], [0.5], path)
    assert path.stat().st_size > 10_000


def _kept_sets():
    spec = importlib.util.spec_from_file_location("kept_sets", REPO / "scripts" / "kept_sets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kept_set_comparison_counts_overlap_and_ends():
    import torch

    kept_sets = _kept_sets()
    base = torch.tensor([[[False, True, True, False, True, True]]])  # (layers, kv_heads, L)
    vatp = torch.tensor([[[True, True, False, False, True, True]]])
    figures = kept_sets.compare(base, vatp, first=2, last=2)
    assert figures["jaccard"] == pytest.approx(3 / 5)
    assert (figures["first_base"], figures["first_vatp"]) == (0.5, 1.0)
    assert (figures["last_base"], figures["last_vatp"]) == (1.0, 1.0)


def test_vatp_keeps_its_sinks_after_the_prompt():
    import torch

    from conftest import tiny_llama

    kept_sets = _kept_sets()
    ids = torch.randint(0, 128, (1, 80), generator=torch.Generator().manual_seed(0))
    keep = kept_sets.kept_after_prompt(tiny_llama(), ids, 0.25, h2o=True, apval=True, sink_len=4)
    assert keep.shape == (2, 4, 80)
    assert keep[..., :4].all()  # the sinks
    assert (keep.sum(-1) == 40).all()  # heavy 20 + recent 20 of the 80 prompt tokens
