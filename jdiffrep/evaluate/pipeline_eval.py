"""The 'evaluate' pipeline stage: probes and reconstructions of every representation trained.

Reads the EMA parameters of the representation stages in the workdir (DiTi, PDAE, sdae, and
the DM as a feature baseline), extracts their features for the train / validation / test
splits in one pass (next to raw pixels as the baseline), and reports:
* a linear attribute probe (mean AP, SPEC section 5) and categorical-label probes (linear, DDAE
  protocol, and kNN) on every feature set, including sdae's z_t and the DM's mid-block features
  at a sweep of t, with a score-vs-t plot; a sweep's best t is chosen on validation, never test;
* DDIM reconstruction, and for DiTi the time-step probe (AP of each subset group alone, as a
  heat map) and counterfactual generation on every dataset (swap one subset group of z from B
  into A; pixel distances to A and B, and where there are labels a CNN trained on them reads
  which attributes moved).
Writes `<workdir>/evaluate/results.json`, the PNGs next to it, and the headline numbers as
TensorBoard scalars in `<workdir>/evaluate`.
"""

from __future__ import annotations

import json
import tempfile

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jdiffrep import checkpoint
from jdiffrep import config as config_lib
from jdiffrep import images
from jdiffrep import methods
from jdiffrep import metric_writer
from jdiffrep import paths
from jdiffrep.data import pipeline
from jdiffrep.data import registry
from jdiffrep.evaluate import counterfactual
from jdiffrep.evaluate import embedding_probe
from jdiffrep.evaluate import feature_store
from jdiffrep.evaluate import features
from jdiffrep.evaluate import probe
from jdiffrep.evaluate import timestep_probe

REPRESENTATION_METHODS = ('diti', 'pdae')  # z of the clean image, decoded by DDIM
ALL_SUBSETS_LABEL = 'all of z'  # the counterfactual control row: every subset swapped


def _split_names(spec: registry.DatasetSpec) -> dict[str, str]:
  if spec.validation_split:
    return {'train': spec.train_split, 'validation': spec.validation_split,
            'test': spec.eval_split}
  return {'train': f'{spec.train_split}[:90%]', 'validation': f'{spec.train_split}[90%:]',
          'test': spec.eval_split}


def load_representation(config, workdir: str, name: str, image_shape):
  """(method, EMA params, frozen params) of the finished `name` stage in `workdir`."""
  stage_dir = paths.absolute(workdir) / name
  method = methods.make_method(config_lib.stage_config(config, name), image_shape,
                               workdir=str(stage_dir))
  params = checkpoint.load_trained_params(stage_dir / 'checkpoints',
                                          method.abstract_params(), what=f'{name} model')
  return method, params, jax.device_put(method.load_frozen())


def attribute_probes(feature_sets: dict, attribute_names, *, epochs: int, seed: int,
                     standardize: bool = True,
                     chunk_bytes: int = probe.DEFAULT_CHUNK_BYTES) -> dict:
  """A linear attribute probe per feature set: validation and test mean AP, AP per attribute.

  Every feature set is probed: pixels, DiTi's and PDAE's z, and sdae's z_t and the DM's features
  at each t of their sweeps.
  """
  results = {}
  for name in feature_sets['train']['features']:
    split_x = {s: feature_sets[s]['features'][name] for s in ('train', 'validation', 'test')}
    split_y = {s: feature_sets[s]['attributes'] for s in ('train', 'validation', 'test')}
    result = probe.train_attribute_probe(
        split_x['train'], split_y['train'], split_x['validation'], split_y['validation'],
        split_x['test'], split_y['test'], epochs=epochs, seed=seed, standardize=standardize,
        chunk_bytes=chunk_bytes)
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


def feature_function(encoders: dict, sdae=None, dm=None, *, sdae_timesteps=(), dm_timesteps=(),
                     seed: int = 0):
  """images [B, H, W, C] -> {name: [B, D]}: raw pixels, each encoder's z and the t sweep.

  encoders: {name: (method, EMA params)} of methods with `encode` (DiTi, PDAE); sdae, dm:
  (method, EMA params) or None (`embedding_probe.sweep_features`). The parameters enter the
  jitted function as arguments, never as closed-over constants: XLA:CPU constant-folds captured
  parameters, and with the CelebA encoder's at batch >= 128 that returned NaN for every image
  (jax 0.10, seen 2026-12-02); as arguments the same batch is finite (and compiles faster).
  """
  sweep_fn = embedding_probe.sweep_features(
      sdae and sdae[0], dm and dm[0], sdae_timesteps=sdae_timesteps, dm_timesteps=dm_timesteps,
      seed=seed)
  params = {'encoders': {name: p for name, (_, p) in encoders.items()},
            'sweep': {k: v[1] for k, v in (('sdae', sdae), ('dm', dm)) if v is not None}}

  @jax.jit
  def features_of(params, x):
    out = {'pixels': x.reshape(x.shape[0], -1)}
    for name, (method, _) in encoders.items():
      out[name] = method.encode(params['encoders'][name], x)
    out.update(sweep_fn(params['sweep'], x))
    return out

  return lambda images: features_of(params, images)


def reconstruction(method, frozen, params, test_images: np.ndarray, *, num_steps: int,
                   out_path) -> dict:
  """DDIM encode -> decode with the learned z: MSE, PSNR (images in [-1, 1]) and a grid PNG."""
  recon_fn = jax.jit(lambda p, f, x: method.reconstruct(p, f, x, num_steps=num_steps))
  recon = np.clip(np.asarray(recon_fn(params, frozen, jnp.asarray(test_images))), -1.0, 1.0)
  mse = float(np.mean((recon - test_images) ** 2))
  psnr = float(10 * np.log10(4.0 / mse))  # peak-to-peak range of [-1, 1] is 2
  rows = [pipeline.to_uint8(test_images[:8]), pipeline.to_uint8(recon[:8])]
  grid = images.make_grid(np.concatenate(rows), num_columns=min(8, len(test_images)),
                          upscale=max(1, 96 // test_images.shape[1]))
  return {'mse': mse, 'psnr_db': psnr, 'num_images': int(len(test_images)),
          'ddim_steps': num_steps, 'grid': images.save_png(out_path, grid)}


def _has_probe_targets(dataset_config, split: str, attribute_names) -> bool:
  """Whether the split's examples carry binary attributes or categorical labels to probe."""
  first = next(pipeline.iterate_split(dataset_config, split, 1, limit=1))
  return bool(reader_targets(first, attribute_names))


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


def _reader_average_precision(classifier, images, targets: dict) -> dict[str, float]:
  """Test AP per binary target of the reader (its class-1 probability as the score)."""
  scores = classifier.probabilities(images)
  return {name: probe.average_precision(scores[name][:, 1], y) for name, y in targets.items()
          if scores[name].shape[1] == 2}


def counterfactual_study(config, spec, method, params, frozen, out_dir) -> dict:
  """Swaps each subset group of z from B into A for test pairs, then all of z; reads the result.

  Every dataset gets the grid and `pixel_distances` (how far each counterfactual lies from A and
  from B). Where the dataset has labels, a classifier (trained here on the train split, its
  held-out test accuracy and, for binary attributes, AP reported) reads A, B and every
  counterfactual: for each group and attribute, `took_b` is the fraction of pairs (differing in
  that attribute) whose counterfactual reads as B, `kept_a` as A. Categorical labels are read
  when the dataset has them, else its binary attributes (CelebA's 40), each as a 2-class head.
  """
  eval_config = config.evaluate
  pairs = eval_config.counterfactual_pairs
  held_out = slice(2 * pairs, None)
  test_images, test_targets = _images_and_targets(
      config.dataset, spec.eval_split, 2 * pairs + 1000, spec.attribute_names)
  if len(test_images) < 2 * pairs:
    raise ValueError(f'config.evaluate.counterfactual_pairs={pairs} needs {2 * pairs} test '
                     f'images; the {spec.eval_split!r} split has {len(test_images)}.')
  images_a, images_b = test_images[:pairs], test_images[pairs:2 * pairs]
  num_subsets = method.partition.num_subsets
  groups = counterfactual.subset_groups(num_subsets)
  names = [counterfactual.group_label(method.partition, g) for g in groups]
  # A control: all of z from B. No group swap can move an attribute more often than this does
  # (from A's x_T^A, what the noise fixes stays A's).
  groups.append((0, num_subsets))
  names.append(ALL_SUBSETS_LABEL)
  invert_steps = eval_config.counterfactual_invert_steps or config.sample.ddim_steps
  generate_steps = eval_config.counterfactual_generate_steps or config.sample.ddim_steps
  result = counterfactual.counterfactuals(
      method, params, frozen, images_a, images_b, groups, invert_steps=invert_steps,
      generate_steps=generate_steps, alpha=eval_config.counterfactual_alpha,
      noise_alpha=eval_config.counterfactual_noise_alpha)
  grid_path = str(out_dir / 'counterfactuals.png')
  counterfactual.save_counterfactual_grid(grid_path, images_a[:8], images_b[:8],
                                          {k: v[..., :8, :, :, :] if k == 'swapped' else v[:8]
                                           for k, v in result.items()}, names)
  study = {'pairs': pairs, 'alpha': eval_config.counterfactual_alpha,
           'invert_steps': invert_steps, 'generate_steps': generate_steps,
           'clip_x0': bool(method.clip_x0),
           'noise_alpha': eval_config.counterfactual_noise_alpha,
           'groups': dict(zip(names, [list(g) for g in groups])),
           'pixel_distances': counterfactual.pixel_distances(images_a, images_b, result, names),
           'grid': grid_path}
  if not test_targets:
    return study
  train_images, train_targets = _images_and_targets(
      config.dataset, spec.train_split, eval_config.classifier_train_images, spec.attribute_names)
  num_classes = {k: int(max(v.max(), test_targets[k].max(), 1)) + 1
                 for k, v in train_targets.items()}
  held_out_targets = {k: v[held_out] for k, v in test_targets.items()}
  classifier = counterfactual.train_attribute_classifier(
      train_images, train_targets, num_classes, steps=eval_config.classifier_steps,
      seed=config.seed, test_images=test_images[held_out], test_labels=held_out_targets)
  study['classifier_test_accuracy'] = {k: float(v) for k, v in classifier.test_accuracy.items()}
  reader_ap = _reader_average_precision(classifier, test_images[held_out], held_out_targets)
  if reader_ap:
    study['classifier_test_ap'] = reader_ap
  study['change_rates'] = counterfactual.attribute_change_rates(
      classifier.classify, images_a, images_b, result, sorted(train_targets), group_names=names)
  return study


def evaluate(config, workdir: str) -> dict:
  """Runs every evaluation that applies to the stages in `config.pipeline`.

  Feature sets over `config.evaluate.feature_memory_mb` are spilled to a scratch directory under
  `config.evaluate.feature_dir` (local; default the system temp dir), deleted at the end.
  """
  with tempfile.TemporaryDirectory(prefix='jdiffrep_features_',
                                   dir=config.evaluate.feature_dir or None) as scratch:
    return _evaluate(config, workdir, scratch)


def _evaluate(config, workdir: str, scratch_dir: str) -> dict:
  out_dir = paths.absolute(workdir) / config_lib.EVALUATE_STAGE  # local or a URL (gs://...)
  out_dir.mkdir(parents=True, exist_ok=True)
  spec = registry.get_spec(config.dataset.name)
  resolution = config.dataset.resolution
  image_shape = (resolution, resolution, 3)
  eval_config = config.evaluate
  chunk_bytes = eval_config.probe_chunk_mb * 2 ** 20

  loaded = {name: load_representation(config, workdir, name, image_shape)
            for name in REPRESENTATION_METHODS if name in config.pipeline}

  # sdae's z_t, and the DM's own features as its baseline, along a sweep of t.
  sdae = (load_representation(config, workdir, 'sdae', image_shape)[:2]
          if 'sdae' in config.pipeline else None)
  dm = (load_representation(config, workdir, 'ddpm', image_shape)[:2]
        if sdae is not None and 'ddpm' in config.pipeline else None)
  feature_fn = feature_function(
      {name: method_and_params[:2] for name, method_and_params in loaded.items()}, sdae, dm,
      sdae_timesteps=tuple(eval_config.embedding_timesteps),
      dm_timesteps=tuple(eval_config.dm_feature_timesteps), seed=config.seed)
  splits = _split_names(spec)
  results = {'splits': splits}
  if _has_probe_targets(config.dataset, splits['train'], spec.attribute_names):
    store = feature_store.FeatureStore(scratch_dir, eval_config.feature_memory_mb * 2 ** 20)
    try:
      feature_sets = features.extract(
          feature_fn, config.dataset, splits, store, batch_size=eval_config.batch_size,
          limits={'train': eval_config.train_limit, 'validation': eval_config.eval_limit,
                  'test': eval_config.eval_limit})
    finally:
      store.close()
    results['num_examples'] = {k: feature_store.num_rows(next(iter(v['features'].values())))
                               for k, v in feature_sets.items()}
    results['features_streamed_from_disk'] = [f'{key}/{name}' for key, name in store.spilled]
  else:  # FFHQ, Bedroom: nothing to probe, so no features are extracted
    logging.info('%s has neither attributes nor class labels: no probes, only reconstructions '
                 'and label-free counterfactuals.', spec.name)
    feature_sets = {key: {'features': {}, 'labels': {}} for key in splits}
  if 'attributes' in feature_sets['train']:
    attribute = attribute_probes(
        feature_sets, spec.attribute_names, epochs=eval_config.probe_epochs, seed=config.seed,
        standardize=eval_config.probe_standardize, chunk_bytes=chunk_bytes)
    results['attribute_probe'] = attribute
    results['attribute_probe_summary'] = embedding_probe.summarize_attribute_probe(attribute)
    if sdae is not None:
      results['attribute_ap_vs_t_plot'] = embedding_probe.plot_accuracy_vs_t(
          {name: {'linear': {'mean': row['test_mean_ap']}} for name, row in attribute.items()},
          out_dir / 'attribute_ap_vs_t.png', ylabel='attribute probe mean AP (test)')

  if all(feature_sets[s]['labels'] for s in embedding_probe.SPLITS):
    categorical = embedding_probe.probe_features(
        feature_sets, list(feature_sets['train']['features']), epochs=eval_config.probe_epochs,
        seed=config.seed, knn_k=eval_config.knn_k, standardize=eval_config.probe_standardize,
        chunk_bytes=chunk_bytes)
    results['categorical_probe'] = categorical
    results['categorical_probe_summary'] = embedding_probe.summarize(categorical)
    if sdae is not None:
      results['accuracy_vs_t_plot'] = embedding_probe.plot_accuracy_vs_t(
          categorical, out_dir / 'accuracy_vs_t.png')

  test_images = pipeline.first_images(config.dataset, eval_config.reconstruction_images)
  results['reconstruction'] = {}
  for name, (method, params, frozen) in loaded.items():
    results['reconstruction'][name] = reconstruction(
        method, frozen, params, test_images,
        num_steps=config.sample.ddim_steps,
        out_path=out_dir / f'reconstruction_{name}.png')
    logging.info('Reconstruction with %s z: PSNR %.2f dB.', name,
                 results['reconstruction'][name]['psnr_db'])

  if 'diti' in loaded and 'attributes' in feature_sets['train']:
    method = loaded['diti'][0]
    groups = counterfactual.subset_groups(method.partition.num_subsets)
    diti_z = {k: v['features']['diti'] for k, v in feature_sets.items()}
    attributes = {k: v['attributes'] for k, v in feature_sets.items()}

    def probe_groups(z_by_split, png_name, **plot_kwargs):
      result = timestep_probe.group_probe(
          z_by_split, attributes, method.partition, groups, epochs=eval_config.probe_epochs,
          standardize=eval_config.probe_standardize, chunk_bytes=chunk_bytes,
          seed=config.seed, attribute_names=spec.attribute_names)
      timestep_probe.plot_group_ap(result, spec.attribute_names,
                                   out_dir / png_name, **plot_kwargs)
      return result

    results['timestep_probe'] = probe_groups(diti_z, 'timestep_probe.png')
    results['timestep_probe_best_group'] = timestep_probe.best_group_per_attribute(
        results['timestep_probe'])
    # The same probe on a randomly rotated z: what a group reads with nothing of its own.
    results['timestep_probe_random_rotation'] = probe_groups(
        timestep_probe.random_rotation(diti_z, seed=config.seed),
        'timestep_probe_random_rotation.png',
        title='The same probe on a randomly rotated z (groups with nothing of their own)')
  if 'diti' in loaded:
    results['counterfactual'] = counterfactual_study(config, spec, *loaded['diti'], out_dir)

  if jax.process_index() == 0:
    (out_dir / 'results.json').write_text(json.dumps(results, indent=2))
    writer = metric_writer.create_writer(out_dir)
    writer.write_scalars(0, headline_scalars(results))
    writer.close()
  return results


# Keys whose values are per-attribute or per-pair detail: in results.json, not in TensorBoard.
_DETAIL_KEYS = ('per_attribute', 'per_attribute_ap', 'ap_per_attribute', 'change_rates',
                'classifier_test_accuracy', 'classifier_test_ap', 'groups', 'splits')


def headline_scalars(results: dict, prefix: str = '') -> dict[str, float]:
  """The finite numbers of `results`, flattened to 'a/b/c' names, without the per-attribute
  detail: what the evaluate stage logs to TensorBoard (`<workdir>/evaluate`, step 0)."""
  scalars = {}
  for key, value in results.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict) and key not in _DETAIL_KEYS:
      scalars.update(headline_scalars(value, f'{name}/'))
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
      scalars[name] = float(value)
  return scalars
