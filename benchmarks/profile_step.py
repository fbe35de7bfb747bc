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

Ops can overlap on the worker threads, so the per-op total may differ from the wall time;
`busy_ms` is the time at least one op ran and `span_ms` the first op's start to the last one's
end. On a GPU or TPU only the device's own events count: the host's events that name the same
instructions (the launches) are left out.
Like `benchmarks.throughput`, it first waits (at most `--idle_wait` seconds) for the 1-minute
load to fall below `--idle_load_per_core` per usable core, and marks the row `busy` (with its
reasons) on CPU when it did not.
Appends one JSON row (command, commit, host, step seconds, both tables) to `--profile_out`;
`--trace_copy=FILE` keeps the raw trace too, and the optimised HLO beside it
(`FILE` without `.json.gz`, then `.hlo.txt.gz`).

  python -m benchmarks.profile_step --from_trace=FILE [--top=15]

sums a kept trace again, without running anything (by shape too when its HLO was kept), and
appends that row, which names the trace it read, to the same file.
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
_FROM_TRACE = flags.DEFINE_string(
    'from_trace', '', 'Sum this kept trace (a --trace_copy file) instead of tracing a step.')
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


def device_processes(events: list[dict]) -> dict[int, str]:
  """pid -> name of the trace's accelerator processes ('/device:GPU:0', '/device:TPU:0'): where
  kernels run. Empty for a CPU trace, whose ops run on the host's threads."""
  names = {event.get('pid'): str(event.get('args', {}).get('name', '')) for event in events
           if event.get('ph') == 'M' and event.get('name') == 'process_name'}
  return {pid: name for pid, name in names.items() if name.startswith('/device:')}


def busy_ms(intervals: list[tuple[float, float]]) -> float:
  """Total length (ms) of the union of [start, end) intervals in microseconds."""
  total, reach = 0.0, float('-inf')
  for start, end in sorted(intervals):
    if end > reach:
      total += end - max(start, reach)
      reach = end
  return total / 1e3


def summarise(events: list[dict], shapes: dict[str, str] | None, top: int) -> dict:
  """Complete trace events of XLA ops -> time by kind and by (kind, output shape).

  An op is an event named in `shapes` (instruction -> output shape); with `shapes` None (a kept
  trace without its HLO), any device event that names its instruction (`args.hlo_op`), shape
  '?' and no by-shape table. Where the trace has device processes, only their events count.
  """
  devices = device_processes(events)
  by_kind, by_shape = collections.Counter(), collections.Counter()
  kind_calls, shape_calls = collections.Counter(), collections.Counter()
  intervals = []
  for event in events:
    name = event_op(event)
    if event.get('ph') != 'X' or (devices and event.get('pid') not in devices):
      continue
    if shapes is None:
      if not event.get('args', {}).get('hlo_op'):
        continue
      shape = '?'
    elif name in shapes:
      shape = shapes[name]
    else:
      continue
    key = (op_kind(name), shape)
    by_kind[key[0]] += event['dur'] / 1e3
    kind_calls[key[0]] += 1
    by_shape[key] += event['dur'] / 1e3
    shape_calls[key] += 1
    intervals.append((event['ts'], event['ts'] + event['dur']))
  return {
      'ops_ms': round(sum(by_kind.values()), 1),
      'busy_ms': round(busy_ms(intervals), 1),
      'span_ms': round((max(end for _, end in intervals) - min(start for start, _ in intervals))
                       / 1e3, 1) if intervals else 0.0,
      'by_kind': [{'kind': kind, 'ms': round(ms, 1), 'calls': kind_calls[kind]}
                  for kind, ms in by_kind.most_common()],
      'by_shape': [{'kind': kind, 'shape': shape, 'ms': round(ms, 1),
                    'calls': shape_calls[kind, shape],
                    'ms_per_call': round(ms / shape_calls[kind, shape], 2)}
                   for (kind, shape), ms in by_shape.most_common(top)] if shapes is not None
                  else [],
  }


def _trace_path(trace_dir: str) -> str:
  paths = glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True)
  if not paths:
    raise RuntimeError(f'jax.profiler wrote no trace under {trace_dir}.')
  return paths[0]


def _trace_events(trace_path: str) -> list[dict]:
  with gzip.open(trace_path, 'rt') as trace:
    return json.load(trace)['traceEvents']


def hlo_copy_path(trace_copy: str) -> str:
  """Where the optimised HLO of a kept trace lives: 'x/trace.json.gz' -> 'x/trace.hlo.txt.gz'."""
  stem = trace_copy[:-len('.json.gz')] if trace_copy.endswith('.json.gz') else trace_copy
  return stem + '.hlo.txt.gz'


def trace_platform(events: list[dict]) -> str:
  """'gpu' or 'tpu' from a trace's device process ('/device:GPU:0'), 'cpu' without one."""
  names = sorted(device_processes(events).values())
  return names[0].split(':')[1].lower() if names else 'cpu'


def _print_summary(summary: dict) -> None:
  print(f'XLA ops {summary["ops_ms"]:.1f} ms; some op running {summary["busy_ms"]:.1f} ms of '
        f'{summary["span_ms"]:.1f} ms from the first op to the last')
  for item in summary['by_kind'][:10]:
    print(f'{item["ms"]:10.1f} ms {item["calls"]:6d}  {item["kind"]}')
  for item in summary['by_shape']:
    print(f'{item["ms"]:10.1f} ms {item["calls"]:6d} x {item["ms_per_call"]:8.2f} ms  '
          f'{item["kind"]} {item["shape"]}')


def _command() -> str:
  return 'python -m benchmarks.profile_step ' + shlex.join(sys.argv[1:])


def summarise_kept_trace(trace_path: str, top: int) -> dict:
  """The row for a kept trace, summed again (by shape when its HLO was kept beside it)."""
  if not os.path.isfile(trace_path):
    raise FileNotFoundError(f'--from_trace={trace_path}: no such file; give a trace kept with '
                            '--trace_copy.')
  events = _trace_events(trace_path)
  shapes, hlo_path = None, hlo_copy_path(trace_path)
  if os.path.isfile(hlo_path):
    with gzip.open(hlo_path, 'rt') as hlo:
      shapes = output_shapes(hlo.read())
  return {'date': provenance.utc_now(), 'command': _command(), 'commit': provenance.commit(),
          'source_trace': trace_path, 'platform': trace_platform(events),
          'shapes_known': shapes is not None, **summarise(events, shapes, top)}


def main(argv) -> None:
  del argv
  if _FROM_TRACE.value:
    row = summarise_kept_trace(_FROM_TRACE.value, _TOP.value)
    _print_summary(row)
    provenance.append_row(row, _PROFILE_OUT.value or os.path.join(
        'benchmarks', 'results', f'{row["platform"]}_step_profile.jsonl'))
    return
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
  hlo_text = step.compiled.as_text()
  with tempfile.TemporaryDirectory(prefix='profile_step_') as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      start = time.perf_counter()
      step.run(_STEPS.value)
      seconds = time.perf_counter() - start
    trace_path = _trace_path(trace_dir)
    if _TRACE_COPY.value:
      shutil.copyfile(trace_path, _TRACE_COPY.value)
      with gzip.open(hlo_copy_path(_TRACE_COPY.value), 'wt') as hlo:
        hlo.write(hlo_text)
    summary = summarise(_trace_events(trace_path), output_shapes(hlo_text), _TOP.value)
  device = jax.devices()[0]
  row = {'date': provenance.utc_now(), 'command': _command(),
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
  print(f'{seconds / _STEPS.value:.3f} s per traced step over {_STEPS.value} step(s)')
  _print_summary(summary)
  provenance.append_row(row, _PROFILE_OUT.value or os.path.join(
      'benchmarks', 'results', f'{device.platform}_step_profile.jsonl'))


if __name__ == '__main__':
  cpu_runtime.restart_with_cpu_environment()
  # Imported here, not at the top: its flags (--model, --resolution, --batch, --dtype,
  # --attention, --warmup) are this program's too, and the tests import this module beside
  # others that define --resolution.
  from benchmarks import throughput  # pylint: disable=g-import-not-at-top,unused-import
  app.run(main)
