"""Benchmark tools: the 6 x MACs formula counts our DiT's matmuls exactly; peak table; curve plots."""

import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import flops
from benchmarks import records
from jdiffrep.models import dit


def traced_macs(jaxpr) -> int:
  """Multiply-accumulates of every dot_general and convolution in `jaxpr`, nested ones included."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      (_, rhs_contract), (_, rhs_batch) = eqn.params['dimension_numbers']
      lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
      rhs_free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
      total += int(np.prod(lhs)) * int(np.prod(rhs_free))
    elif eqn.primitive.name == 'conv_general_dilated':
      out, kernel = eqn.outvars[0].aval.shape, eqn.invars[1].aval.shape
      total += int(np.prod(out)) * int(np.prod(kernel)) // out[-1]
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(sub, jax_core.ClosedJaxpr):
          total += traced_macs(sub.jaxpr)
        elif isinstance(sub, jax_core.Jaxpr):
          total += traced_macs(sub)
  return total


@pytest.mark.parametrize('name,resolution,out_channels', [('XXS/4', 32, 3), ('XS/2', 16, 6)])
def test_formula_macs_equal_traced_matmuls(name, resolution, out_channels):
  # The formula counts the model's products; attention_impl='xla' traces attention's products as
  # dot_generals (the fused CPU kernel is one opaque FFI call).
  model = dit.dit_from_name(name, out_channels=out_channels, attention_impl='xla')
  x, t = jnp.zeros((1, resolution, resolution, 3)), jnp.zeros((1,), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), x, t)
  jaxpr = jax.make_jaxpr(lambda p: model.apply(p, x, t))(params).jaxpr
  assert traced_macs(jaxpr) == flops.dit_forward_macs(name, resolution, out_channels=out_channels)
  assert flops.dit_train_step_flops(name, resolution, 4, out_channels=out_channels) == (
      6 * 4 * flops.dit_forward_macs(name, resolution, out_channels=out_channels))


def test_peak_flops_table():
  assert flops.peak_flops('NVIDIA H100 80GB HBM3', 'gpu', 'bfloat16')[0] == 989.4e12
  assert flops.peak_flops('NVIDIA H100 PCIe', 'gpu', 'bfloat16')[0] == 756e12
  peak, source = flops.peak_flops('Some Accelerator', 'gpu', 'bfloat16')
  assert peak is None and 'PEAK_FLOPS' in source


def test_learning_curves_group_probe_rows_by_run_and_plot_them(tmp_path):
  from benchmarks import learning_curves  # pylint: disable=g-import-not-at-top

  def row(workdir, step, linear):
    return {'command': f'python -m jdiffrep.main --workdir=runs/{workdir} --x=1', 'probe': 'p',
            'step': step, 'attribute_probe_test_mean_ap': linear - 0.01,
            'categorical': {'diti': {'linear': linear, 'knn': 0.5}}}

  rows = [row('b', 2000, 0.8), {'command': 'no probe', 'step': 5}, row('a', 3000, 0.9),
          row('a', 1000, 0.7)]
  runs = learning_curves.curves(rows)
  assert list(runs) == ['b', 'a']
  assert [r['step'] for r in runs['a']] == [1000, 3000]
  with pytest.raises(ValueError, match='--workdir'):
    learning_curves.curves([{'command': 'x', 'probe': 'p', 'step': 1}])
  out = tmp_path / 'curves.png'
  baseline = {'attribute_probe': {'pixels': {'test_mean_ap': 0.9}},
              'categorical_probe_summary': {'pixels': {'linear': 0.9}}}
  learning_curves.plot(runs, str(out), baseline)
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


# ----------------------------------------------------------------------------- records that cannot mislead


def test_wait_for_idle_polls_until_the_load_falls_or_the_time_is_up():
  loads, slept = iter([3.0, 2.0, 0.5, 0.1]), []
  load, waited = records.wait_for_idle(1.0, 60, poll_s=5, getloadavg=lambda: (next(loads),),
                                          sleep=slept.append)
  assert (load, waited, slept) == (0.5, 10.0, [5, 5])
  slept.clear()
  load, waited = records.wait_for_idle(1.0, 12, poll_s=5, getloadavg=lambda: (3.0,),
                                          sleep=slept.append)
  assert (load, waited, slept) == (3.0, 12.0, [5, 5, 2])


def test_paired_ratios_and_busy_reasons():
  summary = records.paired_ratios([1.0, 2.0, 1.0], [2.0, 4.4, 1.8])
  assert summary == {'paired_ratios': [2.0, 2.2, 1.8], 'ratio_median': 2.0,
                     'ratio_range': [1.8, 2.2], 'ratio_spread': 0.2}
  with pytest.raises(ValueError, match='one peer round per round'):
    records.paired_ratios([1.0], [1.0, 2.0])
  assert records.busy_reasons(0.9, 2, load_per_core=0.5, ratio_spread=0.2) == []
  loaded = records.busy_reasons(1.0, 2, load_per_core=0.5, ratio_spread=0.35)
  assert len(loaded) == 2 and 'load 1.0' in loaded[0] and '35%' in loaded[1]
  # An accelerator's row does not depend on the host's load; its rounds must still agree.
  assert records.busy_reasons(9.0, 16, cpu=False) == []
  assert len(records.busy_reasons(9.0, 16, cpu=False, ratio_spread=0.5)) == 1
  assert not records.is_busy({'platform': 'gpu', 'host': 'x86_64, 16 cores usable',
                              'load_avg_start': 9.0})


def test_report_leaves_busy_rows_out_of_the_tables():
  from benchmarks import report  # pylint: disable=g-import-not-at-top

  def row(model, **fields):
    return {'date': '2026-12-01T00:00:00+00:00', 'bench': 'dit', 'device_kind': 'cpu',
            'device_count': 1, 'host': 'x86_64, 2 cores usable', 'model': model,
            'resolution': 32, 'batch': 32, 'dtype': 'float32', 'attention': 'xla',
            'jdiffrep': {'images_per_sec': 250, 'step_ms': 128}, 'load_avg_end': 0.3, **fields}

  idle = row('XXS/4', load_avg_start=0.2, busy=False, ratio_median=0.7,
             ratio_range=[0.68, 0.72], ratio_ours_over_peer=0.7)
  marked = row('S/2', load_avg_start=0.2, busy=True, ratio_ours_over_peer=0.5)
  old_loaded = row('XS/4', load_avg_start=8.25, ratio_ours_over_peer=4.35)  # no mark: by load
  assert [records.is_busy(r) for r in (idle, marked, old_loaded)] == [False, True, True]
  text = report.render([idle, marked, old_loaded])
  assert '| XXS/4 |' in text and '0.7 (0.68-0.72)' in text
  assert '| S/2 |' not in text and '| XS/4 |' not in text
  assert '2 busy rows are left out' in text


def test_report_puts_one_side_rows_in_the_memory_table_not_the_ratio_table():
  from benchmarks import report  # pylint: disable=g-import-not-at-top

  base = {'date': '2026-12-02T00:00:00+00:00', 'bench': 'dit', 'device_kind': 'cpu',
          'device_count': 1, 'host': 'x86_64, 2 cores usable', 'model': 'S/2', 'resolution': 32,
          'batch': 32, 'dtype': 'float32', 'attention': 'auto', 'load_avg_start': 0.1,
          'load_avg_end': 0.2, 'busy': False, 'commit': 'abcdef0123'}
  both = {**base, 'side': 'both', 'jdiffrep': {'images_per_sec': 2.5, 'step_ms': 12800},
          'diffusers': {'images_per_sec': 3.2, 'step_ms': 10000}, 'ratio_median': 0.78,
          'ratio_range': [0.75, 0.8], 'ratio_ours_over_peer': 0.78}
  ours = {**base, 'side': 'ours', 'jdiffrep': {'images_per_sec': 2.6, 'step_ms': 12300},
          'process_peak_rss_bytes': 6 * 2**30}
  peer = {**base, 'side': 'peer', 'diffusers': {'images_per_sec': 3.3, 'step_ms': 9700},
          'process_peak_rss_bytes': int(4.5 * 2**30)}
  own = {**both, 'peer_process': 'own', 'process_peak_rss_bytes': int(6.5 * 2**30),
         'jdiffrep': {'images_per_sec': 2.4, 'step_ms': 13100},
         'diffusers': {'images_per_sec': 3.1, 'step_ms': 10200,
                       'process_peak_rss_bytes': int(4.25 * 2**30)}}
  text = report.render([both, ours, peer, own])
  ratio_table, memory_table = text.split('#### Peak memory')
  assert '| 12800 |' in ratio_table and '0.78 (0.75-0.8)' in ratio_table
  assert 'same process' in ratio_table and 'own process' in ratio_table
  assert '12300' not in ratio_table and '9700' not in ratio_table
  assert '| jdiffrep | 12300 | 6.00 | abcdef0 |' in memory_table
  assert '| torch SDPA | diffusers | 9700 | 4.50 | abcdef0 |' in memory_table
  assert '12800' not in memory_table  # a paired run in one process has no per-side memory
  assert '| jdiffrep (paired run) | 13100 | 6.50 | abcdef0 |' in memory_table
  assert '| diffusers (paired run) | 10200 | 4.25 | abcdef0 |' in memory_table


def test_report_puts_gpu_tune_variants_in_their_own_table_with_their_flags():
  from benchmarks import report  # pylint: disable=g-import-not-at-top

  base = {'date': '2026-12-04T00:00:00+00:00', 'bench': 'dit', 'platform': 'gpu',
          'device_kind': 'NVIDIA H200', 'device_count': 1, 'host': 'x86_64, 16 cores usable',
          'model': 'B/2', 'resolution': 32, 'batch': 256, 'dtype': 'bfloat16',
          'attention': 'cudnn', 'side': 'both', 'load_avg_start': 3.0, 'load_avg_end': 2.0,
          'busy': False, 'commit': 'abcdef0123'}
  paired = {**base, 'note': 'gpu_check', 'environment': {'XLA_FLAGS': None},
            'jdiffrep': {'images_per_sec': 2933.0, 'step_ms': 87.28, 'mfu': 0.4091},
            'diffusers': {'images_per_sec': 2881.0, 'step_ms': 88.85}, 'ratio_median': 1.015,
            'ratio_range': [1.014, 1.021], 'ratio_ours_over_peer': 1.015}
  plain = {**base, 'note': 'gpu_tune baseline', 'environment': {'XLA_FLAGS': ''},
           'jdiffrep': {'images_per_sec': 2940.0, 'step_ms': 87.07, 'mfu': 0.4101}}
  flagged = {**base, 'note': 'gpu_tune no-triton-gemm', 'batch': 512,
             'environment': {'XLA_FLAGS': '--xla_gpu_enable_triton_gemm=false'},
             'jdiffrep': {'images_per_sec': 3001.0, 'step_ms': 170.6, 'mfu': 0.4185}}
  text = report.render([paired, plain, flagged])
  ratio_table, tune_table = text.split('#### Variants of one step')
  assert '| 87.28 |' in ratio_table and '87.07' not in ratio_table and '170.6' not in ratio_table
  assert ('| baseline | (none) | B/2 | 32 | 256 | cudnn | 2940.0 | 87.07 | 41.0 % | abcdef0 |'
          in tune_table)
  assert ('| no-triton-gemm | `--xla_gpu_enable_triton_gemm=false` | B/2 | 32 | 512 | cudnn '
          '| 3001.0 | 170.6 | 41.9 % | abcdef0 |' in tune_table)
  assert '#### Peak memory' not in text  # neither kind of row has per-side memory


def test_every_module_the_tests_import_shares_one_process_without_flag_clashes():
  """pytest-xdist puts any test files in one worker: their modules' absl flags must not clash.

  (CI once failed when benchmarks.mnist_folder and benchmarks.learning_curves both defined --out
  at import time.) Collects every `benchmarks` / `jdiffrep` module a test file imports and imports
  them all in one fresh interpreter.
  """
  import pathlib  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  tests = pathlib.Path(__file__).parent
  pattern = re.compile(r'^\s*from ((?:benchmarks|jdiffrep)[\w.]*) import \(?\s*(\w+)', re.M)
  modules = set()
  for path in tests.glob('test_*.py'):
    for package, name in pattern.findall(path.read_text()):
      modules.add(f'{package}.{name}')
  assert {'benchmarks.mnist_folder', 'benchmarks.learning_curves', 'benchmarks.pipeline_row',
          'jdiffrep.prepare'} <= modules
  code = ('import importlib, sys\n'
          'for name in sys.argv[1:]:\n'
          '  try:\n'
          '    importlib.import_module(name)\n'
          '  except ModuleNotFoundError:\n'  # `from package import function`, not a module
          '    importlib.import_module(name.rsplit(".", 1)[0])\n')
  result = subprocess.run([sys.executable, '-c', code, *sorted(modules)], cwd=tests.parent,
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-3000:]


def _tiny_peer_spec() -> dict:
  return dict(depth=1, hidden=32, heads=2, patch=4, resolution=8, num_classes=10,
              dtype='float32', compile_model=False, learning_rate=1e-3, b1=0.9, b2=0.999,
              weight_decay=0.0, threads=1)


def _tiny_batch() -> dict:
  rng = np.random.default_rng(3)
  return {'image': rng.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32),
          'target': rng.normal(size=(2, 8, 8, 3)).astype(np.float32),
          't': np.array([5, 700], np.int32), 'label': np.array([1, 9], np.int32)}


def test_the_peer_in_its_own_process_trains_the_same_step_as_in_this_one():
  pytest.importorskip('diffusers')
  from benchmarks import peer_diffusers
  batch = _tiny_batch()
  here = peer_diffusers.DiffusersStep(**_tiny_peer_spec(), images=batch['image'], t=batch['t'],
                                      labels=batch['label'], target=batch['target'])
  here.run(3)
  child = peer_diffusers.PeerProcess(_tiny_peer_spec(), batch)
  assert child.info['num_params'] == here.num_params
  assert child.info['torch_threads'] == 1
  assert child.run(2) > 0  # with the untimed first step, 3 steps as here
  assert child.last_loss == pytest.approx(float(here.last_loss), rel=1e-6)
  assert child.last_loss > 0
  final = child.close()
  assert final['process_peak_rss_bytes'] > 50 * 2**20  # torch alone is bigger than this


def test_a_peer_process_that_fails_is_reported_not_waited_for():
  pytest.importorskip('diffusers')
  from benchmarks import peer_diffusers
  spec = _tiny_peer_spec()
  spec['heads'] = 0  # the child fails building the model (hidden // heads)
  with pytest.raises(RuntimeError, match='peer process exited'):
    peer_diffusers.PeerProcess(spec, _tiny_batch())


def test_profile_step_sums_xla_ops_by_kind_and_shape():
  from benchmarks import profile_step
  hlo = ('  %ynn_fusion.3 = f32[8,4]{1,0} fusion(%a), kind=kCustom\n'
         '  ROOT %copy_bitcast_fusion = f32[4,8]{1,0} fusion(%ynn_fusion.3), kind=kLoop\n')
  shapes = profile_step.output_shapes(hlo)
  assert shapes == {'ynn_fusion.3': 'f32[8,4]{1,0}', 'copy_bitcast_fusion': 'f32[4,8]{1,0}'}
  events = [{'ph': 'X', 'name': 'ynn_fusion.3', 'ts': 0, 'dur': 3000},
            {'ph': 'X', 'name': 'ynn_fusion.3', 'ts': 1000, 'dur': 1000},  # overlaps the first
            {'ph': 'X', 'name': 'copy_bitcast_fusion', 'ts': 5000, 'dur': 500},
            {'ph': 'X', 'name': 'ThunkExecutor::Execute', 'ts': 0, 'dur': 9000},  # not an op
            {'ph': 'i', 'name': 'ynn_fusion.3', 'ts': 0},  # not a complete event: left out
            # A GPU kernel is named after itself and names its instruction in args.hlo_op.
            {'ph': 'X', 'name': 'sm90_xmma_gemm_bf16', 'ts': 6000, 'dur': 250,
             'args': {'hlo_op': 'copy_bitcast_fusion'}}]
  summary = profile_step.summarise(events, shapes, top=5)
  assert summary['ops_ms'] == 4.8
  # Ops ran during [0, 3000) + [5000, 5500) + [6000, 6250) us, from 0 to 6250 us.
  assert summary['busy_ms'] == 3.8 and summary['span_ms'] == 6.2
  assert summary['by_kind'] == [{'kind': 'ynn_fusion', 'ms': 4.0, 'calls': 2},
                                {'kind': 'copy_bitcast_fusion', 'ms': 0.8, 'calls': 2}]
  assert summary['by_shape'][0] == {'kind': 'ynn_fusion', 'shape': 'f32[8,4]{1,0}', 'ms': 4.0,
                                    'calls': 2, 'ms_per_call': 2.0}


def _run_profile_step(*flags: str, check: bool = True):
  """`python -m benchmarks.profile_step FLAGS` from the repository root, output captured."""
  import os
  import subprocess
  import sys
  return subprocess.run([sys.executable, '-m', 'benchmarks.profile_step', *flags], check=check,
                        capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _gpu_style_trace() -> list[dict]:
  """A GPU trace as jax.profiler writes one: the device's kernels, and the host's launches of
  the same instructions (named after them, lasting as long as the launch)."""
  return [{'ph': 'M', 'name': 'process_name', 'pid': 1, 'args': {'name': '/device:GPU:0'}},
          {'ph': 'M', 'name': 'process_name', 'pid': 701, 'args': {'name': '/host:CPU'}},
          {'ph': 'X', 'pid': 1, 'ts': 100, 'dur': 2000, 'name': 'nvjet_sm90_tst_128x160',
           'args': {'hlo_op': 'custom-call.5'}},
          {'ph': 'X', 'pid': 1, 'ts': 2100, 'dur': 500, 'name': 'loop_add_fusion',
           'args': {'hlo_op': 'loop_add_fusion.2'}},
          {'ph': 'X', 'pid': 1, 'ts': 2600, 'dur': 10, 'name': 'Memset 3',
           'args': {'hlo_op': 'custom-call.5'}},
          {'ph': 'X', 'pid': 1, 'ts': 3000, 'dur': 70, 'name': 'some_kernel'},  # not XLA's
          {'ph': 'X', 'pid': 701, 'ts': 0, 'dur': 300, 'name': 'custom-call.5'},
          {'ph': 'X', 'pid': 701, 'ts': 300, 'dur': 200, 'name': 'loop_add_fusion.2'}]


def test_profile_step_counts_only_device_events_on_an_accelerator():
  from benchmarks import profile_step
  events = _gpu_style_trace()
  assert profile_step.device_processes(events) == {1: '/device:GPU:0'}
  assert profile_step.trace_platform(events) == 'gpu'
  shapes = {'custom-call.5': '(bf16[64,32]{1,0}, s8[0]{0})', 'loop_add_fusion.2': 'bf16[64,32]'}
  summary = profile_step.summarise(events, shapes, top=5)
  # The host's launch events (0.5 ms) are not kernel time.
  assert summary['by_kind'] == [{'kind': 'custom-call', 'ms': 2.0, 'calls': 2},
                                {'kind': 'loop_add_fusion', 'ms': 0.5, 'calls': 1}]
  assert summary['ops_ms'] == 2.5 and summary['span_ms'] == 2.5
  # Without the HLO, every device event that names its instruction counts, with no shapes.
  unshaped = profile_step.summarise(events, None, top=5)
  assert unshaped['by_kind'] == summary['by_kind'] and unshaped['by_shape'] == []
  assert profile_step.trace_platform(events[2:]) == 'cpu'  # no device process


def test_profile_step_sums_a_kept_trace_again(tmp_path):
  import gzip
  import json
  from benchmarks import profile_step
  trace = tmp_path / 'gpu_trace.json.gz'
  with gzip.open(trace, 'wt') as f:
    json.dump({'traceEvents': _gpu_style_trace()}, f)
  assert profile_step.hlo_copy_path(str(trace)) == str(tmp_path / 'gpu_trace.hlo.txt.gz')
  out = tmp_path / 'profile.jsonl'

  def summed_again():
    _run_profile_step(f'--from_trace={trace}', f'--profile_out={out}')
    return json.loads(out.read_text().splitlines()[-1])

  row = summed_again()
  assert row['platform'] == 'gpu' and row['source_trace'] == str(trace)
  assert row['shapes_known'] is False and row['ops_ms'] == 2.5 and row['by_shape'] == []
  with gzip.open(profile_step.hlo_copy_path(str(trace)), 'wt') as f:
    f.write('  %custom-call.5 = (bf16[64,32]{1,0}, s8[0]{0}) custom-call(%a)\n'
            '  ROOT %loop_add_fusion.2 = bf16[64,32]{1,0} fusion(%custom-call.5)\n')
  row = summed_again()
  assert row['shapes_known'] is True
  assert [(item['kind'], item['shape'], item['ms']) for item in row['by_shape']] == [
      ('custom-call', '(bf16[64,32]{1,0},', 2.0), ('loop_add_fusion', 'bf16[64,32]{1,0}', 0.5)]
  missing = _run_profile_step(f'--from_trace={tmp_path / "absent.json.gz"}', '--profile_out=-',
                              check=False)
  assert missing.returncode != 0 and 'no such file' in missing.stderr


def test_profile_step_traces_a_real_step(tmp_path):
  import json
  out = tmp_path / 'profile.jsonl'
  trace = tmp_path / 'trace.json.gz'
  _run_profile_step('--model=XXS/4', '--resolution=8', '--batch=2', '--warmup=1',
                    f'--profile_out={out}', f'--trace_copy={trace}',
                    # No load is below 0 per core: the run may not wait, and must say it was busy.
                    '--idle_wait=0', '--idle_load_per_core=0')
  row = json.loads(out.read_text())
  kinds = {item['kind'] for item in row['by_kind']}
  assert any('fusion' in kind for kind in kinds), kinds
  assert any(kind.startswith(('ynn', 'dot', 'xnn', 'onednn')) for kind in kinds), kinds
  assert 0 < row['ops_ms'] and 0 < row['step_seconds']
  assert row['model'] == 'XXS/4' and row['batch'] == 2
  assert row['idle_wait_seconds'] == 0 and row['busy'] is True
  assert 'load' in row['busy_reasons'][0], row['busy_reasons']
  # The raw trace is kept, and it holds the ops the row sums.
  import gzip
  from benchmarks import profile_step
  with gzip.open(trace, 'rt') as raw:
    traced = {profile_step.op_kind(event.get('name', '')) for event in json.load(raw)['traceEvents']}
  assert kinds <= traced, kinds - traced
  # So is the step's HLO, and the kept trace summed again gives the row's tables.
  again = tmp_path / 'again.jsonl'
  _run_profile_step(f'--from_trace={trace}', f'--profile_out={again}')
  summed = json.loads(again.read_text())
  assert summed['shapes_known'] is True and summed['platform'] == 'cpu'
  for key in ('ops_ms', 'busy_ms', 'span_ms', 'by_kind', 'by_shape'):
    assert summed[key] == row[key], key


def test_compile_memory_records_each_stage_as_compile_only_reports_it(tmp_path):
  import json
  import os
  import subprocess
  import sys
  from benchmarks import report
  from configs import shapes
  from jdiffrep import config as config_lib
  from jdiffrep import methods
  from jdiffrep import train
  out = tmp_path / 'compile.jsonl'
  subprocess.run([sys.executable, '-m', 'benchmarks.compile_memory',
                  '--config=configs/shapes.py:ddpm', f'--out={out}', '--note=test', '--',
                  '--config.model.name=XXS/8', '--config.batch_size=8'],
                 check=True, capture_output=True, text=True,
                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  (row,) = [json.loads(line) for line in out.read_text().splitlines()]
  assert (row['bench'], row['platform'], row['config'], row['busy']) == (
      'compile_memory', 'cpu', 'configs/shapes.py:ddpm', False)
  assert row['commit'] and row['versions']['jax'] == jax.__version__
  assert list(row['stages']) == ['ddpm']
  stage = row['stages']['ddpm']
  config = config_lib.stage_config(shapes.get_config('ddpm'), 'ddpm')
  config.model.name = 'XXS/8'
  method = methods.make_method(config, (32, 32, 3))
  tx, _ = train.make_optimizer(config.optim)
  assert stage['num_params'] == train.count_params(train.abstract_train_state(method, tx).params)
  assert (stage['model'], stage['batch_size'], stage['devices']) == ('XXS/8', 8, jax.device_count())
  memory = stage['per_device_memory_bytes']
  assert memory['temp'] > 0 and memory['argument'] > 0
  assert memory['peak_estimate'] == (memory['argument'] + memory['output'] - memory['alias']
                                     + memory['temp'])
  # The report's table shows the row, one line per stage.
  (line,) = report.compile_memory_table([row])[2:]
  assert f'| configs/shapes.py:ddpm | ddpm | XXS/8 | 8 |' in line
  assert f'| {memory["peak_estimate"] / 2**30:.2f} |' in line
