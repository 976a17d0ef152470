"""Looking at what pruning does.

* :mod:`.probe`: attention probabilities, value norms and kept sets of one layer;
* :mod:`.figures`: the notebook's figures (``python -m vatp.analysis.figures``);
* :mod:`.value_attention`: accumulated attention against value norms, per layer
  (``python -m vatp.analysis.value_attention``), the paper's motivating picture;
* :mod:`.needle`: the needle-in-a-haystack heatmap (``python -m vatp.analysis.needle``);
* :mod:`.report`: tables and charts across runs (``python -m vatp.analysis.report``);
* :mod:`.paired`: paired bootstrap intervals of a method against its baseline.
"""
