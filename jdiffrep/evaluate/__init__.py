"""Evaluation of frozen representations (SPEC section 5): the `evaluate` stage
(`pipeline_eval.py`) runs the evaluators of `evaluators/` on features extracted once
(`features.py`, `feature_store.py`); linear probes (`probe.py`), kNN (`knn.py`), average
precision (`metrics.py`), the time-step probe, and counterfactuals (generation, grid, reader)."""
