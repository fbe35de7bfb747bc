"""Plots of the probes' scores along the t sweeps (sdae's z_t, the DM's features)."""

from __future__ import annotations

from jdiffrep.evaluate import embedding_probe
from jdiffrep.evaluate.evaluators import base


class AccuracyVsT(base.Evaluator):
  """Draws the attribute probe's mean AP and the categorical probes' accuracy against t.

  Reads the results of the `attribute_probe` and `categorical_probe` evaluators (so it runs after
  them).
  """
  needs = ('sweep',)
  reads_results = True

  def missing(self, context, entry):
    reason = super().missing(context, entry)
    if reason is None and not {'attribute_probe', 'categorical_probe'} & set(context.results):
      reason = 'no probe results to plot (attribute_probe and categorical_probe did not run)'
    return reason

  def run(self, context, entry):
    families = context.sweep_families
    plots = {}
    if 'attribute_probe' in context.results:
      plots['attribute_ap_vs_t_plot'] = embedding_probe.plot_accuracy_vs_t(
          {name: {'linear': {'mean': row['test_mean_ap']}}
           for name, row in context.results['attribute_probe'].items()},
          families, context.out_dir / 'attribute_ap_vs_t.png',
          ylabel='attribute probe mean AP (test)')
    if 'categorical_probe' in context.results:
      plots['accuracy_vs_t_plot'] = embedding_probe.plot_accuracy_vs_t(
          context.results['categorical_probe'], families, context.out_dir / 'accuracy_vs_t.png')
    return plots
