r"""Where our DiT train step's time goes: XLA's own ops, summed by kind and by output shape.

  python -m benchmarks.profile_step --model=S/2 --resolution=32 --batch=32 \
      [--profile_steps=1] [--top=15]

Builds the step `benchmarks.throughput --bench=dit` times (same flags: --model, --resolution,
--batch, --dtype, --attention), runs `--warmup` steps, then traces `--profile_steps` more with
`jax.profiler` (XLA:CPU's per-op trace events switched on with
`--xla_cpu_enable_xprof_traceme=true`; on GPU, command buffers off so that each kernel names
its HLO instruction) and sums each op's time:

  by kind   ynn_fusion (matmuls through YNNPACK), dot / dot_general (other matmuls),
            copy_bitcast_fusion (transposes), multiply_add_fusion (element-wise) ...
  by shape  (kind, output shape) -> total ms, calls, ms per call: which products and which
            transposes cost most.

Ops can overlap on the worker threads, so the per-op total may differ from the wall time.
Like `benchmarks.throughput`, it first waits (at most `--idle_wait` seconds) for the 1-minute
load to fall below `--idle_load_per_core` per usable core, and marks the row `busy` (with its
reasons) on CPU when it did not.
Appends one JSON row (command, commit, host, step seconds, both tables) to `--profile_out`;
`--trace_copy=FILE` keeps the raw trace too.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags

from benchmarks import provenance
from benchmarks import records
from jdiffrep import cpu_runtime

_STEPS = flags.DEFINE_integer('profile_steps', 1, 'Steps traced.', lower_bound=1)
_TOP = flags.DEFINE_integer('top', 15, 'Rows of the by-shape table to print and record.',
                            lower_bound=1)
_TRACE_COPY = flags.DEFINE_string(
    'trace_copy', '', 'Also copy the raw trace (trace.json.gz) to this file, for a closer look '
    'elsewhere (for instance in Perfetto).')
_PROFILE_OUT = flags.DEFINE_string(
    'profile_out', '', 'JSONL file to append to (default '
    'benchmarks/results/<platform>_step_profile.jsonl; "-" for none).')

# XLA:CPU's per-op trace events on; XLA:GPU's command buffers (CUDA graphs) off, since kernels
# replayed from a graph are not attributed to their HLO instructions in the trace.
TRACE_FLAGS = '--xla_cpu_enable_xprof_traceme=true --xla_gpu_enable_command_buffer='


def op_kind(name: str) -> str:
  """'copy_bitcast_fusion.39' -> 'copy_bitcast_fusion'."""
  return re.sub(r'\.\d+$', '', name)


def output_shapes(hlo_text: str) -> dict[str, str]:
  """Instruction name -> its output shape, from the optimised HLO's text."""
  shapes = {}
  for line in hlo_text.splitlines():
    match = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ', line)
    if match:
      shapes[match.group(1)] = match.group(2)
  return shapes


def event_op(event: dict) -> str:
  """The HLO instruction a trace event ran: on CPU the event's name; on GPU a kernel's event is
  named after the kernel (`sm90_xmma_gemm_...`, `loop_add_fusion`) and names its instruction in
  `args.hlo_op`."""
  return event.get('args', {}).get('hlo_op') or event.get('name', '')


def summarise(events: list[dict], shapes: dict[str, str], top: int) -> dict:
  """Complete trace events of XLA ops (names found in `shapes`) -> time by kind and by shape."""
  by_kind, by_shape = collections.Counter(), collections.Counter()
  kind_calls, shape_calls = collections.Counter(), collections.Counter()
  for event in events:
    name = event_op(event)
    if event.get('ph') != 'X' or name not in shapes:
      continue
    key = (op_kind(name), shapes[name])
    by_kind[key[0]] += event['dur'] / 1e3
    kind_calls[key[0]] += 1
    by_shape[key] += event['dur'] / 1e3
    shape_calls[key] += 1
  return {
      'ops_ms': round(sum(by_kind.values()), 1),
      'by_kind': [{'kind': kind, 'ms': round(ms, 1), 'calls': kind_calls[kind]}
                  for kind, ms in by_kind.most_common()],
      'by_shape': [{'kind': kind, 'shape': shape, 'ms': round(ms, 1),
                    'calls': shape_calls[kind, shape],
                    'ms_per_call': round(ms / shape_calls[kind, shape], 2)}
                   for (kind, shape), ms in by_shape.most_common(top)],
  }


def _trace_path(trace_dir: str) -> str:
  paths = glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True)
  if not paths:
    raise RuntimeError(f'jax.profiler wrote no trace under {trace_dir}.')
  return paths[0]


def _trace_events(trace_path: str) -> list[dict]:
  with gzip.open(trace_path, 'rt') as trace:
    return json.load(trace)['traceEvents']


def main(argv) -> None:
  del argv
  os.environ['XLA_FLAGS'] = ' '.join(filter(None, [os.environ.get('XLA_FLAGS'), TRACE_FLAGS]))
  import jax  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top,protected-access
  from benchmarks import throughput
  given = flags.FLAGS  # throughput's flags: the step it times, built the same way
  # Waits for an idle machine as throughput does (--idle_wait, --idle_load_per_core): a profile
  # taken under another job's load attributes that job's slowdown to the step's ops.
  load_start, waited = records.wait_for_idle(given.idle_load_per_core * provenance.cores(),
                                             given.idle_wait)
  step = throughput.OursDiTStep(throughput._random_batch(given.batch, given.resolution),
                                throughput._config())
  step.run(given.warmup)
  with tempfile.TemporaryDirectory(prefix='profile_step_') as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      start = time.perf_counter()
      step.run(_STEPS.value)
      seconds = time.perf_counter() - start
    trace_path = _trace_path(trace_dir)
    if _TRACE_COPY.value:
      shutil.copyfile(trace_path, _TRACE_COPY.value)
    summary = summarise(_trace_events(trace_path), output_shapes(step.compiled.as_text()),
                        _TOP.value)
  device = jax.devices()[0]
  row = {'date': provenance.utc_now(),
         'command': 'python -m benchmarks.profile_step ' + shlex.join(sys.argv[1:]),
         'commit': provenance.commit(), 'host': provenance.host(), 'platform': device.platform,
         'load_avg_start': load_start, 'idle_wait_seconds': waited,
         'versions': provenance.versions(),
         'xla_flags': os.environ['XLA_FLAGS'], 'model': given.model,
         'resolution': given.resolution, 'batch': given.batch, 'dtype': given.dtype,
         'attention': given.attention,
         'steps': _STEPS.value, 'step_seconds': round(seconds / _STEPS.value, 3), **summary}
  row['busy_reasons'] = records.busy_reasons(load_start, provenance.cores(),
                                             load_per_core=given.idle_load_per_core,
                                             cpu=device.platform == 'cpu')
  row['busy'] = bool(row['busy_reasons'])
  if row['busy']:
    print('BUSY: ' + '; '.join(row['busy_reasons']) + ' (the shares below are not to be trusted)')
  print(f'{seconds / _STEPS.value:.3f} s per traced step; XLA ops {summary["ops_ms"]:.0f} ms '
        f'over {_STEPS.value} step(s)')
  for item in summary['by_kind'][:10]:
    print(f'{item["ms"]:10.1f} ms {item["calls"]:6d}  {item["kind"]}')
  for item in summary['by_shape']:
    print(f'{item["ms"]:10.1f} ms {item["calls"]:6d} x {item["ms_per_call"]:8.2f} ms  '
          f'{item["kind"]} {item["shape"]}')
  provenance.append_row(row, _PROFILE_OUT.value or os.path.join(
      'benchmarks', 'results', f'{device.platform}_step_profile.jsonl'))


if __name__ == '__main__':
  cpu_runtime.restart_with_cpu_environment()
  # Imported here, not at the top: its flags (--model, --resolution, --batch, --dtype,
  # --attention, --warmup) are this program's too, and the tests import this module beside
  # others that define --resolution.
  from benchmarks import throughput  # pylint: disable=g-import-not-at-top,unused-import
  app.run(main)
