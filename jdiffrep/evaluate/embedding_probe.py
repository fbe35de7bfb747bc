"""Embeddings along the diffusion chain, probed (SPEC sections 4 and 5).

The self-conditional DiT ('sdae') gives an embedding z_t at every step t; the plain DM gives
DDAE-style features (its middle block's tokens on x_t, mean-pooled). Both are extracted at a
sweep of t, next to the fixed representations (raw pixels, DiTi's and PDAE's z), and every
feature set gets the same two readings of the dataset's categorical labels: a linear probe per
attribute (DDAE protocol: Adam 1e-3, batch 128, cosine decay, best epoch by validation) and a
cosine kNN (k = 20). `plot_accuracy_vs_t` draws the sweep.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jdiffrep import images
from jdiffrep.evaluate import probe
from jdiffrep.models import sdae as sdae_model

SPLITS = ('train', 'validation', 'test')
SDAE_MEAN = 'sdae_mean_t'  # the L2-normalised mean of z_t over the sweep
_SWEEP_NAME = re.compile(r'^(sdae|dm)_t(\d+)$')


def sweep_features(sdae_method=None, dm_method=None, *, sdae_timesteps: Sequence[int] = (),
                   dm_timesteps: Sequence[int] = (), seed: int = 0):
  """A function (params, x0 [B, H, W, C]) -> {name: [B, D]} of the sweep's features (jittable).

  Args:
    sdae_method: the SDAE method or None; gives 'sdae_t{t}' for t in `sdae_timesteps` and
      'sdae_mean_t' from params['sdae'] (its EMA params).
    dm_method: the DDPM method or None; gives 'dm_t{t}' for t in `dm_timesteps` from
      params['dm'].
    seed: the forward-diffusion noise of step t is drawn from fold_in(key(seed), t), the same for
      every batch, so the features are a deterministic function of the images.
  """
  key = jax.random.key(seed)

  def fn(params, x0):
    out = {}
    if sdae_method is not None:
      embeddings = [sdae_method.embed(params['sdae'], x0, t, jax.random.fold_in(key, t))
                    for t in sdae_timesteps]
      out.update({f'sdae_t{t}': z for t, z in zip(sdae_timesteps, embeddings)})
      if embeddings:
        out[SDAE_MEAN] = sdae_model.l2_normalize(jnp.mean(jnp.stack(embeddings), axis=0))
    if dm_method is not None:
      out.update({f'dm_t{t}': dm_method.mid_features(params['dm'], x0, t,
                                                     jax.random.fold_in(key, t))
                  for t in dm_timesteps})
    return out

  return fn


def label_matrix(labels: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
  """{attribute: [N] int} -> (sorted attribute names, [N, A] int)."""
  names = sorted(labels)
  return names, np.stack([np.asarray(labels[n]) for n in names], axis=1).astype(np.int64)


def probe_features(feature_sets: Mapping[str, dict], names: Sequence[str], *, epochs: int,
                   seed: int, knn_k: int, standardize: bool = True,
                   chunk_bytes: int = probe.DEFAULT_CHUNK_BYTES) -> dict:
  """Linear probe and kNN of every named feature set on the categorical labels.

  feature_sets: {split: {'features': {name: [N, D] array or streamed}, 'labels': {attribute: [N]
  int}}} for the splits 'train', 'validation', 'test'; `chunk_bytes` as in `probe`. Returns {name: {'linear': {'mean': acc, 'per_attribute':
  {...}, 'best_epoch': e}, 'knn': {'mean': acc, 'per_attribute': {...}}}}.
  """
  attributes, labels = zip(*(label_matrix(feature_sets[s]['labels']) for s in SPLITS))
  attributes = attributes[0]
  num_classes = [int(max(y[:, a].max() for y in labels)) + 1 for a in range(len(attributes))]
  y = dict(zip(SPLITS, labels))
  results = {}
  for name in names:
    x = {s: feature_sets[s]['features'][name] for s in SPLITS}
    linear = probe.train_categorical_probe(
        x['train'], y['train'], x['validation'], y['validation'], x['test'], y['test'],
        num_classes=num_classes, epochs=epochs, seed=seed, standardize=standardize,
        chunk_bytes=chunk_bytes)
    knn = probe.knn_attribute_accuracy(x['train'], y['train'], x['test'], y['test'],
                                       num_classes=num_classes, k=knn_k, chunk_bytes=chunk_bytes)
    results[name] = {
        'linear': {'mean': float(linear.test_metric), 'best_epoch': int(linear.best_epoch),
                   'validation': float(linear.validation_metrics[linear.best_epoch]),
                   'per_attribute': dict(zip(attributes, map(float, linear.test_per_label)))},
        'knn': {'mean': float(knn.mean()), 'per_attribute': dict(zip(attributes, map(float, knn)))},
    }
    logging.info('Categorical probes on %s: linear %.4f, kNN %.4f.', name, linear.test_metric,
                 knn.mean())
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


def _summarize(results: Mapping[str, dict], scores, validation) -> dict:
  """Each sweep at its t chosen by `validation(row)`, and the fixed representations: `scores(row)`."""
  summary = {}
  for family in ('sdae', 'dm'):
    curve = [(t, validation(row)) for t, row in _sweep_rows(results, family)]
    if curve:
      best_t = best_t_by_validation(curve)
      summary[f'{family}_best_t'] = {'t': best_t, **scores(results[f'{family}_t{best_t}'])}
  for name in (SDAE_MEAN, 'pixels', 'diti', 'pdae'):
    if name in results:
      summary[name] = scores(results[name])
  return summary


def summarize(results: Mapping[str, dict]) -> dict:
  """Categorical probes: each sweep's t chosen by validation accuracy, next to the baselines.

  results: `probe_features` output. Every row holds the linear probe's validation and test mean
  accuracy and the kNN test accuracy; '{family}_best_t' rows add the chosen t.
  """
  return _summarize(
      results,
      lambda row: {'validation': row['linear']['validation'], 'linear': row['linear']['mean'],
                   'knn': row['knn']['mean']},
      lambda row: row['linear']['validation'])


def summarize_attribute_probe(results: Mapping[str, dict]) -> dict:
  """Attribute probes: each sweep's t chosen by validation mean AP, next to the baselines.

  results: {name: {'test_mean_ap', 'validation_mean_ap', ...}} (`pipeline_eval.attribute_probes`).
  """
  return _summarize(
      results,
      lambda row: {'validation_mean_ap': row['validation_mean_ap'],
                   'test_mean_ap': row['test_mean_ap']},
      lambda row: row['validation_mean_ap'])


def plot_accuracy_vs_t(results: Mapping[str, dict], path: str, *,
                       ylabel: str = 'mean categorical accuracy (test)') -> str:
  """PNG: the sweeps' probe scores against t, baselines as horizontal lines.

  results: {name: {'linear': {'mean': score}, 'knn': {'mean': score} (optional)}}.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  styles = {('sdae', 'linear'): ('C0', '-', 'sdae z_t, linear'),
            ('sdae', 'knn'): ('C0', '--', 'sdae z_t, kNN'),
            ('dm', 'linear'): ('C1', '-', 'DM mid-block, linear'),
            ('dm', 'knn'): ('C1', '--', 'DM mid-block, kNN')}
  for (family, reading), (colour, line, label) in styles.items():
    curve = sweep_curve(results, family, reading)
    if curve:
      ts, accuracy = zip(*curve)
      ax.plot(ts, accuracy, line, color=colour, marker='o', label=label)
  baselines = {'pixels': 'C7', 'diti': 'C2', 'pdae': 'C3', SDAE_MEAN: 'C0'}
  for name, colour in baselines.items():
    if name in results:
      ax.axhline(results[name]['linear']['mean'], color=colour, linestyle=':',
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
