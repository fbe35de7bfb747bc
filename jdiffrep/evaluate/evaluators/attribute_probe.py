"""Linear attribute probe (DiTi / PDAE protocol) of every feature set: mean AP on test."""

from __future__ import annotations

from absl import logging

from jdiffrep.evaluate import embedding_probe
from jdiffrep.evaluate import feature_store
from jdiffrep.evaluate import features
from jdiffrep.evaluate import probe
from jdiffrep.evaluate.evaluators import base


def attribute_probes(feature_sets: dict, attribute_names, *, epochs: int, seed: int,
                     standardize: bool = True,
                     chunk_bytes: int = feature_store.DEFAULT_CHUNK_BYTES) -> dict:
  """{feature set: validation and test mean AP, best epoch, test AP per attribute}.

  feature_sets: `Context.feature_sets`; every feature set is probed (pixels, DiTi's and PDAE's z,
  every point of the t sweeps), with a random flip of the training images when `feature_sets`
  holds their mirrored features.
  """
  results = {}
  for name in feature_sets['train']['features']:
    split_x = {s: feature_sets[s]['features'][name] for s in features.SPLITS}
    split_y = {s: feature_sets[s]['attributes'] for s in features.SPLITS}
    result = probe.train_attribute_probe(
        split_x['train'], split_y['train'], split_x['validation'], split_y['validation'],
        split_x['test'], split_y['test'], epochs=epochs, seed=seed, standardize=standardize,
        chunk_bytes=chunk_bytes, train_x_mirrored=mirrored_train(feature_sets, name))
    names = attribute_names or [f'attribute_{i}' for i in range(len(result.test_per_label))]
    results[name] = {
        'test_mean_ap': float(result.test_metric),
        'validation_mean_ap': float(result.validation_metrics[result.best_epoch]),
        'best_epoch': int(result.best_epoch),
        'per_attribute_ap': {n: float(v) for n, v in zip(names, result.test_per_label)},
    }
    logging.info('Attribute probe on %s: test mAP %.4f (best epoch %d).', name,
                 result.test_metric, result.best_epoch)
  return results


def mirrored_train(feature_sets: dict, name: str):
  """The features `name` of the flipped training images, or None when they were not extracted."""
  mirrored = feature_sets.get(features.MIRRORED_TRAIN)
  return None if mirrored is None else mirrored['features'][name]


class AttributeProbe(base.Evaluator):
  """`attribute_probe` per feature set, and a summary with each sweep at its validation-best t."""
  needs = ('attributes',)

  def run(self, context, entry):
    eval_config = context.eval_config
    probes = attribute_probes(
        context.feature_sets, context.attribute_names, epochs=eval_config.probe_epochs,
        seed=context.config.seed, standardize=eval_config.probe_standardize,
        chunk_bytes=context.chunk_bytes)
    return {**context.extraction_info, 'attribute_probe': probes,
            'attribute_probe_summary': embedding_probe.summarize_attribute_probe(
                probes, list(context.sweep_families))}
