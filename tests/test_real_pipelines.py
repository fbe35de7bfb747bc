"""The real-data configs, end to end, on tiny datasets written in their original on-disk format.

`configs/celeba.py` and `configs/ffhq.py` run every stage (ddpm, diti, pdae, sdae, evaluate) with
only their sizes shrunk, so what a user's first real run evaluates is what these tests check:
on CelebA the 40-attribute probe of every representation, sdae's and the DM's along t, the
time-step probe and counterfactual rates per attribute and group; on FFHQ (no labels) the
reconstructions and the label-free counterfactual distances.
"""

import json

import numpy as np
from PIL import Image
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from configs import celeba as celeba_config
from configs import ffhq as ffhq_config
from jdiffrep import config as config_lib
from jdiffrep import prepare
from jdiffrep import run
from jdiffrep.data import registry
from jdiffrep.data import sources
from jdiffrep.evaluate.evaluators import counterfactual as counterfactual_evaluator

pytestmark = pytest.mark.slow

SPLIT_SIZES = {0: 96, 1: 24, 2: 24}  # CelebA's partition codes: train, validation, test


def _write_celeba(root, seed=0):
  """Aligned 178x218 JPEGs, list_attr_celeba.txt and list_eval_partition.txt, as CelebA ships.

  The crop holds two colour blocks; 'Smiling' says whether the left block is bright, 'Male'
  whether the right one is, so a probe has something to find. The other attributes are random.
  """
  rng = np.random.default_rng(seed)
  image_dir = root / 'img_align_celeba'
  image_dir.mkdir(parents=True)
  names = sources.CELEBA_ATTRIBUTE_NAMES
  attr_rows, partition_rows, index = [], [], 0
  top, left, height, width = registry.CELEBA_CROP
  for split, count in SPLIT_SIZES.items():
    for _ in range(count):
      index += 1
      name = f'{index:06d}.jpg'
      values = rng.random(len(names)) < 0.4
      image = np.full((218, 178, 3), 128, np.uint8)
      crop = rng.integers(0, 256, (height, width, 3), dtype=np.uint8) // 4 + 64
      crop[:, : width // 2] += np.uint8(120 if values[names.index('Smiling')] else 0)
      crop[:, width // 2:] += np.uint8(120 if values[names.index('Male')] else 0)
      image[top:top + height, left:left + width] = crop
      Image.fromarray(image).save(image_dir / name, quality=95)
      attr_rows.append(name + ' ' + ' '.join('1' if v else '-1' for v in values))
      partition_rows.append(f'{name} {split}')
  (root / 'list_attr_celeba.txt').write_text(
      f'{len(attr_rows)}\n{" ".join(names)}\n' + '\n'.join(attr_rows))
  (root / 'list_eval_partition.txt').write_text('\n'.join(partition_rows))


def _write_ffhq(root, count=40, seed=0):
  """FFHQ's images1024x1024 layout (thousand-folders of PNGs), at 256x256 to stay small."""
  rng = np.random.default_rng(seed)
  for i in range(count):
    path = root / f'{i // 1000 * 1000:05d}' / f'{i:05d}.png'
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.kron(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), np.ones((32, 32, 1), np.uint8))
    Image.fromarray(image).save(path)


def _shrink(config, data_dir):
  """Sizes of seconds on 2 CPU cores; everything the config selects (stages, encoder, partition,
  evaluation protocol) stays as it is."""
  config.dataset.data_dir = str(data_dir)
  config.dataset.read_threads = 1
  config.model.name = 'XXS/8'
  config.model.dtype = 'float32'
  config.batch_size = 8
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.sample_every_steps = 0
  config.sample.num_images = 4
  config.sample.ddim_steps = 4
  config.stage_overrides = {stage: {'num_train_steps': 2} for stage in config.pipeline
                            if stage != config_lib.EVALUATE_STAGE}
  config.sdae.latent_dim = 16
  config.evaluate.batch_size = 32
  config.evaluate.probe_epochs = 2
  config.evaluate.embedding_timesteps = (0, 100)
  config.evaluate.dm_feature_timesteps = (0, 100)
  config.evaluate.reconstruction_images = 4
  config.evaluate.counterfactual_pairs = 4
  config.evaluate.counterfactual_invert_steps = 4
  config.evaluate.counterfactual_generate_steps = 2
  config.evaluate.classifier_train_images = 64
  config.evaluate.classifier_steps = 5
  return config


def test_celeba_config_runs_both_papers_and_the_official_evaluation(tmp_path):
  source, data_dir = tmp_path / 'celeba_src', tmp_path / 'tfds'
  _write_celeba(source)
  prepared = prepare.prepare('celeba', str(source), str(data_dir))
  assert prepared.num_examples == {'train': 96, 'validation': 24, 'test': 24}
  config = _shrink(celeba_config.get_config(), data_dir)
  assert config.pipeline == ('ddpm', 'diti', 'pdae', 'sdae', 'simclr', 'simsiam', 'evaluate')
  # The SSL stages train like any other (tests/test_ssl.py runs one through the trainer); left
  # out here to keep the CI run short. Their encoder's random row stays (`random_diti`).
  config.pipeline = tuple(s for s in config.pipeline if s not in ('simclr', 'simsiam'))
  # No feature set fits in memory: every probe streams its features from spill files, as the
  # pixels of the real CelebA (8 GB) must; the files are gone when the stage ends.
  config.evaluate.feature_memory_mb = 0
  config.evaluate.feature_dir = str(tmp_path / 'scratch')
  (tmp_path / 'scratch').mkdir()
  assert (config.evaluate.counterfactual_noise_alpha, config.sample.clip_x0) == (1.0, True)
  workdir = tmp_path / 'run'
  evaluation = run.run(config, str(workdir))['stages']['evaluate']
  assert set(evaluation) == set(json.loads((workdir / 'evaluate' / 'results.json').read_text()))
  assert not list((tmp_path / 'scratch').iterdir())
  assert {'train/pixels', 'validation/diti', 'test/dm_t100'} <= set(
      evaluation['features_streamed_from_disk'])

  representations = {'pixels', 'diti', 'pdae', 'sdae_t0', 'sdae_t100', 'sdae_mean_t', 'dm_t0',
                     'dm_t100'}
  # One row per encoder architecture at random init: DiTi's conv encoder (shared by PDAE and the
  # SSL baselines) and sdae's DiT encoder, named after the first stage of each.
  random_rows = {'random_diti', 'random_sdae_t0', 'random_sdae_t100', 'random_sdae_mean_t'}
  assert set(evaluation['attribute_probe']) == representations | random_rows
  assert evaluation['random_encoder_rows'] == {'random_diti': ['diti', 'pdae'],
                                               'random_sdae': ['sdae']}
  for reading in evaluation['attribute_probe'].values():
    assert list(reading['per_attribute_ap']) == list(sources.CELEBA_ATTRIBUTE_NAMES)
    assert 0 < reading['test_mean_ap'] <= 1 and 0 < reading['validation_mean_ap'] <= 1
  # Pixels read the two attributes drawn into the images better than chance (40 % positives).
  pixels = evaluation['attribute_probe']['pixels']['per_attribute_ap']
  assert pixels['Smiling'] > 0.6 and pixels['Male'] > 0.6, pixels
  summary = evaluation['attribute_probe_summary']
  assert summary['sdae_best_t']['t'] in (0, 100) and summary['dm_best_t']['t'] in (0, 100)
  assert (workdir / 'evaluate' / 'attribute_ap_vs_t.png').stat().st_size > 0
  assert len(evaluation['timestep_probe']) == 4  # the official four groups of k = 64

  study = evaluation['counterfactual']
  assert (study['invert_steps'], study['generate_steps'], study['clip_x0']) == (4, 2, True)
  groups = set(study['groups'])
  assert len(groups) == 5 and counterfactual_evaluator.ALL_SUBSETS_LABEL in groups  # official 4 + control
  assert set(study['change_rates']) == groups
  for rates in study['change_rates'].values():
    assert list(rates) == sorted(sources.CELEBA_ATTRIBUTE_NAMES)
    for rate in rates.values():
      assert rate['pairs'] == 0 or 0 <= rate['took_b'] + rate['kept_a'] <= 1
  assert set(study['classifier_test_ap']) == set(sources.CELEBA_ATTRIBUTE_NAMES)
  assert set(study['pixel_distances']) == groups | {'reconstruction'}
  assert (workdir / 'evaluate' / 'counterfactuals.png').stat().st_size > 0
  # The headline numbers are in TensorBoard too, the per-attribute detail only in results.json.
  events = event_accumulator.EventAccumulator(str(workdir / 'evaluate'),
                                              size_guidance={'tensors': 0})
  events.Reload()
  logged = {tag: float(tensor_util.make_ndarray(events.Tensors(tag)[0].tensor_proto))
            for tag in events.Tags()['tensors']}
  assert logged['attribute_probe/pixels/test_mean_ap'] == pytest.approx(
      evaluation['attribute_probe']['pixels']['test_mean_ap'])
  assert logged['attribute_probe_summary/sdae_best_t/t'] == summary['sdae_best_t']['t']
  assert 'reconstruction/diti/psnr_db' in logged
  assert not any('per_attribute' in tag or 'change_rates' in tag for tag in logged)


def test_ffhq_config_runs_every_stage_and_label_free_counterfactuals(tmp_path):
  source, data_dir = tmp_path / 'images1024x1024', tmp_path / 'tfds'
  _write_ffhq(source)
  assert prepare.prepare('ffhq', str(source), str(data_dir)).num_examples == {'train': 40}
  config = _shrink(ffhq_config.get_config(), data_dir)
  # The SSL baselines train without labels here too; the CelebA test covers them.
  config.pipeline = tuple(s for s in config.pipeline if s not in ('simclr', 'simsiam'))
  assert tuple(config.diti.encoder_channels) == (64, 128, 256, 256, 256)
  workdir = tmp_path / 'run'
  stages = run.run(config, str(workdir))['stages']
  assert set(stages) == {'ddpm', 'diti', 'pdae', 'sdae', 'evaluate'}
  evaluation = stages['evaluate']
  assert not {'attribute_probe', 'categorical_probe', 'timestep_probe'} & set(evaluation)
  assert set(evaluation['reconstruction']) == {'diti', 'pdae'}
  study = evaluation['counterfactual']
  assert 'change_rates' not in study
  distances = study['pixel_distances']
  assert set(distances) == set(study['groups']) | {'reconstruction'}
  for reading in distances.values():
    assert reading['to_a'] >= 0 and reading['to_b'] >= 0 and 0 <= reading['toward_b'] <= 1
  assert (workdir / 'evaluate' / 'counterfactuals.png').stat().st_size > 0
