"""Scores of probe outputs: average precision, per attribute and its mean (attribute probes);
Pearson r and squared error per target (attribute regression)."""

from __future__ import annotations

import numpy as np

from jdiffrep.evaluate import checks


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
  """Non-interpolated average precision, equal to sklearn's `average_precision_score`.

  AP = sum_k (R_k - R_{k-1}) P_k over the DISTINCT score thresholds taken from high to low, so
  tied scores enter (and leave) the ranking together.

  Args:
    scores: [N] real scores; higher means more likely positive.
    labels: [N] bool (or 0/1) ground truth.

  Returns:
    AP in [0, 1], or NaN when there is no positive label.
  """
  scores = np.asarray(scores, np.float64)
  labels = checks.as_binary(labels, 'labels')
  if scores.ndim != 1 or labels.ndim != 1:
    raise ValueError(f'scores and labels must be 1-D, got shapes {scores.shape} and {labels.shape}')
  checks.check_same_length(('scores', scores), ('labels', labels))
  checks.check_finite('scores', scores)
  if not labels.any():
    return float('nan')
  order = np.argsort(-scores, kind='stable')
  sorted_scores, sorted_labels = scores[order], labels[order]
  # The last index of each group of tied scores is where a threshold cuts the ranking.
  threshold_ends = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
  true_positives = np.cumsum(sorted_labels)[threshold_ends]
  precision = true_positives / (threshold_ends + 1)
  recall = true_positives / true_positives[-1]
  return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
  """AP of every column, and their mean over the columns that have a positive label.

  Args:
    scores: [N, A] scores (e.g. logits) per attribute.
    labels: [N, A] bool (or 0/1).

  Returns:
    (mean AP, or NaN if no column has a positive; per-attribute AP [A], NaN where no positive).
  """
  scores, labels = np.asarray(scores), np.asarray(labels)
  if scores.ndim != 2 or scores.shape != labels.shape:
    raise ValueError(f'scores and labels must both be [N, A], got shapes {scores.shape} and '
                     f'{labels.shape}')
  per_attribute = np.array([average_precision(scores[:, a], labels[:, a])
                            for a in range(scores.shape[1])])
  return mean_over_defined(per_attribute), per_attribute


def mean_over_defined(values: np.ndarray) -> float:
  """Mean of the non-NaN entries of `values` [K] (a per-column score that is undefined for some
  columns), NaN when there is none."""
  values = np.asarray(values, np.float64)
  defined = ~np.isnan(values)
  return float(values[defined].mean()) if defined.any() else float('nan')


def _check_regression_shapes(predictions: np.ndarray, targets: np.ndarray):
  predictions, targets = np.asarray(predictions, np.float64), np.asarray(targets, np.float64)
  if predictions.ndim != 2 or predictions.shape != targets.shape:
    raise ValueError(f'predictions and targets must both be [N, T], got shapes '
                     f'{predictions.shape} and {targets.shape}')
  checks.check_finite('predictions', predictions)
  checks.check_finite('targets', targets)
  return predictions, targets


def pearson_r(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Pearson correlation of each column of `predictions` [N, T] with the same column of
  `targets` [N, T] -> [T] in [-1, 1], in float64 (scipy's `pearsonr(...).statistic` per column,
  as the official `eval_regression`); NaN where either column is constant, as scipy's."""
  predictions, targets = _check_regression_shapes(predictions, targets)
  if predictions.shape[0] < 2:
    raise ValueError(f'Pearson r needs at least 2 rows, got {predictions.shape[0]}')
  centred_p = predictions - predictions.mean(axis=0)
  centred_t = targets - targets.mean(axis=0)
  norms = np.sqrt((centred_p ** 2).sum(axis=0) * (centred_t ** 2).sum(axis=0))
  covariance = (centred_p * centred_t).sum(axis=0)
  r = np.divide(covariance, norms, out=np.full(norms.shape, np.nan), where=norms > 0)
  return np.clip(r, -1.0, 1.0)


def mean_squared_error(predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Mean over the rows of (prediction - target)^2: [N, T] twice -> [T], in float64."""
  predictions, targets = _check_regression_shapes(predictions, targets)
  return ((predictions - targets) ** 2).mean(axis=0)

