"""Categorical probes of every feature set, and embeddings along the diffusion chain (SPEC 4, 5).

The self-conditional DiT ('sdae') gives an embedding z_t at every step t; the plain DM gives
DDAE-style features (its middle block's tokens on x_t, mean-pooled). Each is extracted at a
sweep of t (a "family" of feature sets f'{family}_t{t}', declared by its method's
`Representation`), next to the fixed representations (raw pixels, DiTi's and PDAE's z), and every
feature set gets the same two readings of the dataset's categorical labels: a linear probe per
attribute (DDAE protocol: Adam 1e-3, batch 128, cosine decay, best epoch by validation) and a
cosine kNN (k = 20). A sweep is summarised at the t chosen on validation; `plot_accuracy_vs_t`
draws it.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from absl import logging
import numpy as np

from jdiffrep import images
from jdiffrep.evaluate import feature_store
from jdiffrep.evaluate import features
from jdiffrep.evaluate import knn
from jdiffrep.evaluate import probe

_SWEEP_NAME = re.compile(r'^(.+)_t(\d+)$')  # '{family}_t{t}'


def label_matrix(labels: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
  """{attribute: [N] int} -> (sorted attribute names, [N, A] int)."""
  names = sorted(labels)
  return names, np.stack([np.asarray(labels[n]) for n in names], axis=1).astype(np.int64)


def probe_features(feature_sets: Mapping[str, dict], names: Sequence[str], *, epochs: int,
                   seed: int, knn_k: int, standardize: bool = True,
                   chunk_bytes: int = feature_store.DEFAULT_CHUNK_BYTES) -> dict:
  """Linear probe and kNN of every named feature set on the categorical labels.

  feature_sets: {split: {'features': {name: [N, D] array or streamed}, 'labels': {attribute: [N]
  int}}} for the splits 'train', 'validation', 'test'; `chunk_bytes` as in `probe`. Returns
  {name: {'linear': {'mean': acc, 'per_attribute': {...}, 'best_epoch': e}, 'knn': {'mean': acc,
  'per_attribute': {...}}}}.
  """
  attributes, labels = zip(*(label_matrix(feature_sets[s]['labels']) for s in features.SPLITS))
  attributes = attributes[0]
  num_classes = [int(max(y[:, a].max() for y in labels)) + 1 for a in range(len(attributes))]
  y = dict(zip(features.SPLITS, labels))
  mirrored = feature_sets.get(features.MIRRORED_TRAIN, {}).get('features', {})
  results = {}
  for name in names:
    x = {s: feature_sets[s]['features'][name] for s in features.SPLITS}
    linear = probe.train_categorical_probe(
        x['train'], y['train'], x['validation'], y['validation'], x['test'], y['test'],
        num_classes=num_classes, epochs=epochs, seed=seed, standardize=standardize,
        chunk_bytes=chunk_bytes, train_x_mirrored=mirrored.get(name))
    knn_accuracy = knn.attribute_accuracy(x['train'], y['train'], x['test'], y['test'],
                                          num_classes=num_classes, k=knn_k,
                                          chunk_bytes=chunk_bytes)
    results[name] = {
        'linear': {'mean': float(linear.test_metric), 'best_epoch': int(linear.best_epoch),
                   'validation': float(linear.validation_metrics[linear.best_epoch]),
                   'per_attribute': dict(zip(attributes, map(float, linear.test_per_label)))},
        'knn': {'mean': float(knn_accuracy.mean()),
                'per_attribute': dict(zip(attributes, map(float, knn_accuracy)))},
    }
    logging.info('Categorical probes on %s: linear %.4f, kNN %.4f.', name, linear.test_metric,
                 knn_accuracy.mean())
  return results


def _sweep_rows(results: Mapping[str, dict], family: str) -> list[tuple[int, dict]]:
  """[(t, results['{family}_t{t}'])] sorted by t."""
  return sorted(((int(m.group(2)), row) for name, row in results.items()
                 if (m := _SWEEP_NAME.match(name)) and m.group(1) == family),
                key=lambda point: point[0])


def sweep_curve(results: Mapping[str, dict], family: str, reading: str = 'linear'):
  """[(t, mean test score)] of the '{family}_t{t}' feature sets that have `reading`, by t."""
  return [(t, row[reading]['mean']) for t, row in _sweep_rows(results, family) if reading in row]


def best_t_by_validation(validation_curve: Sequence[tuple[int, float]]) -> int:
  """The t of the highest validation score (the smallest such t on ties).

  Test scores never choose: a sweep's best t picked on test would report the maximum of several
  noisy test estimates, an optimistic number.
  """
  return max(validation_curve, key=lambda point: (point[1], -point[0]))[0]


def is_sweep_point(name: str, families: Sequence[str]) -> bool:
  """Whether feature set `name` is one point f'{family}_t{t}' of a sweep along t."""
  match = _SWEEP_NAME.match(name)
  return bool(match) and match.group(1) in families


def _summarize(results: Mapping[str, dict], families: Sequence[str], scores, validation) -> dict:
  """Each sweep at its t chosen by `validation(row)`, and every other feature set: `scores(row)`."""
  summary = {}
  for family in families:
    curve = [(t, validation(row)) for t, row in _sweep_rows(results, family)]
    if curve:
      best_t = best_t_by_validation(curve)
      summary[f'{family}_best_t'] = {'t': best_t, **scores(results[f'{family}_t{best_t}'])}
  for name, row in results.items():
    if not is_sweep_point(name, families):
      summary[name] = scores(row)
  return summary


def summarize(results: Mapping[str, dict], families: Sequence[str]) -> dict:
  """Categorical probes: each sweep's t chosen by validation accuracy, next to the others.

  results: `probe_features` output; families: the sweeps' names (feature sets
  f'{family}_t{t}'). Every row holds the linear probe's validation and test mean accuracy and the
  kNN test accuracy; '{family}_best_t' rows add the chosen t.
  """
  return _summarize(
      results, families,
      lambda row: {'validation': row['linear']['validation'], 'linear': row['linear']['mean'],
                   'knn': row['knn']['mean']},
      lambda row: row['linear']['validation'])


def summarize_attribute_probe(results: Mapping[str, dict], families: Sequence[str]) -> dict:
  """Attribute probes: each sweep's t chosen by validation mean AP, next to the others.

  results: {name: {'test_mean_ap', 'validation_mean_ap', ...}} (`evaluators.attribute_probe`).
  """
  return _summarize(
      results, families,
      lambda row: {'validation_mean_ap': row['validation_mean_ap'],
                   'test_mean_ap': row['test_mean_ap']},
      lambda row: row['validation_mean_ap'])


def plot_accuracy_vs_t(results: Mapping[str, dict], families: Mapping[str, str], path: str, *,
                       ylabel: str = 'mean categorical accuracy (test)') -> str:
  """PNG: the sweeps' probe scores against t, every other feature set as a horizontal line.

  results: {name: {'linear': {'mean': score}, 'knn': {'mean': score} (optional)}};
  families: {sweep family: its label in the legend}.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  for index, (family, label) in enumerate(families.items()):
    for reading, line, reading_label in (('linear', '-', 'linear'), ('knn', '--', 'kNN')):
      curve = sweep_curve(results, family, reading)
      if curve:
        ts, accuracy = zip(*curve)
        ax.plot(ts, accuracy, line, color=f'C{index}', marker='o',
                label=f'{label}, {reading_label}')
  baselines = [name for name in results if not is_sweep_point(name, list(families))]
  for index, name in enumerate(baselines, start=len(families)):
    ax.axhline(results[name]['linear']['mean'], color=f'C{index % 10}', linestyle=':',
               label=f'{name}, linear (no t)')
  ax.set_xscale('symlog', linthresh=10)
  ax.set_xlim(left=0)  # t >= 0; symlog would otherwise show an empty negative decade
  ax.set_xlabel('diffusion step t of the embedding')
  ax.set_ylabel(ylabel)
  ax.set_title('Probe accuracy of embeddings along the diffusion chain')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc='lower left')
  fig.tight_layout()
  path = images.save_figure(path, fig)
  plt.close(fig)
  return path
