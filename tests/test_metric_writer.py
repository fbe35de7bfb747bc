"""TensorBoard events without TensorFlow: the writer, read back with TensorBoard's own reader."""

import importlib.util
import os

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from jdiffrep import clu_compat
from jdiffrep import metric_writer


def _load(logdir) -> event_accumulator.EventAccumulator:
  events = event_accumulator.EventAccumulator(str(logdir), size_guidance={'tensors': 0})
  events.Reload()
  return events


def _values(events, tag):
  return [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]


def test_local_events_append_to_one_file_across_flushes(tmp_path):
  writer = metric_writer.EventFileWriter(tmp_path)
  writer.write_scalars(1, {'loss': 0.5, 'lr': 1e-3})
  writer.flush()
  writer.write_scalars(2, {'loss': np.float32(0.25)})
  writer.write_texts(2, {'note': 'halfway'})
  rng = np.random.default_rng(0)
  weights = rng.standard_normal(1000)
  writer.write_histograms(2, {'weights': weights}, num_buckets={'weights': 7})
  writer.write_images(2, {'grid': rng.integers(0, 256, (2, 6, 10, 3), dtype=np.uint8),
                          'gray': rng.random((5, 4, 1))})  # float [0, 1], one image, 1 channel
  writer.close()

  assert [p.name for p in writer.event_files] == [n for n in os.listdir(tmp_path)]
  assert len(writer.event_files) == 1
  events = _load(tmp_path)
  assert set(events.PluginTagToContent('scalars')) == {'loss', 'lr'}
  assert [(s, float(v)) for s, v in _values(events, 'loss')] == [(1, 0.5), (2, 0.25)]
  assert _values(events, 'note')[0][1] == b'halfway'
  ((_, histogram),) = _values(events, 'weights')
  assert histogram.shape == (7, 3) and histogram[:, 2].sum() == 1000  # [left, right, count]
  assert (histogram[0, 0], histogram[-1, 1]) == pytest.approx((weights.min(), weights.max()))
  ((_, grid),) = _values(events, 'grid')
  assert (int(grid[0]), int(grid[1]), len(grid)) == (10, 6, 4)  # width, height, 2 PNGs
  ((_, gray),) = _values(events, 'gray')
  assert (int(gray[0]), int(gray[1]), len(gray)) == (4, 5, 3)


def test_closed_writer_refuses_more_events(tmp_path):
  writer = metric_writer.EventFileWriter(tmp_path)
  writer.close()
  with pytest.raises(ValueError, match='closed'):
    writer.write_scalars(1, {'loss': 1.0})


def test_tensorflow_is_not_needed():
  """The project's dependencies do not bring TensorFlow; clu then imports with a placeholder
  for its TF writer that names the fix. On CI (CI=true) TensorFlow here is a failure."""
  if importlib.util.find_spec('tensorflow') is not None:
    if os.environ.get('CI', '').lower() == 'true':
      pytest.fail("TensorFlow is installed by `pip install -e '.[test]'`: a dependency brought "
                  'it back; it belongs in the `tf` extra only.')
    pytest.skip('TensorFlow is installed in this environment')
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  assert metric_writers.SummaryWriter is clu_compat.SummaryWriterNeedsTensorFlow
  with pytest.raises(ImportError, match=r"jdiffrep\[tf\]"):
    metric_writers.SummaryWriter('/tmp/never')
