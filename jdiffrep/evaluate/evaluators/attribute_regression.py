"""Attribute regression on a transfer dataset (DiTi's LFW test, `eval/attribute_regression.py`).

Every frozen representation of the trained stages (raw pixels and each stage's declared feature
sets, `Context.feature_function`) regresses the transfer dataset's real-valued targets (LFW's 73
attribute scores) with one linear layer: MSE, Adam 1e-3, batch 64, 15 epochs, reshuffled every
epoch, seeded by `config.seed`. LFW has no validation split, so nothing is chosen on one: the
headline numbers are the test Pearson r and MSE (means over the targets) after the last epoch.
The official script reports the epoch of the best mean r on test; that number is reported too,
under `selected_on_test`, because it is a selection on the test split.

The transfer dataset is read at `config.dataset.resolution` (the encoders' input size) from
`config.dataset.data_dir` unless the entry names another `data_dir`; when it is not prepared the
evaluator is skipped with the command that prepares it.

Features are extracted with `features.extract` into a `FeatureStore` of their own, under the
evaluation's scratch directory: LFW is small (13,233 images), but its pixels at 64x64 are already
0.6 GiB of float32 and 2.4 GiB at 128x128, so the store's memory budget
(`config.evaluate.feature_memory_mb`, spilling the rest to disk) is worth keeping rather than a
second, unbounded in-memory path.
"""

from __future__ import annotations

import tempfile

from absl import logging
import ml_collections

from jdiffrep.data import registry
from jdiffrep.evaluate import feature_store
from jdiffrep.evaluate import features
from jdiffrep.evaluate import probe
from jdiffrep.evaluate.evaluators import base

RESULT_KEY = 'attribute_regression'


def transfer_dataset_config(dataset_config: ml_collections.ConfigDict,
                            entry: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.dataset` pointed at the entry's transfer dataset: the same resolution (what the
  encoders take) and data dir (unless `entry.data_dir` names one), unflipped."""
  transfer = dataset_config.copy_and_resolve_references()
  with transfer.unlocked():
    transfer.name = entry.dataset
    transfer.tfds_config = None
    transfer.random_flip = False
    if entry.data_dir:
      transfer.data_dir = entry.data_dir
  return transfer


def extract_transfer_features(feature_fn, dataset_config, scratch_dir: str, *,
                              batch_size: int, memory_budget_bytes: int,
                              limits: dict[str, int | None]) -> tuple[dict, list[str]]:
  """Features of the transfer dataset's train and test splits, with their regression targets.

  Returns ({'train' / 'test': {'features': {name: [N, D]}, 'regression_targets': [N, T]}}, the
  feature sets spilled to disk as 'split/name').
  """
  spec = registry.get_spec(dataset_config.name)
  store = feature_store.FeatureStore(tempfile.mkdtemp(prefix='regression_', dir=scratch_dir),
                                     memory_budget_bytes)
  try:
    feature_sets = features.extract(
        feature_fn, dataset_config, {'train': spec.train_split, 'test': spec.eval_split}, store,
        batch_size=batch_size, limits=limits)
  finally:
    store.close()
  return feature_sets, [f'{key}/{name}' for key, name in store.spilled]


def _scores_at(result: probe.RegressionResult, epoch: int, target_names) -> dict:
  """Mean test Pearson r and MSE after `epoch`, and both per target (the detail)."""
  return {
      'test_mean_pearson_r': float(result.mean_pearson_r[epoch]),
      'test_mean_mse': float(result.mean_mse[epoch]),
      'per_attribute': {
          'pearson_r': {n: float(v) for n, v in zip(target_names, result.test_pearson_r[epoch])},
          'mse': {n: float(v) for n, v in zip(target_names, result.test_mse[epoch])},
      },
  }


def regress_attributes(feature_sets: dict, target_names, *, epochs: int, batch_size: int,
                       learning_rate: float, seed: int, standardize: bool,
                       chunk_bytes: int = feature_store.DEFAULT_CHUNK_BYTES) -> dict:
  """{feature set: scores after the last epoch, the mean r of every epoch, and the epoch of the
  best mean r on test with its scores (`selected_on_test`)}.

  feature_sets: `extract_transfer_features`' first result; every feature set is regressed.
  target_names: [T] names of the regression targets, in the order of their columns.
  """
  results = {}
  for name in feature_sets['train']['features']:
    result = probe.train_regression_probe(
        feature_sets['train']['features'][name], feature_sets['train']['regression_targets'],
        feature_sets['test']['features'][name], feature_sets['test']['regression_targets'],
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
        standardize=standardize, chunk_bytes=chunk_bytes)
    best = result.best_epoch_on_test
    results[name] = {
        **_scores_at(result, -1, target_names),
        'test_mean_pearson_r_per_epoch': [float(r) for r in result.mean_pearson_r],
        'selected_on_test': {'epoch': best, **_scores_at(result, best, target_names)},
    }
    logging.info('Attribute regression on %s: test mean r %.4f, MSE %.4f after %d epochs '
                 '(best on test: %.4f at epoch %d).', name, result.mean_pearson_r[-1],
                 result.mean_mse[-1], epochs, result.mean_pearson_r[best], best)
  return results


def _check_positive(name: str, option: str, value, integer: bool) -> None:
  kinds = (int,) if integer else (int, float)
  if not isinstance(value, kinds) or isinstance(value, bool) or value <= 0:
    raise ValueError(f'config.evaluate.evals.{name}.{option}={value!r} must be a positive '
                     f'{"integer" if integer else "number"}.')


class AttributeRegression(base.Evaluator):
  """`regress_attributes` of every feature set on the transfer dataset named by `dataset`."""
  options = {'dataset': 'lfw', 'data_dir': None, 'epochs': 15, 'batch_size': 64,
             'learning_rate': 1e-3}

  @classmethod
  def check_options(cls, name, entry):
    dataset = entry.get('dataset', cls.options['dataset'])
    valid = sorted(n for n, spec in registry.DATASETS.items() if spec.num_regression_targets)
    if dataset not in valid:
      raise ValueError(f'config.evaluate.evals.{name}.dataset={dataset!r} is not a dataset with '
                       f'regression targets; choose one of {valid}.')
    for option in ('epochs', 'batch_size', 'learning_rate'):
      _check_positive(name, option, entry.get(option, cls.options[option]),
                      integer=option != 'learning_rate')

  def missing(self, context, entry):
    try:
      registry.ensure_prepared(transfer_dataset_config(context.config.dataset, entry))
    except registry.DatasetNotPreparedError as error:
      return f'the transfer dataset is not prepared. {error}'
    return super().missing(context, entry)

  def fingerprint_inputs(self, context, entry):
    """The prepared transfer dataset's `dataset_info.json` (its source, image set, splits and
    sizes): preparing it again, e.g. from the other image set, runs the regression again."""
    dataset = transfer_dataset_config(context.config.dataset, entry)
    info = (registry.prepared_dir(registry.ensure_prepared(dataset), registry.tfds_name(dataset))
            / 'dataset_info.json')
    return {'transfer_dataset_info': info.read_text()}

  def run(self, context, entry):
    eval_config = context.eval_config
    dataset = transfer_dataset_config(context.config.dataset, entry)
    metadata = registry.prepared_metadata(dataset)
    target_names = list(metadata.get('regression_target_names') or ())
    if len(target_names) != registry.get_spec(entry.dataset).num_regression_targets:
      raise ValueError(f'The prepared {entry.dataset!r} dataset names {len(target_names)} '
                       'regression targets in its metadata; prepare it again with --overwrite.')
    feature_sets, spilled = extract_transfer_features(
        context.feature_function(), dataset, context.scratch_dir,
        batch_size=eval_config.batch_size,
        memory_budget_bytes=eval_config.feature_memory_mb * 2 ** 20,
        limits={'train': eval_config.train_limit, 'test': eval_config.eval_limit})
    results = regress_attributes(
        feature_sets, target_names, epochs=entry.epochs, batch_size=entry.batch_size,
        learning_rate=entry.learning_rate, seed=context.config.seed,
        standardize=eval_config.probe_standardize, chunk_bytes=context.chunk_bytes)
    return {RESULT_KEY: {
        'dataset': entry.dataset,
        'image_set': metadata.get('image_set'),
        'num_examples': {key: len(value['regression_targets'])
                         for key, value in feature_sets.items()},
        'features_streamed_from_disk': spilled,
        'feature_sets': results,
    }}
