"""Looking at what pruning does.

* :mod:`.probe`: attention probabilities, value norms and kept sets of one layer;
* :mod:`.figures`: the notebook's figures (``python -m vatp.analysis.figures``);
* :mod:`.report`: tables and charts across runs (``python -m vatp.analysis.report``).
"""
