"""The LongBench harness behind pred.py and eval.py.

* :mod:`.data`: dataset lists, config files, model names, sample loading;
* :mod:`.prompts`: truncation, chat prompts, generation settings;
* :mod:`.models`: models, tokenizers and configs (hub, folder, embedded GGUF);
* :mod:`.runs`: run records and locks, and the one import for writing predictions
  (:mod:`.prediction_files` below it: crash-safe sharded JSONL);
* :mod:`.metrics`, :mod:`.evaluate`: LongBench's scores;
* :mod:`.jsonl`: the one JSONL reader (data, prediction files, needle results);
* :mod:`.suite`: the offline task suite (``python -m vatp.longbench.suite``).

Nothing here imports torch at import time.
"""
