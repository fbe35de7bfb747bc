"""Counterfactuals of a stage whose z has time-step subsets (DiTi), on every dataset.

Swaps each subset group of z from B into A for test pairs, then all of z; every dataset gets the
grid and `pixel_distances` (how far each counterfactual lies from A and from B). Where the
dataset has labels, a reader (`attribute_reader`, trained here on the train split; its held-out
test accuracy and, for binary attributes, AP reported) reads A, B and every counterfactual: for
each group and attribute, `took_b` is the fraction of pairs (differing in that attribute) whose
counterfactual reads as B, `kept_a` as A. Categorical labels are read when the dataset has them,
else its binary attributes (CelebA's 40), each as a 2-class head.
"""

from __future__ import annotations

import numpy as np

from jdiffrep.data import pipeline
from jdiffrep.evaluate import attribute_reader
from jdiffrep.evaluate import counterfactual
from jdiffrep.evaluate import counterfactual_grid
from jdiffrep.evaluate import features
from jdiffrep.evaluate import metrics
from jdiffrep.evaluate.evaluators import base

ALL_SUBSETS_LABEL = 'all of z'  # the control row: every subset swapped


def reader_targets(batch: dict, attribute_names) -> dict[str, np.ndarray]:
  """What the counterfactual reader learns from one batch: {name: class index [N] int}.

  The dataset's categorical labels where it has them; else its binary attributes, each a
  2-class target named by `attribute_names`; else nothing (the study is then label-free).
  """
  if batch.get('labels'):
    return {name: np.asarray(value) for name, value in batch['labels'].items()}
  if 'attributes' in batch:
    matrix = features.attribute_matrix(batch['attributes'])
    names = attribute_names or [f'attribute_{i}' for i in range(matrix.shape[1])]
    return {name: matrix[:, i].astype(np.int32) for i, name in enumerate(names)}
  return {}


def _images_and_targets(dataset_config, split: str, limit: int,
                        attribute_names) -> tuple[np.ndarray, dict]:
  batches = list(pipeline.iterate_split(dataset_config, split, 256, limit))
  targets = [reader_targets(b, attribute_names) for b in batches]
  return (np.concatenate([b['image'] for b in batches]),
          {k: np.concatenate([t[k] for t in targets]) for k in targets[0]})


def reader_average_precision(reader, images, targets: dict) -> dict[str, float]:
  """Test AP per binary target of the reader (its class-1 probability as the score)."""
  scores = reader.probabilities(images)
  return {name: metrics.average_precision(scores[name][:, 1], y)
          for name, y in targets.items() if scores[name].shape[1] == 2}


class Counterfactuals(base.Evaluator):
  """The counterfactual study of `stage` (module docstring) under the key 'counterfactual'."""
  needs = ('subsets',)
  options = {'stage': 'diti'}

  def run(self, context, entry):
    config, eval_config, spec = context.config, context.eval_config, context.spec
    stage = context.subset_stage(entry.stage)
    method = stage.method
    pairs = eval_config.counterfactual_pairs
    held_out = slice(2 * pairs, None)
    test_images, test_targets = _images_and_targets(
        config.dataset, spec.eval_split, 2 * pairs + 1000, spec.attribute_names)
    if len(test_images) < 2 * pairs:
      raise ValueError(f'config.evaluate.counterfactual_pairs={pairs} needs {2 * pairs} test '
                       f'images; the {spec.eval_split!r} split has {len(test_images)}.')
    images_a, images_b = test_images[:pairs], test_images[pairs:2 * pairs]
    partition = stage.representation.partition
    groups = counterfactual.subset_groups(partition.num_subsets)
    names = [counterfactual.group_label(partition, g) for g in groups]
    # A control: all of z from B. No group swap can move an attribute more often than this does
    # (from A's x_T^A, what the noise fixes stays A's).
    groups.append((0, partition.num_subsets))
    names.append(ALL_SUBSETS_LABEL)
    invert_steps = eval_config.counterfactual_invert_steps or config.sample.ddim_steps
    generate_steps = eval_config.counterfactual_generate_steps or config.sample.ddim_steps
    result = counterfactual.counterfactuals(
        method, stage.params, stage.frozen, images_a, images_b, groups,
        invert_steps=invert_steps, generate_steps=generate_steps,
        alpha=eval_config.counterfactual_alpha, noise_alpha=eval_config.counterfactual_noise_alpha)
    grid_path = str(context.out_dir / 'counterfactuals.png')
    counterfactual_grid.save_counterfactual_grid(
        grid_path, images_a[:8], images_b[:8],
        {k: v[..., :8, :, :, :] if k == 'swapped' else v[:8] for k, v in result.items()}, names)
    study = {'pairs': pairs, 'stage': stage.name, 'alpha': eval_config.counterfactual_alpha,
             'invert_steps': invert_steps, 'generate_steps': generate_steps,
             'clip_x0': bool(method.clip_x0),
             'noise_alpha': eval_config.counterfactual_noise_alpha,
             'groups': dict(zip(names, [list(g) for g in groups])),
             'pixel_distances': counterfactual.pixel_distances(images_a, images_b, result, names),
             'grid': grid_path}
    if test_targets:
      study.update(self._read(context, test_images[held_out], test_targets, held_out, images_a,
                              images_b, result, names))
    return {'counterfactual': study}

  def _read(self, context, held_out_images, test_targets, held_out, images_a, images_b, result,
            names) -> dict:
    """Trains the reader on the train split (tested on the test images past the pairs,
    `held_out`) and reads which attributes each group moved."""
    eval_config, spec = context.eval_config, context.spec
    train_images, train_targets = _images_and_targets(
        context.config.dataset, spec.train_split, eval_config.classifier_train_images,
        spec.attribute_names)
    num_classes = {k: int(max(v.max(), test_targets[k].max(), 1)) + 1
                   for k, v in train_targets.items()}
    held_out_targets = {k: v[held_out] for k, v in test_targets.items()}
    reader = attribute_reader.train_attribute_classifier(
        train_images, train_targets, num_classes, steps=eval_config.classifier_steps,
        seed=context.config.seed, test_images=held_out_images, test_labels=held_out_targets)
    reading = {'classifier_test_accuracy': {k: float(v)
                                            for k, v in reader.test_accuracy.items()}}
    reader_ap = reader_average_precision(reader, held_out_images, held_out_targets)
    if reader_ap:
      reading['classifier_test_ap'] = reader_ap
    reading['change_rates'] = counterfactual.attribute_change_rates(
        reader.classify, images_a, images_b, result, sorted(train_targets), group_names=names)
    return reading
