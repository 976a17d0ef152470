"""visual.ipynb runs headless on the embedded model and shows its five figures.

The notebook is executed in memory with nbclient and never written back, so
the committed copy stays clean.
"""
import re

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import HANG_S, REPO

pytestmark = pytest.mark.slow  # runs subprocesses

NOTEBOOK = REPO / "visual.ipynb"
FIGURES = 5  # value norms, attention heatmap, kept tokens, attention against value norm per layer, the two value terms


@pytest.fixture(scope="module")
def executed():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=HANG_S, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    return nb


def test_committed_notebook_is_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert 'model_name = "smollm2-135m-instruct"' in code[0].source


def test_notebook_shows_its_five_figures(executed):
    outputs = [out for cell in executed.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) == FIGURES
    assert all(len(out.data["image/png"]) > 5000 for out in images)  # base64 PNG, not an empty canvas
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    # H2O keeps int(0.25 L) heavy + int(0.25 L) recent tokens; VATP keeps the 4 sinks among them.
    kept, n = map(int, re.search(r"H2O\+VATP +keeps (\d+)/(\d+) tokens; sinks kept: \[True, True, True, True\]",
                                 text).groups())
    assert kept == 2 * int(0.25 * n) and n > 200
