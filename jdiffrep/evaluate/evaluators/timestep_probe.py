"""The time-step probe of a stage whose z has time-step subsets (DiTi): AP of each group alone."""

from __future__ import annotations

from jdiffrep.evaluate import counterfactual
from jdiffrep.evaluate import features
from jdiffrep.evaluate import timestep_probe
from jdiffrep.evaluate.evaluators import base


class TimestepProbe(base.Evaluator):
  """Attribute AP of each subset group of `stage`'s z alone (a heat map), which group reads each
  attribute best, and the same probe on a randomly rotated z: what a group reads with nothing of
  its own."""
  needs = ('attributes', 'subsets')
  options = {'stage': 'diti'}

  def run(self, context, entry):
    stage = context.subset_stage(entry.stage)
    partition = stage.representation.partition
    groups = counterfactual.subset_groups(partition.num_subsets)
    feature_sets = context.feature_sets
    z = {key: value['features'][stage.name] for key, value in feature_sets.items()}
    attributes = {key: feature_sets[key]['attributes'] for key in features.SPLITS}
    eval_config = context.eval_config

    def probe_groups(z_by_split, png_name, **plot_kwargs):
      result = timestep_probe.group_probe(
          z_by_split, attributes, partition, groups, epochs=eval_config.probe_epochs,
          standardize=eval_config.probe_standardize, chunk_bytes=context.chunk_bytes,
          seed=context.config.seed, attribute_names=context.attribute_names)
      timestep_probe.plot_group_ap(result, context.attribute_names,
                                   context.out_dir / png_name, **plot_kwargs)
      return result

    result = probe_groups(z, 'timestep_probe.png')
    return {
        'timestep_probe': result,
        'timestep_probe_best_group': timestep_probe.best_group_per_attribute(result),
        'timestep_probe_random_rotation': probe_groups(
            timestep_probe.random_rotation(z, seed=context.config.seed),
            'timestep_probe_random_rotation.png',
            title='The same probe on a randomly rotated z (groups with nothing of their own)'),
    }
