"""Cosine-similarity kNN on frozen features (k = 20, DINO's weighting), the probes' second view.

A training matrix larger than `chunk_bytes` (in memory or `feature_store` streamed) is searched a
chunk at a time and the chunks' neighbours are merged, which gives exactly the whole search's
result.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jdiffrep.evaluate import checks
from jdiffrep.evaluate import feature_store
from jdiffrep.evaluate.feature_store import Features

def l2_normalize(x: np.ndarray) -> np.ndarray:
  """Rows of x [N, D] scaled to unit L2 norm (all-zero rows stay zero)."""
  norms = np.linalg.norm(x, axis=-1, keepdims=True)
  return x / np.where(norms > 0, norms, 1.0)


@functools.partial(jax.jit, static_argnames=('k',))
def _nearest(queries: jax.Array, train_features: jax.Array, *, k: int):
  """queries [B, D], train_features [N, D] (unit rows) -> (similarity [B, k], indices [B, k])."""
  return jax.lax.top_k(queries @ train_features.T, k)


def _merge_nearest(best: tuple[np.ndarray, np.ndarray], found: tuple[np.ndarray, np.ndarray],
                   k: int) -> tuple[np.ndarray, np.ndarray]:
  """The k most similar of two (similarity [M, k1], index [M, k1]) candidate lists; on equal
  similarity the earlier list (lower training rows) comes first, as `lax.top_k` orders ties."""
  similarity = np.concatenate([best[0], found[0]], axis=1)
  indices = np.concatenate([best[1], found[1]], axis=1)
  order = np.argsort(-similarity, axis=1, kind='stable')[:, :k]
  return (np.take_along_axis(similarity, order, axis=1),
          np.take_along_axis(indices, order, axis=1))


def neighbours(train_x: Features, query_x: Features, *, k: int = 20, batch_size: int = 1024,
               chunk_bytes: int = feature_store.DEFAULT_CHUNK_BYTES
               ) -> tuple[np.ndarray, np.ndarray]:
  """The k most cosine-similar training rows of every query: (similarity [M, k], index [M, k]).

  Features are L2-normalised first, so the dot product is the cosine similarity; queries run
  through jax in batches of `batch_size` (padded: one compilation). A training matrix larger than
  `chunk_bytes` (in memory or streamed) is searched a chunk at a time and the chunks' neighbours
  are merged, which gives exactly the whole search's result.
  """
  checks.check_positive(k=k, batch_size=batch_size, chunk_bytes=chunk_bytes)
  train_x, query_x = checks.as_features('train_x', train_x), checks.as_features('query_x', query_x)
  checks.check_same_width(train_x=train_x, query_x=query_x)
  if k > train_x.shape[0]:
    raise ValueError(f'k={k} is larger than the number of training examples {train_x.shape[0]}')
  num_queries = feature_store.num_rows(query_x)
  batch_size = min(batch_size, num_queries)
  best = None
  train_chunk_rows = feature_store.chunk_rows_for(train_x.shape[1], chunk_bytes)
  for offset, _, train_rows in feature_store.iter_chunks(train_x, train_chunk_rows):
    if feature_store.is_streamed(train_x):
      checks.check_finite(f'train_x[{offset}:{offset + len(train_rows)}]', train_rows)
    train_features = jnp.asarray(l2_normalize(train_rows))
    chunk_k = min(k, len(train_rows))
    found = []
    for start, stop in feature_store.row_chunks(num_queries, batch_size):
      queries = feature_store.read_rows(query_x, start, stop)
      if feature_store.is_streamed(query_x):
        checks.check_finite(f'query_x[{start}:{stop}]', queries)
      queries = np.concatenate([l2_normalize(queries),
                                np.zeros((batch_size - (stop - start), queries.shape[1]),
                                         np.float32)])
      found.append(jax.device_get(_nearest(jnp.asarray(queries), train_features, k=chunk_k)))
    chunk_best = (np.concatenate([f[0] for f in found])[:num_queries],
                  np.concatenate([f[1] for f in found])[:num_queries] + offset)
    best = chunk_best if best is None else _merge_nearest(best, chunk_best, k)
  return best


def vote(similarity: np.ndarray, neighbour_labels: np.ndarray, num_classes: int, *,
         temperature: float = 0.07) -> np.ndarray:
  """Weighted vote [M] from neighbours' similarity [M, k] and labels [M, k] (DINO weighting).

  Each neighbour votes for its class with weight exp(similarity / temperature); ties go to the
  lowest class index.
  """
  weights = np.exp((similarity.astype(np.float64) - 1.0) / temperature)  # shifted: no overflow
  votes = np.zeros((similarity.shape[0], num_classes))
  np.add.at(votes, (np.arange(similarity.shape[0])[:, None], neighbour_labels), weights)
  return votes.argmax(axis=-1)



def attribute_accuracy(train_x: Features, train_y: np.ndarray, test_x: Features,
                       test_y: np.ndarray, *, num_classes, k: int = 20, batch_size: int = 1024,
                       temperature: float = 0.07,
                       chunk_bytes: int = feature_store.DEFAULT_CHUNK_BYTES) -> np.ndarray:
  """kNN top-1 accuracy [A] for A categorical attributes at once (one neighbour search).

  train_y [N, A], test_y [M, A] int; num_classes: [A] values per attribute; chunk_bytes as in
  `neighbours`.
  """
  train_y, test_y = np.asarray(train_y), np.asarray(test_y)
  similarity, indices = neighbours(train_x, test_x, k=k, batch_size=batch_size,
                                       chunk_bytes=chunk_bytes)
  accuracy = []
  for a, classes in enumerate(num_classes):
    train_a = checks.as_class_labels(f'train_y[:, {a}]', train_y[:, a], len(train_y), classes)
    test_a = checks.as_class_labels(f'test_y[:, {a}]', test_y[:, a], len(indices), classes)
    predictions = vote(similarity, train_a[indices], classes, temperature=temperature)
    accuracy.append(np.mean(predictions == test_a))
  return np.array(accuracy)
