"""Scores of probe outputs: average precision, per attribute and its mean (attribute probes)."""

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
  has_positives = ~np.isnan(per_attribute)
  mean_ap = float(per_attribute[has_positives].mean()) if has_positives.any() else float('nan')
  return mean_ap, per_attribute

