r"""Regenerates the throughput tables of benchmarks/README.md from benchmarks/results/
*_throughput.jsonl, *_train_speed.jsonl and *_compile_memory.jsonl, and the `shapes` pipeline
tables of README.md and benchmarks/README.md
from benchmarks/results/cpu_shapes_pipeline.jsonl (`benchmarks.pipeline_tables`).

  python -m benchmarks.report [--readme=benchmarks/README.md] [--nopipeline_tables]

The tables sit between the `<!-- throughput:begin -->` and `<!-- throughput:end -->` markers;
everything else in the README is left as written. Busy rows (`is_busy`) are left out of the
tables and counted below them (`benchmarks.records.is_busy`); they stay in the JSONL files.
"""

from __future__ import annotations

import glob
import json
import os

from absl import app
from absl import flags

from benchmarks import pipeline_tables
from benchmarks import provenance
from benchmarks import records as records_lib

_README = flags.DEFINE_string('readme', os.path.join('benchmarks', 'README.md'),
                              'The markdown file whose throughput section is rewritten.')
_RESULTS = flags.DEFINE_string('results_dir', os.path.join('benchmarks', 'results'),
                               'Directory of *_throughput.jsonl and *_train_speed.jsonl files.')

_PIPELINE_TABLES = flags.DEFINE_bool(
    'pipeline_tables', True, 'Also rewrite the `shapes` pipeline blocks of README.md and '
    'benchmarks/README.md (`benchmarks.pipeline_tables.BLOCKS`), from the repository root.')

BEGIN, END = '<!-- throughput:begin -->', '<!-- throughput:end -->'
def _ratio(r: dict) -> str:
  """'median (min-max)' of the paired ratios, or the single ratio of older rows."""
  if 'ratio_range' in r:
    low, high = r['ratio_range']
    return f'{r["ratio_median"]:g} ({low:g}-{high:g})'
  return _num(r.get('ratio_ours_over_peer'))


def _pct(x) -> str:
  return '' if x is None else f'{100 * x:.1f} %'


def _num(x) -> str:
  return '' if x is None else f'{x:g}'


def _gib(x) -> str:
  return '' if x is None else f'{x / 2**30:.2f}'


def _device(r: dict) -> str:
  """'cpu x1', or the CPU's model and cores where the row's host names them."""
  host = r.get('host', '').split(', ')
  if r.get('platform', 'cpu') == 'cpu' and len(host) == 3:
    return f'{host[1]}, {host[2].replace(" usable", "")}'
  return f'{r["device_kind"]} x{r["device_count"]}'


def dit_table(records: list[dict]) -> list[str]:
  lines = ['| date | device | model | res | batch | dtype | attention | ours img/s | ours ms | '
           'ours MFU | ours compile s | peer | peer img/s | peer ms | peer MFU | '
           'ours/peer, median of rounds (range) | load | commit |',
           '| --- ' * 18 + '|']
  for r in records:
    ours, peer = r['jdiffrep'], r.get('diffusers', {})
    peer_name = ''
    if peer:
      peer_name = ('diffusers' + (' compiled' if peer.get('torch_compile') else ' eager')
                   + f', {peer.get("torch_threads")} threads, '
                   + ('own process' if r.get('peer_process') == 'own' else 'same process'))
    lines.append(
        f'| {r["date"][:10]} | {_device(r)} | {r["model"]} | {r["resolution"]} | {r["batch"]} '
        f'| {r["dtype"]} | {r["attention"]} | {ours["images_per_sec"]} | {ours["step_ms"]} '
        f'| {_pct(ours.get("mfu"))} | {ours.get("compile_seconds")} | {peer_name} '
        f'| {_num(peer.get("images_per_sec"))} | {_num(peer.get("step_ms"))} '
        f'| {_pct(peer.get("mfu"))} | {_ratio(r)} '
        f'| {r["load_avg_start"]}-{r["load_avg_end"]} | {(r.get("commit") or "")[:7]} |')
  return lines


TUNE_NOTE = 'gpu_tune '  # launch/gpu_tune.sh's rows: `note` is this plus the variant's name


def tune_table(records: list[dict]) -> list[str]:
  """launch/gpu_tune.sh's variants of one step, each with its XLA flags, timed alone."""
  lines = ['| date | device | variant | XLA_FLAGS | model | res | batch | attention | img/s | ms | MFU '
           '| commit |', '| --- ' * 12 + '|']
  for r in records:
    ours = r['jdiffrep']
    flags_set = (r.get('environment') or {}).get('XLA_FLAGS') or ''
    lines.append(f'| {r["date"][:10]} | {_device(r)} | {r["note"][len(TUNE_NOTE):]} '
                 f'| {f"`{flags_set}`" if flags_set else "(none)"} | {r["model"]} '
                 f'| {r["resolution"]} | {r["batch"]} | {r["attention"]} '
                 f'| {ours["images_per_sec"]} | {ours["step_ms"]} | {_pct(ours.get("mfu"))} '
                 f'| {(r.get("commit") or "")[:7]} |')
  return lines


def memory_table(records: list[dict]) -> list[str]:
  """Each side's process and its peak RSS: `--side=ours|peer` rows (one side alone), and both
  sides of `--peer_process=own` rows (ours in the parent, the peer in its child process)."""
  lines = ['| date | device | model | res | batch | dtype | attention | side | ms/step | '
           'process peak RSS GiB | commit |', '| --- ' * 11 + '|']
  for r in records:
    sides = [r['side']] if r.get('side', 'both') != 'both' else ['ours', 'peer']
    for side in sides:
      numbers = r['jdiffrep'] if side == 'ours' else r['diffusers']
      # The peer's child process records its own; the row's is this process's.
      rss = numbers.get('process_peak_rss_bytes', r['process_peak_rss_bytes'])
      lines.append(
          f'| {r["date"][:10]} | {_device(r)} | {r["model"]} | {r["resolution"]} | {r["batch"]} '
          f'| {r["dtype"]} | {r["attention"] if side == "ours" else "torch SDPA"} '
          f'| {"jdiffrep" if side == "ours" else "diffusers"}'
          f'{"" if r["side"] != "both" else " (paired run)"} | {numbers["step_ms"]} '
          f'| {_gib(rss)} | {(r.get("commit") or "")[:7]} |')
  return lines


def method_table(records: list[dict]) -> list[str]:
  lines = ['| date | device | step | model | res | batch | dtype | img/s | ms/step | compile s | '
           'peak device GiB | load |', '| --- ' * 12 + '|']
  for r in records:
    ours = r['jdiffrep']
    lines.append(f'| {r["date"][:10]} | {_device(r)} | {r["bench"]} | {r["model"]} '
                 f'| {r["resolution"]} | {r["batch"]} | {r["dtype"]} | {ours["images_per_sec"]} '
                 f'| {ours["step_ms"]} | {r["compile_seconds"]} '
                 f'| {_gib(ours.get("peak_device_memory_bytes"))} '
                 f'| {r["load_avg_start"]}-{r["load_avg_end"]} |')
  return lines


def train_speed_table(records: list[dict]) -> list[str]:
  lines = ['| date | device | config | model | batch | trained s | steps | img/s | compile s | '
           'load |', '| --- ' * 10 + '|']
  for r in records:
    lines.append(f'| {r["date"][:10]} | {_device(r)} | {r["config"]} | {r["model"]} '
                 f'| {r["batch"]} | {r["train_seconds_requested"]:g} | {r["steps"]} '
                 f'| {_num(r["images_per_sec"] and round(r["images_per_sec"], 1))} '
                 f'| {r["compile_seconds"]:.1f} | {r["load_avg_start"]}-{r["load_avg_end"]} |')
  return lines


def data_table(records: list[dict]) -> list[str]:
  lines = ['| date | host | dataset | res | batch | read threads | img/s | load |',
           '| --- ' * 8 + '|']
  for r in records:
    lines.append(f'| {r["date"][:10]} | {r["host"]} | {r["dataset"]} | {r["resolution"]} '
                 f'| {r["batch"]} | {r["read_threads"]} | {r["images_per_sec"]} '
                 f'| {r["load_avg_start"]}-{r["load_avg_end"]} |')
  return lines


def devices_table(records: list[dict]) -> list[str]:
  lines = ['| date | model | res | global batch | devices | ms/step | img/s | load |',
           '| --- ' * 8 + '|']
  for r in records:
    for row in r['sweep']:
      lines.append(f'| {r["date"][:10]} | {r["model"]} | {r["resolution"]} | {r["batch"]} '
                   f'| {row["devices"]} | {row["step_ms"]} | {row["images_per_sec"]} '
                   f'| {r["load_avg_start"]}-{r["load_avg_end"]} |')
  return lines


def compile_memory_table(records: list[dict]) -> list[str]:
  lines = ['| date | device | config | stage | model | batch | mesh | params (M) | temporaries GiB '
           '| peak estimate GiB per device | commit |', '| --- ' * 11 + '|']
  for r in records:
    for stage, report in r['stages'].items():
      memory = report['per_device_memory_bytes']
      mesh = ' x '.join(f'{axis} {size}' for axis, size in report['mesh'].items() if size > 1)
      lines.append(f'| {r["date"][:10]} | {_device(r)} | {r["config"]} | {stage} '
                   f'| {report["model"]} | {report["batch_size"]} | {mesh or "1 device"} '
                   f'| {report["num_params"] / 1e6:.1f} | {_gib(memory["temp"])} '
                   f'| {_gib(memory["peak_estimate"])} | {(r.get("commit") or "")[:7]} |')
  return lines


def render(records: list[dict]) -> str:
  """All throughput records -> the markdown between the markers (busy rows left out)."""
  busy = [r for r in records if records_lib.is_busy(r)]
  records = [r for r in records if not records_lib.is_busy(r)]
  by_bench = lambda *names: [r for r in records if r['bench'] in names]
  is_tune = lambda r: r.get('note', '').startswith(TUNE_NOTE)
  sections = [
      ('DiT train step, jdiffrep vs diffusers (`--bench=dit`)',
       dit_table([r for r in by_bench('dit') if r.get('side', 'both') == 'both'
                  and not is_tune(r)])),
      ('Variants of one step, timed alone (`launch/gpu_tune.sh`)',
       tune_table([r for r in by_bench('dit') if is_tune(r)])),
      ('Peak memory of each side\'s process (`--bench=dit --side=ours|peer`: one side alone; '
       '"paired run": the two processes of `--peer_process=own`)',
       memory_table([r for r in by_bench('dit')
                     if r.get('side', 'both') != 'both' or r.get('peer_process') == 'own'])),
      ('Method train steps (`--bench=diti`, `--bench=sdae`)', method_table(by_bench('diti', 'sdae'))),
      ('Input pipeline alone (`--bench=data`)', data_table(by_bench('data'))),
      ('Fake CPU device sweep, fixed global batch (`--bench=devices`)',
       devices_table(by_bench('devices'))),
      ('The real trainer for a fixed time (`python -m benchmarks.train_speed`)',
       train_speed_table(by_bench('train_speed'))),
      ("Each training stage's step as XLA compiles it, per device (`python -m "
       'benchmarks.compile_memory`: `--compile_only`, no data, nothing allocated)',
       compile_memory_table(by_bench('compile_memory'))),
  ]
  out = ['Generated by `python -m benchmarks.report` from `results/*_throughput.jsonl`, '
         '`results/*_train_speed.jsonl` and `results/*_compile_memory.jsonl` '
         '(each line there has the exact command, versions and full numbers).', '']
  for title, lines in sections:
    if len(lines) > 2:
      out += [f'#### {title}', '', *lines, '']
  if busy:
    out += [f'{len(busy)} busy rows are left out (marked busy by their run: 1-minute load at or '
            f'above {records_lib.IDLE_LOAD_PER_CORE} per usable core at the start, or paired ratios spread '
            'beyond `--busy_spread`; older rows by their load alone); they stay in the JSONL '
            'files.', '']
  return '\n'.join(out).rstrip() + '\n'


def load_records(results_dir: str) -> list[dict]:
  records = []
  paths = [path for pattern in ('*_throughput.jsonl', '*_train_speed.jsonl',
                                 '*_compile_memory.jsonl')
           for path in glob.glob(os.path.join(results_dir, pattern))]
  for path in sorted(paths):
    with open(path) as f:
      records += [json.loads(line) for line in f if line.strip()]
  return sorted(records, key=lambda r: r['date'])


def main(argv) -> None:
  del argv
  with open(_README.value) as f:
    text = f.read()
  if BEGIN not in text or END not in text:
    raise SystemExit(f'{_README.value} has no {BEGIN} ... {END} section; add the two markers '
                     'where the tables should go.')
  head, rest = text.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  with open(_README.value, 'w') as f:
    f.write(head + BEGIN + '\n' + render(load_records(_RESULTS.value)) + END + tail)
  if _PIPELINE_TABLES.value:
    changed = pipeline_tables.update_readmes(provenance.REPO_ROOT, _RESULTS.value)
    print('Pipeline tables rewritten in:', ', '.join(changed) or 'nothing (already current)')


if __name__ == '__main__':
  app.run(main)
