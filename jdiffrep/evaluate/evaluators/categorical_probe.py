"""Linear probe (DDAE protocol) and kNN of every feature set on the categorical labels."""

from __future__ import annotations

from jdiffrep.evaluate import embedding_probe
from jdiffrep.evaluate.evaluators import base


class CategoricalProbe(base.Evaluator):
  """`categorical_probe` per feature set, and a summary with each sweep at its validation-best t."""
  needs = ('labels',)

  def run(self, context, entry):
    eval_config = context.eval_config
    feature_sets = context.feature_sets
    probes = embedding_probe.probe_features(
        feature_sets, list(feature_sets['train']['features']), epochs=eval_config.probe_epochs,
        seed=context.config.seed, knn_k=eval_config.knn_k,
        standardize=eval_config.probe_standardize, chunk_bytes=context.chunk_bytes)
    return {**context.extraction_info, 'categorical_probe': probes,
            'categorical_probe_summary': embedding_probe.summarize(
                probes, list(context.sweep_families))}
