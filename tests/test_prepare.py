"""`jdiffrep.prepare` on tiny fixtures in each dataset's original on-disk format.

Each test writes the original files (JPEG/PNG/WebP images, CelebA's attribute and partition
text files, CIFAR pickle batches, an LSUN LMDB), runs the real preparation, reads batches back
through the training pipeline and checks images, labels and splits against the fixture.
"""

import collections
import io
import json
import os
import pickle
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from jdiffrep import config as config_lib
from jdiffrep import images as images_lib
from jdiffrep import prepare
from jdiffrep import train
from jdiffrep.data import pipeline
from jdiffrep.data import prepared_builder
from jdiffrep.data import registry
from jdiffrep.data import safe_pickle
from jdiffrep.data import sources

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dataset_config(name, data_dir, resolution, tfds_config=None):
  config = config_lib.base_config().dataset
  config.name = name
  config.data_dir = str(data_dir)
  config.resolution = resolution
  config.tfds_config = tfds_config
  config.random_flip = False
  config.read_threads = 1
  return config


def _read_split(dataset_config, split):
  """Every example of `split` in record order, through the evaluation reader."""
  batches = list(pipeline.iterate_split(dataset_config, split, batch_size=64))
  return {
      key: (
          np.concatenate([b[key] for b in batches])
          if key != 'labels'
          else {k: np.concatenate([b[key][k] for b in batches]) for k in batches[0][key]}
      )
      for key in batches[0]
  }


def _resize(image, resolution, method=Image.Resampling.BICUBIC):
  """Independent reference: PIL resize of a uint8 image (bicubic unless told)."""
  return np.asarray(Image.fromarray(image).resize((resolution, resolution), method))


def _decoded(path):
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'))


def _key(image_in_unit_range):
  return pipeline.to_uint8(image_in_unit_range).tobytes()


# ------------------------------------------------------------------------------------- CelebA

CELEBA_SPLIT_OF = {
    '000001.jpg': 0,
    '000002.jpg': 0,
    '000003.jpg': 0,
    '000004.jpg': 0,
    '000005.jpg': 1,
    '000006.jpg': 2,
    '000007.jpg': 2,
}


def _celeba_image(index):
  """178x218 aligned-face stand-in: a distinct colour inside the official crop, grey outside."""
  image = np.full((218, 178, 3), 128, np.uint8)
  top, left, height, width = registry.CELEBA_CROP
  image[top : top + height, left : left + width] = (
      80 + 15 * index,
      170 - 10 * index,
      110 + 5 * index,
  )
  return image


def _celeba_attributes(index):
  return np.array([(index + j) % 3 == 0 for j in range(40)])


def _write_celeba(root, extra_partition=(), broken=(), wrong_size=()):
  image_dir = root / 'img_align_celeba'
  image_dir.mkdir(parents=True)
  partition = dict(CELEBA_SPLIT_OF, **{name: 0 for name in extra_partition})
  attr_rows = []
  for index, name in enumerate(sorted(partition), start=1):
    if name in broken:
      (image_dir / name).write_bytes(b'not a jpeg at all')
    elif name in wrong_size:
      Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(image_dir / name, quality=95)
    else:
      Image.fromarray(_celeba_image(index)).save(image_dir / name, quality=95)
    if name in CELEBA_SPLIT_OF or name in broken or name in wrong_size:  # extra: no attr row
      values = ' '.join('1' if v else '-1' for v in _celeba_attributes(index))
      attr_rows.append(f'{name} {values}')
  (root / 'list_attr_celeba.txt').write_text(
      f'{len(attr_rows)}\n{" ".join(sources.CELEBA_ATTRIBUTE_NAMES)}\n' + '\n'.join(attr_rows)
  )
  (root / 'list_eval_partition.txt').write_text(
      '\n'.join(f'{n} {s}' for n, s in sorted(partition.items()))
  )


def _expected_celeba(root, name):
  top, left, height, width = registry.CELEBA_CROP
  image = _decoded(root / 'img_align_celeba' / name)[top : top + height, left : left + width]
  return _resize(image, 64, Image.Resampling.BILINEAR)  # CelebA's filter: the official one


@pytest.fixture(scope='module')
def celeba(tmp_path_factory):
  root = tmp_path_factory.mktemp('celeba_src')
  _write_celeba(root)
  data_dir = tmp_path_factory.mktemp('celeba_tfds')
  result = prepare.prepare('celeba', str(root), str(data_dir))
  return root, data_dir, result


def test_celeba_images_attributes_and_splits_match_the_original_files(celeba):
  root, data_dir, result = celeba
  assert result.num_examples == {'train': 4, 'validation': 1, 'test': 2}
  assert result.problems == []
  config = _dataset_config('celeba', data_dir, 64)
  for split_id, split in enumerate(sources.CELEBA_SPLITS):
    names = [n for n, s in sorted(CELEBA_SPLIT_OF.items()) if s == split_id]
    data = _read_split(config, split)
    assert data['image'].shape == (len(names), 64, 64, 3)
    assert data['attributes'].shape == (len(names), 40) and data['attributes'].dtype == bool
    for i, name in enumerate(names):
      index = int(name[:6])
      np.testing.assert_array_equal(
          pipeline.to_uint8(data['image'][i]), _expected_celeba(root, name)
      )
      np.testing.assert_array_equal(data['attributes'][i], _celeba_attributes(index))
      # The crop keeps only the coloured square, none of the grey around it (JPEG noise aside).
      colour = _celeba_image(index)[120, 90]
      inner = pipeline.to_uint8(data['image'][i])[2:-2, 2:-2].reshape(-1, 3).mean(axis=0)
      assert np.abs(inner - colour).max() < 4


def test_celeba_training_batches_carry_each_image_with_its_attributes(celeba):
  root, data_dir, _ = celeba
  config = _dataset_config('celeba', data_dir, 64)
  batch = next(pipeline.make_train_iterator(config, global_batch_size=4, seed=0))
  expected = {
      _expected_celeba(root, n).tobytes(): _celeba_attributes(int(n[:6]))
      for n, s in CELEBA_SPLIT_OF.items()
      if s == 0
  }
  assert batch['image'].shape == (4, 64, 64, 3) and batch['image'].dtype == np.float32
  got = {_key(image): attributes for image, attributes in zip(batch['image'], batch['attributes'])}
  assert got.keys() == expected.keys()  # one epoch of the 4 train images, each once
  for key, attributes in got.items():
    np.testing.assert_array_equal(attributes, expected[key])


def test_celeba_problems_fail_or_are_skipped_and_listed(tmp_path):
  root = tmp_path / 'src'
  _write_celeba(
      root,
      extra_partition=('000008.jpg', '000009.jpg', '000010.jpg'),
      broken=('000009.jpg',),
      wrong_size=('000010.jpg',),
  )
  # 000008.jpg has no attribute row: found while scanning, before anything is written.
  with pytest.raises(prepared_builder.PrepareError, match='000008.jpg: missing attribute row'):
    prepare.prepare('celeba', str(root), str(tmp_path / 'fail'))
  assert not (tmp_path / 'fail' / 'jdiffrep_celeba' / '64' / '1.0.0').exists()

  result = prepare.prepare('celeba', str(root), str(tmp_path / 'skip'), on_error='skip')
  assert result.num_examples == {'train': 4, 'validation': 1, 'test': 2}
  reasons = collections.Counter((p.name, p.reason) for p in result.problems)
  assert reasons == {
      ('000008.jpg', 'missing attribute row'): 1,
      ('000009.jpg', 'unreadable image'): 1,
      ('000010.jpg', 'wrong image size'): 1,
  }
  summary = result.summary()
  assert 'unreadable image: 1 file(s): 000009.jpg' in summary
  assert 'wrong image size: 1 file(s): 000010.jpg (100x100, expected 218x178)' in summary
  report = (tmp_path / 'skip' / 'jdiffrep_celeba' / '64' / 'prepare_report.json').read_text()
  assert '000008.jpg' in report and '000009.jpg' in report and '000010.jpg' in report


# ------------------------------------------------------------------------------------- CIFAR-10


def _cifar_batch(seed, count=3):
  rng = np.random.default_rng(seed)
  return {
      b'batch_label': f'batch {seed}'.encode(),
      b'labels': [int(v) for v in rng.integers(0, 10, count)],
      b'data': rng.integers(0, 256, (count, 3072), dtype=np.uint8),
      b'filenames': [f'img_{seed}_{i}.png'.encode() for i in range(count)],
  }


@pytest.fixture(scope='module')
def cifar(tmp_path_factory):
  root = tmp_path_factory.mktemp('cifar_src') / 'cifar-10-batches-py'
  root.mkdir()
  batches = {}
  for seed, name in enumerate(sources.CIFAR10_TRAIN_BATCHES + sources.CIFAR10_TEST_BATCHES):
    batches[name] = _cifar_batch(seed)
    (root / name).write_bytes(pickle.dumps(batches[name], protocol=3))
  data_dir = tmp_path_factory.mktemp('cifar_tfds')
  result = prepare.prepare('cifar10', str(root.parent), str(data_dir))
  return batches, data_dir, result


def _cifar_images(batch):
  return batch[b'data'].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def test_cifar10_pixels_and_labels_are_exact(cifar):
  batches, data_dir, result = cifar
  assert result.num_examples == {'train': 15, 'test': 3}
  config = _dataset_config('cifar10', data_dir, 32)
  for split, names in (
      ('train', sources.CIFAR10_TRAIN_BATCHES),
      ('test', sources.CIFAR10_TEST_BATCHES),
  ):
    data = _read_split(config, split)
    want_images = np.concatenate([_cifar_images(batches[n]) for n in names])
    want_labels = np.concatenate([batches[n][b'labels'] for n in names])
    np.testing.assert_array_equal(pipeline.to_uint8(data['image']), want_images)
    np.testing.assert_array_equal(data['labels']['label'], want_labels)
    assert 'attributes' not in data


def test_cifar10_train_iterator_is_sharded_deterministic_and_resumable(cifar):
  _, data_dir, _ = cifar
  config = _dataset_config('cifar10', data_dir, 32)
  halves = [
      pipeline.make_train_iterator(
          config, global_batch_size=2, seed=1, process_index=k, process_count=2
      )
      for k in (0, 1)
  ]
  seen = [{_key(im) for _ in range(7) for im in next(it)['image']} for it in halves]
  assert len(seen[0]) == len(seen[1]) == 7 and not seen[0] & seen[1]  # 15 // 2 each, disjoint
  a = pipeline.make_train_iterator(config, global_batch_size=4, seed=5)
  b = pipeline.make_train_iterator(config, global_batch_size=4, seed=5)
  next(a), next(b)
  state = a.get_state()
  want = [next(a)['image'] for _ in range(3)]
  b.set_state(state)
  for image in want:
    np.testing.assert_array_equal(next(b)['image'], image)


class _RunsCode:
  """Pickles into a call of os.system: what a malicious 'CIFAR batch' would hold."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


def test_restricted_unpickler_refuses_code_and_loads_arrays(tmp_path):
  marker = tmp_path / 'pwned'
  evil = pickle.dumps({b'data': _RunsCode(marker)}, protocol=3)
  with pytest.raises(safe_pickle.UnsafePickleError, match='system'):
    safe_pickle.loads(evil)
  assert not marker.exists()
  array = np.arange(12, dtype=np.uint8).reshape(3, 4)
  loaded = safe_pickle.loads(pickle.dumps({b'data': array, b'labels': [1, 2]}, protocol=3))
  np.testing.assert_array_equal(loaded[b'data'], array)
  assert loaded[b'data'].dtype == np.uint8 and loaded[b'labels'] == [1, 2]


# ------------------------------------------------------------------------------------- FFHQ


def test_ffhq_pngs_are_resized_to_128_and_non_square_images_reported(tmp_path):
  root = tmp_path / 'images1024x1024'
  rng = np.random.default_rng(0)
  originals = {}
  for name in ('00000/00000.png', '00000/00001.png', '01000/01000.png'):
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    originals[name] = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(originals[name]).save(root / name)
  Image.fromarray(np.zeros((256, 200, 3), np.uint8)).save(root / '00000' / 'crop.png')
  with pytest.raises(prepared_builder.PrepareError, match='crop.png: wrong image size'):
    prepare.prepare('ffhq', str(root), str(tmp_path / 'fail'))
  result = prepare.prepare('ffhq', str(root), str(tmp_path / 'tfds'), on_error='skip')
  assert result.num_examples == {'train': 3}
  assert [(p.name, p.reason) for p in result.problems] == [('00000/crop.png', 'wrong image size')]
  data = _read_split(_dataset_config('ffhq', tmp_path / 'tfds', 128), 'train')
  want = np.stack([_resize(originals[n], 128, Image.Resampling.BILINEAR)
                   for n in sorted(originals)])
  np.testing.assert_array_equal(pipeline.to_uint8(data['image']), want)
  report = json.loads((tmp_path / 'tfds' / 'jdiffrep_ffhq' / '128' / 'prepare_report.json')
                      .read_text())
  assert report['resize'] == 'bilinear'
  # --resize overrides the dataset's filter.
  prepare.prepare('ffhq', str(root), str(tmp_path / 'bicubic'), on_error='skip', resize='bicubic')
  data = _read_split(_dataset_config('ffhq', tmp_path / 'bicubic', 128), 'train')
  np.testing.assert_array_equal(pipeline.to_uint8(data['image']),
                                np.stack([_resize(originals[n], 128) for n in sorted(originals)]))


# ------------------------------------------------------------------------------------- LSUN


def test_bedroom_lmdb_images_are_centre_cropped_and_resized(tmp_path):
  lmdb = pytest.importorskip('lmdb')
  rng = np.random.default_rng(0)
  want = {}
  for split, suffix, count in (('train', 'train', 3), ('validation', 'val', 2)):
    env = lmdb.open(str(tmp_path / f'bedroom_{suffix}_lmdb'), map_size=1 << 24)
    want[split] = []
    with env.begin(write=True) as txn:
      for i in range(count):
        image = rng.integers(0, 256, (256, 341, 3), dtype=np.uint8)  # LSUN: short side 256
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format='WEBP', lossless=True)
        txn.put(f'{split}{i:04d}'.encode(), buffer.getvalue())
        want[split].append(_resize(image[:, 42 : 42 + 256], 128,  # centred 256x256 square
                                   Image.Resampling.BILINEAR))
    env.close()
  result = prepare.prepare('bedroom', str(tmp_path), str(tmp_path / 'tfds'))
  assert result.num_examples == {'train': 3, 'validation': 2}
  config = _dataset_config('bedroom', tmp_path / 'tfds', 128)
  for split in ('train', 'validation'):
    data = _read_split(config, split)
    np.testing.assert_array_equal(pipeline.to_uint8(data['image']), np.stack(want[split]))


# ------------------------------------------------------------------------------------- folders


def _write_folder(root, names, size=(48, 40)):
  rng = np.random.default_rng(1)
  images = {}
  for name in names:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    images[name] = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(images[name]).save(root / name)
  return images


def test_folder_with_attribute_csv_holds_out_a_stable_test_split(tmp_path):
  names = [f'{d}/img{i:02d}.png' for d in ('a', 'b') for i in range(10)]
  images = _write_folder(tmp_path / 'src', names)
  attributes = {n: np.array([i % 2 == 0, i % 3 == 0]) for i, n in enumerate(names)}
  csv = tmp_path / 'attrs.csv'
  csv.write_text(
      'filename,Smiling,Young\n'
      + ''.join(f'{n},{int(a[0])},{"1" if a[1] else "-1"}\n' for n, a in attributes.items())
  )
  result = prepare.prepare(
      'folder',
      str(tmp_path / 'src'),
      str(tmp_path / 'tfds'),
      resolution=32,
      name='mine',
      labels_csv=str(csv),
      test_fraction=0.3,
  )
  test_names = [n for n in names if sources.held_out(n, 0.3)]
  assert 0 < len(test_names) < len(names)
  assert result.num_examples == {'train': len(names) - len(test_names), 'test': len(test_names)}
  config = _dataset_config('folder', tmp_path / 'tfds', 32, tfds_config='mine')
  for split, split_names in (
      ('test', test_names),
      ('train', [n for n in names if n not in test_names]),
  ):
    data = _read_split(config, split)
    want = np.stack([_resize(images[n][4:44], 32) for n in split_names])  # centred 40x40
    np.testing.assert_array_equal(pipeline.to_uint8(data['image']), want)
    np.testing.assert_array_equal(
        data['attributes'], np.stack([attributes[n] for n in split_names])
    )


def test_folder_with_class_csv_and_split_folders(tmp_path):
  names = ['train/x.png', 'train/y.jpg', 'train/z.png', 'test/w.png', 'test/v.png']
  images = _write_folder(tmp_path / 'src', names, size=(32, 32))
  classes = {'train/x.png': 'dog', 'train/y.jpg': 'cat', 'train/z.png': 'dog', 'test/w.png': 'cat'}
  csv = tmp_path / 'labels.csv'
  csv.write_text(
      'filename,label\n'
      + ''.join(f'{n},{c}\n' for n, c in classes.items())
      + 'train/gone.png,cat\n'
  )
  with pytest.raises(prepared_builder.PrepareError, match='problem'):
    prepare.prepare(
        'folder', str(tmp_path / 'src'), str(tmp_path / 'fail'), name='pets', labels_csv=str(csv)
    )
  result = prepare.prepare(
      'folder',
      str(tmp_path / 'src'),
      str(tmp_path / 'tfds'),
      name='pets',
      resolution=32,
      labels_csv=str(csv),
      on_error='skip',
  )
  assert sorted((p.name, p.reason) for p in result.problems) == [
      ('test/v.png', 'no row in the labels CSV'),
      ('train/gone.png', 'listed in the CSV but not found'),
  ]
  config = _dataset_config('folder', tmp_path / 'tfds', 32, tfds_config='pets')
  train_data = _read_split(config, 'train')
  np.testing.assert_array_equal(
      train_data['labels']['label'], [1, 0, 1]
  )  # x dog, y cat, z dog; cat=0, dog=1
  np.testing.assert_array_equal(pipeline.to_uint8(train_data['image'][0]), images['train/x.png'])
  y_jpeg = _decoded(tmp_path / 'src' / 'train' / 'y.jpg')
  np.testing.assert_array_equal(pipeline.to_uint8(train_data['image'][1]), y_jpeg)
  test_data = _read_split(config, 'test')
  np.testing.assert_array_equal(pipeline.to_uint8(test_data['image']), images['test/w.png'][None])


def test_a_class_sorted_folder_is_sliced_and_limited_across_its_classes(tmp_path):
  """A folder sorted by class (500 MNIST digits of each class in file order, say): the probes'
  held-out 'train[90%:]' and a limit must not be the last or first block of one class."""
  names = [f'c{c}/img{i:02d}.png' for c in range(3) for i in range(12)]
  _write_folder(tmp_path / 'src', names, size=(8, 8))
  csv = tmp_path / 'labels.csv'
  csv.write_text('filename,label\n' + ''.join(f'{n},{n[1]}\n' for n in names))
  prepare.prepare('folder', str(tmp_path / 'src'), str(tmp_path / 'tfds'), resolution=8,
                  name='sorted', labels_csv=str(csv), test_fraction=0.2)
  config = _dataset_config('folder', tmp_path / 'tfds', 8, tfds_config='sorted')
  whole = _read_split(config, 'train')
  labels = whole['labels']['label']
  assert list(labels) == sorted(labels)  # records keep the folder's order
  train, held = (_read_split(config, s) for s in ('train[:90%]', 'train[90%:]'))
  assert len(train['image']) + len(held['image']) == len(labels)
  assert len(held['image']) == len(labels) - len(labels) * 90 // 100
  assert len(set(held['labels']['label'])) >= 2  # the last 10% of records: class 2 only
  # The two slices partition the split: every image once.
  key = lambda images: sorted(map(bytes, pipeline.to_uint8(images)))
  assert key(np.concatenate([train['image'], held['image']])) == key(whole['image'])
  limited = list(pipeline.iterate_split(config, 'train', 64, limit=6))[0]
  assert len(set(limited['labels']['label'])) >= 2  # the first 6 records: class 0 only
  again = list(pipeline.iterate_split(config, 'train', 64, limit=6))[0]
  np.testing.assert_array_equal(again['image'], limited['image'])  # one fixed permutation


# ------------------------------------------------------------------------------------- errors


def test_unprepared_dataset_message_names_directory_and_exact_command(tmp_path):
  """(tests/test_train.py checks that training stops with it before compiling.)"""
  from configs import ffhq as ffhq_config  # pylint: disable=g-import-not-at-top

  config = ffhq_config.get_config().dataset
  config.data_dir = str(tmp_path / 'empty')
  with pytest.raises(registry.DatasetNotPreparedError) as error:
    registry.ensure_prepared(config)
  message = str(error.value)
  assert "Dataset 'ffhq' at 128x128" in message
  assert f'searched {tmp_path}/empty/jdiffrep_ffhq/128/1.0.0' in message
  assert (
      f'python -m jdiffrep.prepare --dataset=ffhq --source=DIR_WITH_THE_FFHQ_PNGS '
      f'--data_dir={tmp_path}/empty --resolution=128'
  ) in message


def test_folder_dataset_without_a_name_says_which_field_to_set(tmp_path):
  config = _dataset_config('folder', tmp_path, 64)
  with pytest.raises(ValueError, match='config.dataset.tfds_config'):
    registry.ensure_prepared(config)


def test_folder_without_a_test_split_is_refused(tmp_path):
  _write_folder(tmp_path / 'src', ['a.png', 'b.png'], size=(16, 16))
  with pytest.raises(sources.SourceError, match='--test_fraction > 0'):
    prepare.prepare('folder', str(tmp_path / 'src'), str(tmp_path), name='x', test_fraction=0)


def test_source_in_the_wrong_format_says_what_is_missing(tmp_path):
  with pytest.raises(sources.SourceError, match='list_attr_celeba.txt'):
    (tmp_path / 'img_align_celeba').mkdir()
    prepare.prepare('celeba', str(tmp_path), str(tmp_path / 'tfds'))
  with pytest.raises(sources.SourceError, match='data_batch_1'):
    prepare.prepare('cifar10', str(tmp_path), str(tmp_path / 'tfds'))


def test_command_line_prepares_and_prints_the_summary(tmp_path):
  _write_folder(tmp_path / 'src', ['train/p.png', 'train/q.png', 'test/r.png'], size=(16, 16))
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'jdiffrep.prepare',
          '--dataset=folder',
          f'--source={tmp_path}/src',
          f'--data_dir={tmp_path}/tfds',
          '--name=tiny',
          '--resolution=16',
      ],
      capture_output=True,
      text=True,
      env=env,
      cwd=REPO_ROOT,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Prepared jdiffrep_folder/tiny_16' in proc.stdout
  assert 'train 2, test 1 images.' in proc.stdout
  assert (
      tmp_path / 'tfds' / 'jdiffrep_folder' / 'tiny_16' / '1.0.0' / 'dataset_info.json'
  ).exists()


@pytest.mark.slow
def test_trainer_runs_on_a_prepared_dataset(celeba, tmp_path, tiny_config):
  """The trainer reads a prepared real dataset (64x64, attributes) exactly as it reads shapes."""
  _, data_dir, _ = celeba
  config = tiny_config
  config.dataset.update(
      name='celeba', resolution=64, data_dir=str(data_dir), tfds_config=None, random_flip=True
  )
  config.update(batch_size=4, num_train_steps=2, log_every_steps=1, checkpoint_every_steps=2)
  config.sample.num_images = 2  # the fixture's test split holds 2 images
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['steps'] == 2 and np.isfinite(results['final_loss'])
  assert (tmp_path / 'run' / 'checkpoints' / '2').exists()


@pytest.mark.parametrize('dataset', ['celeba', 'cifar10'])
def test_tfds_own_builder_is_a_source_with_its_feature_keys_mapped(dataset, tmp_path,
                                                                   monkeypatch):
  """TFDS's `celeb_a` / `cifar10` (mocked: they need downloads) convert like the originals."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  # tfds's mock encodes its random NumPy images with TensorFlow, which jdiffrep does not install;
  # PIL's lossless PNG gives the mock the same pixels (real TFDS builds come encoded already).
  from tensorflow_datasets.core.features import image_feature  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(image_feature._ImageEncoder, '_encode_image',  # pylint: disable=protected-access
                      lambda self, image: images_lib.encode_png(image))
  with tfds.testing.mock_data(num_examples=3):
    source = prepare.read_source(dataset, 'tfds', data_dir=str(tmp_path / 'tfds'))
    name, splits = registry.get_spec(dataset).tfds_equivalent
    originals = {
        s: [tfds.data_source(name, split=s, data_dir=str(tmp_path))[i] for i in range(3)]
        for s in splits
    }
  assert list(source.splits) == list(splits)
  result = prepare.write_source(dataset, source, str(tmp_path / 'out'))
  assert result.num_examples == {s: 3 for s in splits}
  resolution = registry.get_spec(dataset).default_resolution
  config = _dataset_config(dataset, tmp_path / 'out', resolution)
  for split in splits:
    data = _read_split(config, split)
    for i, original in enumerate(originals[split]):
      if dataset == 'celeba':
        top, left, height, width = registry.CELEBA_CROP
        want = _resize(original['image'][top : top + height, left : left + width], resolution,
                       Image.Resampling.BILINEAR)
        np.testing.assert_array_equal(
            data['attributes'][i],
            [original['attributes'][n] for n in sources.CELEBA_ATTRIBUTE_NAMES],
        )
      else:
        want = original['image']
        assert data['labels']['label'][i] == original['label']
      np.testing.assert_array_equal(pipeline.to_uint8(data['image'][i]), want)


def test_tfds_source_not_built_says_how_to_build_it(tmp_path):
  with pytest.raises(sources.SourceError, match='tfds build cifar10'):
    prepare.prepare('cifar10', 'tfds', str(tmp_path))


def test_worker_count_does_not_change_the_records(tmp_path):
  names = [f'img{i:02d}.png' for i in range(24)]
  _write_folder(tmp_path / 'src', names, size=(20, 24))
  (tmp_path / 'src' / 'img05.png').write_bytes(b'\x89PNG truncated')  # left out, in order
  data = {}
  for workers in (1, 3):
    out = tmp_path / f'out{workers}'
    result = prepare.prepare(
        'folder',
        str(tmp_path / 'src'),
        str(out),
        name='w',
        resolution=16,
        on_error='skip',
        num_workers=workers,
    )
    assert [(p.name, p.reason) for p in result.problems] == [('img05.png', 'unreadable image')]
    config = _dataset_config('folder', out, 16, tfds_config='w')
    data[workers] = {s: _read_split(config, s)['image'] for s in result.num_examples}
  assert data[1].keys() == data[3].keys()
  for split in data[1]:
    np.testing.assert_array_equal(data[1][split], data[3][split])


def test_command_line_error_is_one_line_naming_the_fix(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'jdiffrep.prepare',
          '--dataset=cifar10',
          f'--source={tmp_path}',
          f'--data_dir={tmp_path}/tfds',
      ],
      capture_output=True,
      text=True,
      env=env,
      cwd=REPO_ROOT,
      timeout=300,
  )
  assert proc.returncode == 1
  last_line = proc.stderr.strip().splitlines()[-1]
  assert last_line.startswith('jdiffrep.prepare: ') and 'data_batch_1' in last_line
  assert 'Traceback' not in proc.stderr


def test_tfds_data_dir_environment_variable_is_the_default(cifar, monkeypatch):
  batches, data_dir, _ = cifar
  monkeypatch.setenv('TFDS_DATA_DIR', str(data_dir))
  config = _dataset_config('cifar10', data_dir, 32)
  config.data_dir = None
  data = _read_split(config, 'test')
  np.testing.assert_array_equal(
      pipeline.to_uint8(data['image']), _cifar_images(batches['test_batch'])
  )


def test_every_dataset_is_one_spec_in_the_registry():
  """Reader, builder, crop, filter and TFDS equivalent all come from `registry.DATASETS`."""
  assert prepare.PREPARABLE == ('bedroom', 'celeba', 'cifar10', 'ffhq', 'folder', 'lfw')
  celeba = registry.get_spec('celeba')
  builder = prepared_builder.builder_for(celeba)
  assert builder.name == 'jdiffrep_celeba' and builder is prepared_builder.builder_for(celeba)
  assert issubclass(builder, prepared_builder.PreparedImages)
  assert (celeba.crop, celeba.resize, celeba.tfds_equivalent[0]) == (
      registry.CELEBA_CROP, 'bilinear', 'celeb_a')
  with pytest.raises(ValueError, match="'shapes' has no original files"):
    registry.get_spec('shapes').read_source('/nowhere')
  with pytest.raises(ValueError, match="resize='nearest'"):
    registry.resize_image(np.zeros((4, 4, 3), np.uint8), 2, 'nearest')
