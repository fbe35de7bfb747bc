"""LFW attribute regression (DiTi's transfer test): the reader of LFW's original files, its
preparation, the regression probe's scores and the `attribute_regression` evaluator.

The fixture writes LFW's layout: `lfw_funneled/` and `lfw-deepfunneled/` with 250x250 JPEGs,
`lfw_attributes.txt` (a comment line, the tab-separated header, rows keyed by the person's name
with spaces and the image number) and the official split files. Each image is one colour over a
pattern shared by all images, and its 73 attribute scores are a fixed linear function of that
colour: the mean colour of an image determines its targets linearly.
"""

import json

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from jdiffrep import config as config_lib
from jdiffrep import prepare
from jdiffrep.data import pipeline
from jdiffrep.data import registry
from jdiffrep.data import sources
from jdiffrep.evaluate import metrics
from jdiffrep.evaluate import pipeline_eval
from jdiffrep.evaluate import probe
from jdiffrep.evaluate.evaluators import base
from jdiffrep.methods import representation
from tests.conftest import run_evaluators

TRAIN_PEOPLE = {'Aaron_Peirsol': 2, 'Ann_Veneman': 3, 'Jean-Pierre_Raffarin': 2}
TEST_PEOPLE = {'Bill_Gates': 2, 'Colin_Powell': 3}
NO_ATTRIBUTE_ROW = 'Colin_Powell/Colin_Powell_0002.jpg'  # skipped, as the official reader does
NAMES = tuple(f'Attribute {j}' for j in range(73))  # names with spaces, as LFW's
_RNG = np.random.default_rng(0)
WEIGHTS = _RNG.normal(size=(3, 73))  # targets = colour / 255 @ WEIGHTS + OFFSETS
OFFSETS = _RNG.normal(scale=0.5, size=73)


def _images():
  """[(relative path, colour [3])] of every image of both splits, in split-file order."""
  rng = np.random.default_rng(1)
  return [(f'{person}/{person}_{n:04d}.jpg', rng.integers(60, 196, 3))
          for people in (TRAIN_PEOPLE, TEST_PEOPLE) for person, count in people.items()
          for n in range(1, count + 1)]


def _targets(colour):
  return (colour / 255.0 @ WEIGHTS + OFFSETS).astype(np.float32)


def _pixels(colour, deep=False):
  """250x250 RGB: the colour over a diagonal gradient (+-40) that makes the crop visible."""
  rows, columns = np.mgrid[:250, :250]
  gradient = (rows + 2 * columns) / 750.0 * 80 - 40
  image = np.clip(colour[None, None, :] + gradient[..., None], 0, 255)
  return (255 - image if deep else image).astype(np.uint8)


def _write_lfw(root):
  for folder, deep in (('lfw_funneled', False), ('lfw-deepfunneled', True)):
    for relative, colour in _images():
      (root / folder / relative).parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(_pixels(colour, deep)).save(root / folder / relative, quality=95)
  rows = []
  for relative, colour in _images():
    if relative != NO_ATTRIBUTE_ROW:
      person, number = relative.split('/')[0], int(relative[-8:-4])
      values = '\t'.join(f'{v:.6f}' for v in _targets(colour))
      rows.append(f'{person.replace("_", " ")}\t{number}\t{values}')
  rows.append('Someone Else\t1\t' + '\t'.join(['0.5'] * 73))  # in no split: ignored
  (root / 'lfw_attributes.txt').write_text(
      '# Attribute scores of LFW images (test fixture)\n'
      + '\t'.join(('#', 'person', 'imagenum') + NAMES) + '\n' + '\n'.join(rows) + '\n')
  for filename, people in (('peopleDevTrain.txt', TRAIN_PEOPLE),
                           ('peopleDevTest.txt', TEST_PEOPLE)):
    (root / filename).write_text(
        f'{len(people)}\n' + ''.join(f'{p}\t{n}\n' for p, n in people.items()))


@pytest.fixture(scope='module')
def lfw(tmp_path_factory):
  """(source dir above torchvision's lfw-py/, data dir with LFW prepared at 32, its result)."""
  source = tmp_path_factory.mktemp('lfw_src')
  _write_lfw(source / 'lfw-py')
  data_dir = tmp_path_factory.mktemp('lfw_tfds')
  result = prepare.prepare('lfw', str(source), str(data_dir), resolution=32)
  return source, data_dir, result


def _split_names(people):
  return [f'{p}/{p}_{n:04d}.jpg' for p, count in people.items() for n in range(1, count + 1)]


# ------------------------------------------------------------------------------------- reader


def test_reader_keys_splits_skips_and_attribute_values(lfw):
  source, _, _ = lfw
  for root in (source, source / 'lfw-py'):  # torchvision's root, or its lfw-py/ itself
    read = sources.read_lfw(str(root))
    assert read.regression_target_names == NAMES and read.options == {'image_set': 'funneled'}
    assert [e.name for e in read.splits['train']] == _split_names(TRAIN_PEOPLE)
    assert [e.name for e in read.splits['test']] == [
        n for n in _split_names(TEST_PEOPLE) if n != NO_ATTRIBUTE_ROW]
    assert [(p.name, p.reason) for p in read.skipped] == [
        (NO_ATTRIBUTE_ROW, 'no row in lfw_attributes.txt')]
    assert read.problems == [] and read.image_size == (250, 250)
  colours = dict(_images())
  for example in read.splits['train'] + read.splits['test']:
    np.testing.assert_allclose(example.regression_targets, _targets(colours[example.name]),
                               atol=1e-6)
  assert sources.lfw_key('Jean-Pierre_Raffarin', 2) == 'Jean-Pierre Raffarin-2'


def test_attribute_file_rows_are_parsed_as_the_official_reader():
  header = '\t'.join(('#', 'person', 'imagenum') + NAMES)
  good = 'Ann Veneman\t3\t' + '\t'.join(str(j / 10) for j in range(73))
  text = '\n'.join(['# comment', header, good, 'Bad Row\t1\t0.5\tnot-a-number', ''])
  names, rows, problems = sources.parse_lfw_attributes(text)
  assert names == NAMES and list(rows) == ['Ann Veneman-3']
  np.testing.assert_allclose(rows['Ann Veneman-3'], np.arange(73) / 10, rtol=1e-6)
  assert [(p.name, p.reason) for p in problems] == [('Bad Row-1', 'malformed attribute row')]
  with pytest.raises(sources.SourceError, match="names 2 attributes .* not LFW's 73"):
    sources.parse_lfw_attributes('# comment\n#\tperson\timagenum\tMale\tAsian\n')


def test_a_missing_image_folder_names_both_folders_and_the_fix(tmp_path):
  (tmp_path / 'lfw-deepfunneled').mkdir()
  with pytest.raises(sources.SourceError) as error:
    sources.read_lfw(str(tmp_path))
  message = str(error.value)
  assert 'has no lfw_funneled/' in message
  assert 'It has lfw-deepfunneled/ (--image_set=deepfunneled)' in message
  with pytest.raises(ValueError, match='--image_set is for --dataset=lfw'):
    prepare.read_source('celeba', str(tmp_path), image_set='deepfunneled')


# ------------------------------------------------------------------------------------- prepare


def _expected(source, relative, resolution, folder='lfw_funneled'):
  """Independent reference of the official transform: PIL bilinear resize of the decoded JPEG
  to int(R * 1.1), then torchvision's centre crop (R = 32: 35 px, offset round(1.5) = 2;
  R = 16: 17 px, offset round(0.5) = 0)."""
  side, offset = {32: (35, 2), 16: (17, 0)}[resolution]
  with Image.open(source / 'lfw-py' / folder / relative) as image:
    resized = np.asarray(image.convert('RGB').resize((side, side), Image.Resampling.BILINEAR))
  return resized[offset:offset + resolution, offset:offset + resolution]


def _dataset_config(data_dir, resolution):
  config = config_lib.base_config().dataset
  config.name, config.data_dir, config.resolution = 'lfw', str(data_dir), resolution
  config.random_flip, config.read_threads = False, 1
  return config


def _read(config, split):
  batches = list(pipeline.iterate_split(config, split, batch_size=64))
  return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def test_prepare_writes_the_official_splits_crop_and_targets(lfw):
  source, data_dir, result = lfw
  assert result.num_examples == {'train': 7, 'test': 4} and result.problems == []
  assert [p.name for p in result.skipped] == [NO_ATTRIBUTE_ROW]
  assert "skipped, as the dataset's protocol does, no row in lfw_attributes.txt: 1" in (
      result.summary())
  report = json.loads((data_dir / 'jdiffrep_lfw' / '32' / 'prepare_report.json').read_text())
  assert (report['image_set'], report['resize'], report['num_skipped']) == (
      'funneled', 'bilinear', 1)
  config = _dataset_config(data_dir, 32)
  metadata = registry.prepared_metadata(config)
  assert metadata['regression_target_names'] == list(NAMES)
  assert metadata['image_set'] == 'funneled'
  colours = dict(_images())
  for split, people in (('train', TRAIN_PEOPLE), ('test', TEST_PEOPLE)):
    names = [n for n in _split_names(people) if n != NO_ATTRIBUTE_ROW]
    data = _read(config, split)
    assert data['image'].shape == (len(names), 32, 32, 3)
    assert data['regression_targets'].shape == (len(names), 73)
    assert data['regression_targets'].dtype == np.float32
    for i, name in enumerate(names):
      np.testing.assert_array_equal(pipeline.to_uint8(data['image'][i]),
                                    _expected(source, name, 32))
      np.testing.assert_allclose(data['regression_targets'][i], _targets(colours[name]),
                                 atol=1e-6)


def test_prepare_reads_the_deep_funneled_images_when_asked(lfw, tmp_path):
  source, data_dir, _ = lfw
  with pytest.raises(ValueError, match='prepared from the funneled images'):
    prepare.prepare('lfw', str(source), str(data_dir), resolution=32, image_set='deepfunneled')
  prepare.prepare('lfw', str(source), str(tmp_path), resolution=16, image_set='deepfunneled')
  config = _dataset_config(tmp_path, 16)
  assert registry.prepared_metadata(config)['image_set'] == 'deepfunneled'
  first = _split_names(TRAIN_PEOPLE)[0]
  np.testing.assert_array_equal(pipeline.to_uint8(_read(config, 'train')['image'][0]),
                                _expected(source, first, 16, 'lfw-deepfunneled'))


# ------------------------------------------------------------------------------------- scores


def test_pearson_r_and_mse_match_numpy():
  rng = np.random.default_rng(0)
  targets = rng.normal(size=(50, 4))
  predictions = 0.7 * targets + rng.normal(size=(50, 4))
  r = metrics.pearson_r(predictions, targets)
  for j in range(4):
    np.testing.assert_allclose(r[j], np.corrcoef(predictions[:, j], targets[:, j])[0, 1],
                               rtol=1e-12)
  np.testing.assert_allclose(metrics.mean_squared_error(predictions, targets),
                             ((predictions - targets) ** 2).mean(axis=0))
  predictions[:, 2] = 1.0  # a constant prediction has no correlation: NaN, as scipy's
  r = metrics.pearson_r(predictions, targets)
  assert np.isnan(r[2]) and metrics.mean_over_defined(r) == pytest.approx(np.delete(r, 2).mean())


def test_regression_reads_linear_targets_and_nothing_from_noise():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1200, 8)).astype(np.float32)
  y = x @ rng.normal(size=(8, 5)) + 0.05 * rng.normal(size=(1200, 5))
  linear = probe.train_regression_probe(x[:1000], y[:1000], x[1000:], y[1000:], epochs=20,
                                        learning_rate=3e-2, seed=0)
  assert linear.test_pearson_r.shape == linear.test_mse.shape == (20, 5)
  assert linear.mean_pearson_r[-1] > 0.99 and linear.mean_mse[-1] < 0.05
  noise = probe.train_regression_probe(rng.normal(size=(1000, 8)), y[:1000],
                                       rng.normal(size=(200, 8)), y[1000:], epochs=15, seed=0)
  assert abs(noise.mean_pearson_r[-1]) < 0.1
  best = noise.best_epoch_on_test
  assert noise.mean_pearson_r[best] == noise.mean_pearson_r.max()


# ------------------------------------------------------------------------------------- evaluator


def _mean_colour_stage():
  """A stage whose feature set 'colour' is each image's mean colour: its targets' linear basis."""
  features = lambda params, x: {'colour': x.mean(axis=(1, 2)) * params['scale']}
  return base.Stage(name='colour', method=None, params={'scale': jnp.float32(1.0)}, frozen=None,
                    representation=representation.Representation(features=features), step=1)


def _regression_config(data_dir):
  """The base config at 32x32 with only the attribute regression enabled."""
  config = config_lib.base_config()
  config.dataset.data_dir = str(data_dir)
  config.dataset.read_threads = 1
  config.evaluate.batch_size = 8
  for entry in config.evaluate.evals.values():
    entry.enabled = False
  entry = config.evaluate.evals.attribute_regression
  entry.enabled, entry.epochs, entry.learning_rate = True, 300, 0.05
  return config


def test_the_evaluator_regresses_every_feature_set_and_labels_the_test_selection(lfw, tmp_path):
  _, data_dir, _ = lfw
  config = _regression_config(data_dir)
  results = run_evaluators(config, tmp_path, {'colour': _mean_colour_stage()})
  assert results['evaluators']['attribute_regression'].startswith('ran')
  regression = results['attribute_regression']
  assert (regression['dataset'], regression['image_set']) == ('lfw', 'funneled')
  assert regression['num_examples'] == {'train': 7, 'test': 4}
  assert set(regression['feature_sets']) == {'pixels', 'colour'}
  colour = regression['feature_sets']['colour']
  assert colour['test_mean_pearson_r'] > 0.95  # the mean colour determines the targets
  assert colour['test_mean_pearson_r'] == colour['test_mean_pearson_r_per_epoch'][-1]
  assert list(colour['per_attribute']['pearson_r']) == list(NAMES)
  assert np.mean(list(colour['per_attribute']['mse'].values())) == pytest.approx(
      colour['test_mean_mse'])
  selected = colour['selected_on_test']
  assert colour['test_mean_pearson_r_per_epoch'][selected['epoch']] == max(
      colour['test_mean_pearson_r_per_epoch']) == selected['test_mean_pearson_r']
  scalars = pipeline_eval.headline_scalars(results)
  assert 'attribute_regression/feature_sets/colour/selected_on_test/test_mean_pearson_r' in (
      scalars)
  assert not any('per_attribute' in name for name in scalars)  # the detail stays in the JSON
  again = run_evaluators(config, tmp_path, {'colour': _mean_colour_stage()})
  assert again['evaluators']['attribute_regression'] == 'reused'
  assert again['attribute_regression'] == regression


def test_the_evaluator_is_skipped_with_the_prepare_command_when_lfw_is_missing(tmp_path):
  config = _regression_config(tmp_path / 'empty')
  results = run_evaluators(config, tmp_path, {'colour': _mean_colour_stage()})
  status = results['evaluators']['attribute_regression']
  assert status.startswith('skipped: the transfer dataset is not prepared')
  assert 'python -m jdiffrep.prepare --dataset=lfw' in status
  assert 'attribute_regression' not in results


def test_a_bad_transfer_dataset_is_named_with_the_valid_ones():
  config = config_lib.base_config()
  config.evaluate.evals.attribute_regression.dataset = 'celeba'
  with pytest.raises(ValueError, match=r"dataset='celeba' is not a dataset with regression "
                                       r"targets; choose one of \['lfw'\]"):
    config_lib.validate_config(config)
