"""TensorBoard event files without TensorFlow, behind clu's `MetricWriter` interface.

clu writes TensorBoard summaries through TensorFlow, a dependency of hundreds of MB that a GPU
image or an offline cluster often lacks. `EventFileWriter` writes the same events (scalars,
images, texts, histograms, hparams, raw tensors, in the plugin formats `tf.summary` uses) with
the protos and record framing of the `tensorboard` package, and all file I/O through
`etils.epath`, so the log dir may be a `gs://` URL.

A local log dir gets one event file, appended at each `flush`. On an object store (a URL) an
object cannot be appended to, so each `flush` writes the events since the last one as a new,
complete event file; TensorBoard reads every event file of a directory in name order.

clu itself imports without TensorFlow thanks to `jdiffrep.clu_compat` (run by the package).
"""

from __future__ import annotations

import io
import itertools
import os
import socket
import threading
import time
from typing import Any, Mapping

from absl import logging
from clu.internal import utils as clu_utils
from clu.metric_writers import async_writer
from clu.metric_writers import interface
from clu.metric_writers import logging_writer
from etils import epath
import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.histogram import summary_v2 as histogram_summary
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer import record_writer
from tensorboard.util import tensor_util

from jdiffrep import images as images_lib
from jdiffrep import paths

MetricWriter = interface.MetricWriter  # clu's interface, which every writer here implements
_FILE_COUNTER = itertools.count()


class EventFileWriter(MetricWriter):
  """Writes TensorBoard event files under `logdir` (local or a URL) without TensorFlow."""

  def __init__(self, logdir: epath.PathLike):
    super().__init__()
    self._logdir = epath.Path(logdir)
    self._logdir.mkdir(parents=True, exist_ok=True)
    self._append = not paths.is_url(logdir)
    self._prefix = (f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.'
                    f'{os.getpid()}.{next(_FILE_COUNTER)}')
    self._parts = itertools.count()
    self._lock = threading.Lock()
    self._buffer = io.BytesIO()
    self._records = record_writer.RecordWriter(self._buffer)
    self._path: epath.Path | None = None
    self._closed = False
    self._add_event(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  @property
  def event_files(self) -> list[epath.Path]:
    """The event files written so far."""
    return sorted(self._logdir.glob(self._prefix + '*'))

  # ---------------------------------------------------------------- events
  def _add_event(self, event: event_pb2.Event) -> None:
    with self._lock:
      if self._closed:
        raise ValueError(f'EventFileWriter for {self._logdir} is closed.')
      self._records.write(event.SerializeToString())

  def _add_values(self, step: int, values: list[summary_pb2.Summary.Value]) -> None:
    if values:
      self._add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                      summary=summary_pb2.Summary(value=values)))

  @staticmethod
  def _tensor_value(tag: str, value, metadata=None) -> summary_pb2.Summary.Value:
    return summary_pb2.Summary.Value(tag=tag, metadata=metadata,
                                     tensor=tensor_util.make_tensor_proto(value))

  # ---------------------------------------------------------------- MetricWriter
  def write_summaries(self, step: int, values: Mapping[str, Any],
                      metadata: Mapping[str, Any] | None = None):
    self._add_values(step, [
        self._tensor_value(key, np.asarray(value), (metadata or {}).get(key))
        for key, value in values.items()])

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self._add_values(step, [
        self._tensor_value(key, np.asarray(value, np.float32).reshape(()),
                           scalar_metadata.create_summary_metadata(display_name=key,
                                                                   description=''))
        for key, value in scalars.items()])

  def write_images(self, step: int, images: Mapping[str, Any]):
    """images: name -> [N, H, W, C] or [H, W, C] uint8 (or float in [0, 1]), C in {1, 3, 4}."""
    values = []
    for key, value in images.items():
      value = np.asarray(value)
      if value.ndim == 3:
        value = value[None]
      if value.dtype != np.uint8:
        value = (np.clip(value, 0.0, 1.0) * 255.0).round().astype(np.uint8)
      height, width = value.shape[1:3]
      encoded = [str(width).encode(), str(height).encode()]
      encoded += [images_lib.encode_png(image) for image in value]
      values.append(self._tensor_value(
          key, np.array(encoded, dtype=object),
          image_metadata.create_summary_metadata(display_name=key, description='')))
    self._add_values(step, values)

  def write_videos(self, step: int, videos: Mapping[str, Any]):
    del step, videos
    logging.log_first_n(logging.WARNING, 'EventFileWriter does not write videos.', 1)

  def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int):
    del step, audios, sample_rate
    logging.log_first_n(logging.WARNING, 'EventFileWriter does not write audio.', 1)

  def write_texts(self, step: int, texts: Mapping[str, str]):
    self._add_values(step, [
        self._tensor_value(key, np.array(text.encode(), dtype=object),
                           text_metadata.create_summary_metadata(display_name=key,
                                                                 description=''))
        for key, text in texts.items()])

  def write_histograms(self, step: int, arrays: Mapping[str, Any],
                       num_buckets: Mapping[str, int] | None = None):
    self._add_values(step, [
        value for key, array in arrays.items()
        for value in histogram_summary.histogram_pb(
            key, np.asarray(array), buckets=(num_buckets or {}).get(key)).value])

  def write_hparams(self, hparams: Mapping[str, Any]):
    flat = dict(clu_utils.flatten_dict(hparams))
    self._add_values(0, list(hparams_summary.hparams_pb(flat).value))

  def flush(self):
    with self._lock:
      data = self._buffer.getvalue()
      if not data:
        return
      if self._append:
        if self._path is None:
          self._path = self._logdir / self._prefix
        with self._path.open('ab') as f:
          f.write(data)
      else:  # an object store: one complete object per flush
        (self._logdir / f'{self._prefix}.{next(self._parts):06d}').write_bytes(data)
      self._buffer.seek(0)
      self._buffer.truncate()

  def close(self):
    self.flush()
    with self._lock:
      self._closed = True


def create_writer(logdir: epath.PathLike, *, just_logging: bool = False) -> MetricWriter:
  """clu's default writer (absl logging + TensorBoard events under `logdir`), asynchronous.

  `just_logging`: only log (the processes other than the chief in a multi-process job).
  """
  writers = [logging_writer.LoggingWriter()]
  if not just_logging:
    writers.append(EventFileWriter(logdir))
  return async_writer.AsyncMultiWriter(writers)
