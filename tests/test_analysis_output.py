"""The analysis tools write each output whole, by rename, and never through a planted symbolic link."""
import json
import os

import matplotlib.image
import pytest
from matplotlib.figure import Figure

from conftest import HANG_S
from vatp.analysis import compat, report
from vatp.analysis.output import save_figure, write_text_file
from vatp.longbench.prediction_files import RunIOError


@pytest.fixture
def victim(tmp_path):
    """A file outside the output folder that a link in it points at; it must keep its bytes."""
    path = tmp_path / "victim.txt"
    path.write_text("keep me\n")
    return path


def test_text_replaces_a_planted_link_and_leaves_no_temp_file(tmp_path, victim):
    out = tmp_path / "out"
    out.mkdir()
    (out / "table.md").symlink_to(victim)
    write_text_file(out / "table.md", "| a |\n")
    assert victim.read_text() == "keep me\n"
    assert not (out / "table.md").is_symlink() and (out / "table.md").read_text() == "| a |\n"
    assert os.listdir(out) == ["table.md"]


def test_figure_is_a_png_written_past_a_planted_link(tmp_path, victim):
    (tmp_path / "chart.png").symlink_to(victim)
    fig = Figure(figsize=(4, 3))
    fig.subplots().plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "chart.png", dpi=50)
    assert victim.read_text() == "keep me\n"
    assert matplotlib.image.imread(tmp_path / "chart.png").shape[:2] == (150, 200)


def test_report_does_not_write_through_links(tmp_path, victim):
    run = tmp_path / "run" / "tiny-model"
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({"qasper": 20.5}))
    out = tmp_path / "report"
    out.mkdir()
    for name in ("report.md", "report.png"):
        (out / name).symlink_to(victim)
    assert report.main(["--run", f"Full cache={run}", "--out", str(out)]) == 0
    assert victim.read_text() == "keep me\n"
    assert "| Full cache | **20.50** | **20.50** |" in (out / "report.md").read_text()
    assert not (out / "report.png").is_symlink()


def test_compat_refuses_to_append_through_a_link(tmp_path, victim):
    out = tmp_path / "compat"
    out.mkdir()
    (out / compat.RESULTS).symlink_to(victim)
    with pytest.raises(RunIOError, match="a symbolic link"):
        compat.run_all(out, ["llama"], timeout=HANG_S)
    assert victim.read_text() == "keep me\n"
