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


def sweep_features(sdae=None, dm=None, *, sdae_timesteps: Sequence[int] = (),
                   dm_timesteps: Sequence[int] = (), seed: int = 0):
  """A function x0 [B, H, W, C] -> {name: [B, D]} of the sweep's features (jittable).

  Args:
    sdae: (SDAE method, EMA params) or None; gives 'sdae_t{t}' for t in `sdae_timesteps` and
      'sdae_mean_t'.
    dm: (DDPM method, EMA params) or None; gives 'dm_t{t}' for t in `dm_timesteps`.
    seed: the forward-diffusion noise of step t is drawn from fold_in(key(seed), t), the same for
      every batch, so the features are a deterministic function of the images.
  """
  key = jax.random.key(seed)

  def fn(x0):
    out = {}
    if sdae is not None:
      method, params = sdae
      embeddings = [method.embed(params, x0, t, jax.random.fold_in(key, t))
                    for t in sdae_timesteps]
      out.update({f'sdae_t{t}': z for t, z in zip(sdae_timesteps, embeddings)})
      if embeddings:
        out[SDAE_MEAN] = sdae_model.l2_normalize(jnp.mean(jnp.stack(embeddings), axis=0))
    if dm is not None:
      method, params = dm
      out.update({f'dm_t{t}': method.mid_features(params, x0, t, jax.random.fold_in(key, t))
                  for t in dm_timesteps})
    return out

  return fn


def label_matrix(labels: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
  """{attribute: [N] int} -> (sorted attribute names, [N, A] int)."""
  names = sorted(labels)
  return names, np.stack([np.asarray(labels[n]) for n in names], axis=1).astype(np.int64)


def probe_features(feature_sets: Mapping[str, dict], names: Sequence[str], *, epochs: int,
                   seed: int, knn_k: int) -> dict:
  """Linear probe and kNN of every named feature set on the categorical labels.

  feature_sets: {split: {'features': {name: [N, D]}, 'labels': {attribute: [N] int}}} for the
  splits 'train', 'validation', 'test'. Returns {name: {'linear': {'mean': acc, 'per_attribute':
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
        num_classes=num_classes, epochs=epochs, seed=seed)
    knn = probe.knn_attribute_accuracy(x['train'], y['train'], x['test'], y['test'],
                                       num_classes=num_classes, k=knn_k)
    results[name] = {
        'linear': {'mean': float(linear.test_metric), 'best_epoch': int(linear.best_epoch),
                   'per_attribute': dict(zip(attributes, map(float, linear.test_per_label)))},
        'knn': {'mean': float(knn.mean()), 'per_attribute': dict(zip(attributes, map(float, knn)))},
    }
    logging.info('Categorical probes on %s: linear %.4f, kNN %.4f.', name, linear.test_metric,
                 knn.mean())
  return results


def sweep_curve(results: Mapping[str, dict], family: str, reading: str = 'linear'):
  """[(t, mean accuracy)] of the '{family}_t{t}' feature sets, sorted by t."""
  points = []
  for name, result in results.items():
    match = _SWEEP_NAME.match(name)
    if match and match.group(1) == family:
      points.append((int(match.group(2)), result[reading]['mean']))
  return sorted(points)


def summarize(results: Mapping[str, dict]) -> dict:
  """Best t of each sweep (by linear-probe test accuracy) and the fixed baselines, side by side."""
  summary = {}
  for family in ('sdae', 'dm'):
    curve = sweep_curve(results, family)
    if curve:
      best_t, best = max(curve, key=lambda point: point[1])
      summary[f'{family}_best_t'] = {'t': best_t, 'linear': best,
                                     'knn': results[f'{family}_t{best_t}']['knn']['mean']}
  for name in (SDAE_MEAN, 'pixels', 'diti', 'pdae'):
    if name in results:
      summary[name] = {'linear': results[name]['linear']['mean'],
                       'knn': results[name]['knn']['mean']}
  return summary


def plot_accuracy_vs_t(results: Mapping[str, dict], path: str) -> str:
  """PNG: mean categorical accuracy of the sweeps against t, baselines as horizontal lines."""
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
  ax.set_ylabel('mean categorical accuracy (test)')
  ax.set_title('Probe accuracy of embeddings along the diffusion chain')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc='lower left')
  fig.tight_layout()
  path = images.save_figure(path, fig)
  plt.close(fig)
  return path
