"""Lets clu's metric writers and periodic actions import when TensorFlow is not installed.

`clu.metric_writers/__init__.py` imports its TensorFlow summary writer unconditionally, so
without TensorFlow nothing of `clu.metric_writers` (nor `clu.periodic_actions`) imports.
jdiffrep writes TensorBoard events without TensorFlow (`jdiffrep.metric_writer`); before clu is
first imported, this registers a placeholder for the TF writer module whose `SummaryWriter`
says what to use instead. With TensorFlow installed it does nothing. `jdiffrep/__init__.py`
calls it, so it runs before any jdiffrep module imports clu.
"""

from __future__ import annotations

import importlib.util
import sys
import types

TF_SUMMARY_WRITER_MODULE = 'clu.metric_writers.summary_writer'


class SummaryWriterNeedsTensorFlow:  # pylint: disable=too-few-public-methods
  """Stands in for clu's TF `SummaryWriter` when TensorFlow is not installed."""

  def __init__(self, *args, **kwargs):
    del args, kwargs
    raise ImportError("clu's SummaryWriter needs TensorFlow (pip install 'jdiffrep[tf]'); "
                      'jdiffrep.metric_writer.EventFileWriter writes the same TensorBoard '
                      'events without it.')


def register_placeholder_without_tensorflow() -> bool:
  """Registers the placeholder when TensorFlow is missing; returns whether it did."""
  if (TF_SUMMARY_WRITER_MODULE in sys.modules
      or importlib.util.find_spec('tensorflow') is not None):
    return False
  placeholder = types.ModuleType(TF_SUMMARY_WRITER_MODULE, SummaryWriterNeedsTensorFlow.__doc__)
  placeholder.SummaryWriter = SummaryWriterNeedsTensorFlow
  sys.modules[TF_SUMMARY_WRITER_MODULE] = placeholder
  return True
