"""The README's pipeline numbers come from results rows: the managed blocks re-render exactly, the
default run's prose quotes only recorded numbers, and the row builder records provenance."""

import json
import os
import re
import subprocess
import sys

import pytest

from benchmarks import pipeline_row
from benchmarks import pipeline_tables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'benchmarks', 'results')


def _read(relative: str) -> str:
  with open(os.path.join(REPO, relative)) as f:
    return f.read()


def _all_numbers(value) -> list[float]:
  if isinstance(value, bool):
    return []
  if isinstance(value, (int, float)):
    return [float(value)]
  if isinstance(value, dict):
    return [x for v in value.values() for x in _all_numbers(v)]
  if isinstance(value, list):
    return [x for v in value for x in _all_numbers(v)]
  return []


# ---------------------------------------------------------------- the READMEs

@pytest.mark.parametrize('relative', sorted(pipeline_tables.BLOCKS))
def test_every_managed_block_is_what_its_rows_render(relative):
  rows = pipeline_tables.load_rows(RESULTS)
  text = _read(relative)
  for name, render in pipeline_tables.BLOCKS[relative].items():
    block = pipeline_tables.block_text(text, name)
    assert block == render(rows), (
        f'{relative} block {name} differs from its rows: run `python -m benchmarks.report`')
    assert re.search(r'\| [0-9]', block), f'{relative} block {name} holds no number'
    # It names a row of the JSONL file by its command and commit.
    commands = re.findall(r'`([^`]*python -m jdiffrep\.main[^`]*)`', block)
    assert commands
    assert all(any(pipeline_tables.command_of(r) in c for r in rows) for c in commands)


def test_default_block_quotes_the_newest_idle_row_of_the_readme_command():
  rows = pipeline_tables.load_rows(RESULTS)
  row = pipeline_tables.newest(rows, pipeline_tables.is_default_run)
  block = pipeline_tables.block_text(_read('README.md'), 'shapes_default')
  assert f'(commit {row["commit"][:7]})' in block
  ap = row['attribute_probe_test_mean_ap']
  assert f'| DiTi z | {ap["diti"]:.3f} |' in block
  assert f'| raw pixels | {ap["pixels"]:.3f} |' in block


def _recorded_numbers() -> tuple[set, set]:
  numbers = []
  for name in os.listdir(RESULTS):
    if name.endswith('.jsonl'):
      with open(os.path.join(RESULTS, name)) as f:
        numbers += [x for line in f if line.strip() for x in _all_numbers(json.loads(line))]
  return {round(x, 2) for x in numbers}, {round(x, 3) for x in numbers}


def test_the_default_runs_prose_in_readme_quotes_only_recorded_numbers():
  """Scores (0.xx, 0.xxx) and run times (N min M s) the README states around the default run's
  table are values of some row in benchmarks/results (to the digits quoted)."""
  text = _read('README.md')
  prose = text[text.index('Run 1 writes'):text.index('Each training stage')]
  for name in pipeline_tables.BLOCKS['README.md']:  # the tables: checked against their rows
    begin, end = pipeline_tables.markers(name)
    prose = prose[:prose.index(begin)] + prose[prose.index(end):]
  two, three = _recorded_numbers()
  scores = re.findall(r'(?<![\d.])0\.\d{2,3}(?!\d)', prose)
  assert len(scores) >= 8
  missing = [s for s in scores if float(s) not in (three if len(s) == 5 else two)]
  assert not missing, f'README numbers without a row: {missing}'
  rows = pipeline_tables.load_rows(RESULTS)
  walls = {round(r['wall_seconds_total']) for r in rows if 'wall_seconds_total' in r}
  times = re.findall(r'(\d+) min (\d+) s', prose)
  assert times
  assert all(60 * int(m) + int(s) in walls for m, s in times), times


# ---------------------------------------------------------------- rendering rules

def _row(**fields):
  row = {'date': '2026-12-03T10:00:00+00:00', 'commit': 'a' * 40,
         'command': 'python -m jdiffrep.main --config=configs/shapes.py --workdir=runs/x',
         'stage': 'pipeline', 'wall_seconds_total': 1000.0, 'peak_rss_kb': 2 * 2**20,
         'stage_wall_seconds': {'ddpm': 400.0, 'diti': 100.0},
         'attribute_probe_test_mean_ap': {'diti': 0.5, 'pixels': 0.9}}
  row.update(fields)
  return row


def test_busy_and_reusing_rows_never_become_the_default_table():
  rows = [_row(commit='1' * 40), _row(commit='2' * 40, busy=True),
          _row(commit='3' * 40, reused_stages={'diti': {'dm': {'path': '/x/ddpm',
                                                               'config_field': 'diti.dm_workdir'}}})]
  block = pipeline_tables.render_default(rows)
  assert '(commit 1111111)' in block
  assert '| 16 min 40 s | 2.00 GiB |  | 400 s | 100 s | 500 s |' in block
  assert '| DiTi z | 0.500 |' in block and '| raw pixels | 0.900 |' in block
  history = pipeline_tables.render_history(rows)
  assert '1111111' in history and '2222222' not in history
  assert "3333333 | `python -m jdiffrep.main --config=configs/shapes.py --workdir=runs/x` " \
         "Reused: diti's DM from `/x/ddpm` (diti.dm_workdir)." in history
  assert '1 busy row is left out' in history
  with pytest.raises(ValueError, match='no row'):
    pipeline_tables.render_default([_row(busy=True)])


def _long_row(seed, diti_map, position, *, commit='c' * 40, dm_hash='d1', **fields):
  command = ('python -m jdiffrep.main --config=configs/shapes_long.py:diti,evaluate '
             f'--workdir=runs/long_s{seed} --config.diti.dm_workdir=runs/dm '
             f'--config.seed={seed}')
  row = _row(commit=commit, command=command, seed=seed, stage_steps={'diti': 10_000},
             stage_wall_seconds={'diti': 1800.0 + seed},
             attribute_probe_test_mean_ap={'diti': diti_map, 'pixels': 0.935},
             categorical_probe_summary={'diti': {'linear': diti_map - 0.01, 'knn': 0.9}},
             categorical_linear_per_attribute={'diti': {
                 'background': 1.0, 'position': position, 'shade': 1.0, 'shape': 0.9,
                 'size': 1.0, 'texture': 0.95}},
             reused_stages={'diti': {'dm': {'path': '/r/dm', 'config_hash': dm_hash,
                                            'config_field': 'diti.dm_workdir'}}})
  row.update(fields)
  return row


def test_long_diti_seeds_table_has_each_seed_their_mean_and_range():
  rows = [_long_row(0, 0.962, 0.97, commit='0' * 40, note='old code'),
          _long_row(0, 0.940, 0.80), _long_row(1, 0.920, 0.60, commit='e' * 40),
          _long_row(2, 0.990, 0.50),  # a newer row of seed 2 replaces it
          _long_row(2, 0.950, 0.90, dm_hash='d2'),  # another DM: not in the seed table
          _long_row(2, 0.910, 0.50, busy=True)]  # busy: its score counts, not its wall time
  seeds = pipeline_tables.render_long_seeds(rows)
  # the newest row of each seed on the newest row's DM, whatever commit each ran on
  assert '3 rows of 2026-12-03 (commits ccccccc, eeeeeee)' in seeds
  assert '`/r/dm` (config hash d1)' in seeds
  assert '| 0 | ccccccc | 0.940 | 0.935 | 0.930 | 0.900 | 1.000 | 0.800 |' in seeds
  assert '| 1 | eeeeeee | 0.920 |' in seeds and '| 2 | ccccccc | 0.910 |' in seeds
  assert '| 10000 | 30 min 0 s |' in seeds and '| 10000 | 30 min 1 s |' in seeds
  assert '| 10000 | busy |' in seeds
  assert '1 of the 3 runs shared the machine (busy): its score counts' in seeds
  assert '0.990' not in seeds and '0.962' not in seeds
  # mean and range of DiTi's mAP and of position, over the three seeds
  assert '| mean (range) | | **0.923** (0.910-0.940) | **0.935** (0.935-0.935) |' in seeds
  assert '**0.633** (0.500-0.800)' in seeds
  assert 'above raw pixels (test mAP) in 1 of 3 seeds' in seeds
  history = pipeline_tables.render_long_history(rows)
  assert history.count('configs/shapes_long.py:diti,evaluate --workdir') == 6  # busy ones too
  assert '| 2026-12-03 | 0000000 |' in history and '| old code |' in history
  assert '| 10000 | 0.962 | 0.952 | 0.970 | 0.935 |' in history
  assert not any(pipeline_tables.is_pipeline_row(r) for r in rows)  # not in the default history
  with pytest.raises(ValueError, match='no long DiTi row'):
    pipeline_tables.render_long_seeds([_row()])


def _long_sdae_row(seed, best_map, best_linear, *, dm_hash='d1', **fields):
  command = ('python -m jdiffrep.main --config=configs/shapes_long.py:sdae,evaluate '
             f'--workdir=runs/long_sdae_s{seed} --config.sdae.dm_workdir=runs/dm '
             f'--config.seed={seed}')
  row = _row(command=command, seed=seed, stage_steps={'sdae': 14_000},
             stage_wall_seconds={'sdae': 4200.0},
             attribute_probe_summary={
                 'sdae_best_t': {'t': 0, 'test_mean_ap': best_map},
                 'sdae_mean_t': {'test_mean_ap': best_map - 0.01},
                 'pixels': {'test_mean_ap': 0.935}},
             categorical_probe_summary={
                 'sdae_best_t': {'t': 100, 'linear': best_linear, 'knn': 0.95},
                 'sdae_mean_t': {'linear': best_linear + 0.001, 'knn': 0.96},
                 'pixels': {'linear': 0.932, 'knn': 0.87}},
             categorical_linear_per_attribute={
                 'sdae_t0': dict.fromkeys(pipeline_tables.LONG_ATTRIBUTES, 0.5),
                 'sdae_t100': {'background': 1.0, 'position': 0.98 - seed / 100, 'shade': 1.0,
                               'shape': 0.94, 'size': 0.98, 'texture': 0.93}},
             reused_stages={'sdae': {'dm': {'path': '/r/dm', 'config_hash': dm_hash,
                                            'config_field': 'sdae.dm_workdir'}}})
  row.update(fields)
  return row


def test_long_sdae_seeds_table_reads_each_score_at_the_t_validation_chose():
  rows = [_long_sdae_row(0, 0.940, 0.974, busy=True), _long_sdae_row(1, 0.930, 0.960),
          _long_sdae_row(2, 0.915, 0.930, dm_hash='d0'),  # another DM: left out
          _long_sdae_row(2, 0.950, 0.980), _long_row(3, 0.99, 1.0)]  # a DiTi row: left out
  seeds = pipeline_tables.render_long_sdae_seeds(rows)
  assert '3 rows of 2026-12-03' in seeds and '--config.seed=3' not in seeds
  # best t of the attribute probe (t = 0) and of the categorical one (t = 100), each stated;
  # the per-attribute columns at the categorical best t (sdae_t100, not sdae_t0)
  assert ('| 0 | aaaaaaa | 0.940 (t = 0) | 0.930 | 0.935 | 0.974 (t = 100) | 0.975 | 0.950 '
          '| 0.932 | 1.000 | 0.980 | 1.000 | 0.940 | 0.980 | 0.930 | 14000 | busy |') in seeds
  assert '| 1 | aaaaaaa | 0.930 (t = 0) |' in seeds and '| 70 min 0 s |' in seeds
  assert '0.915' not in seeds
  assert '| mean (range) | | **0.940** (0.930-0.950) | **0.930** (0.920-0.940) |' in seeds
  assert '**0.970** (0.960-0.980)' in seeds  # position over the three seeds
  assert ('sdae scores above raw pixels (test mAP) in 2 of 3 seeds at its best t, and in '
          'categorical accuracy in 3 of 3') in seeds
  with pytest.raises(ValueError, match='no long sdae row'):
    pipeline_tables.render_long_sdae_seeds([_long_row(0, 0.9, 1.0)])


def test_whole_long_run_table_sums_its_segments_and_ranks_every_representation():
  command = 'python -m jdiffrep.main --config=configs/shapes_long.py --workdir=runs/shapes_long'
  health = {'health_ema/effective_rank': 20.0, 'health_ema/std_mean': 0.05,
            'health_ema/std_reference': 0.0625}
  long_run = _row(
      command=f'/usr/bin/time -v {command}', commit='b' * 40,
      wall_seconds_total=10_000.0, peak_rss_kb=3 * 2**20,
      segments=[{'wall_seconds_total': 4000.0, 'load_avg_start': 0.1},
                {'wall_seconds_total': 6000.0, 'load_avg_start': 0.3}],
      stage_wall_seconds={'ddpm': 400.0, 'diti': 2000.0, 'simclr': 1500.0},
      stage_start_steps={'simclr': 3000},
      attribute_probe_test_mean_ap={'diti': 0.96, 'simclr': 0.91, 'pixels': 0.935,
                                    'random_diti': 0.85},
      random_encoder_rows={'random_diti': ['diti', 'simclr']},
      embedding_health={'diti': health})
  others = [_row(), _long_row(0, 0.95, 1.0),  # the default command; one long stage on a DM
            _row(command=command, commit='c' * 40,  # reused a stage: not from an empty workdir
                 reused_stages={'diti': {'copied_from': {'path': '/x/diti'}}})]
  block = pipeline_tables.render_long_run(others[:1] + [long_run] + others[1:])
  assert f'(commit bbbbbbb) in `results/cpu_shapes_pipeline.jsonl`: `/usr/bin/time -v {command}`' \
      in block
  assert ('| 166 min 40 s (2 segments) | 3.00 GiB | 0.1, 0.3 | 400 s | 2000 s '
          '| 1500 s (from step 3000) | 6100 s |') in block
  # best test mAP first, SimCLR beside the random encoder it shares with DiTi, with health
  lines = [line for line in block.splitlines() if line.startswith('| ') and 'z' in line]
  assert lines[0].startswith('| DiTi z | 0.960 |') and lines[0].endswith('| 20.0 | 0.80 |')
  assert '| SimCLR z | 0.910 |' in block
  assert '| random encoder of diti, simclr (`random_diti`) | 0.850 |' in block
  busy = pipeline_tables.render_long_run(
      [{**long_run, 'busy': True, 'busy_reasons': ['tests ran beside it']}])
  assert 'shared the machine (tests ran beside it)' in busy and '166 min' not in busy
  assert '| DiTi z | 0.960 |' in busy  # the scores still count
  with pytest.raises(ValueError, match='empty workdir'):
    pipeline_tables.render_long_run(others)


def test_replace_block_keeps_the_rest_and_needs_both_markers():
  text = 'a\n<!-- t:begin -->\nold\n<!-- t:end -->\nb\n'
  assert pipeline_tables.replace_block(text, 't', 'new\n') == (
      'a\n<!-- t:begin -->\nnew\n<!-- t:end -->\nb\n')
  with pytest.raises(ValueError, match='exactly one'):
    pipeline_tables.replace_block('a <!-- t:begin --> b', 't', 'x\n')


# ---------------------------------------------------------------- the row builder

def _write(path, value):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(value, indent=2))


def _fake_run(tmp_path):
  """A finished pipeline workdir (ddpm trained here, diti on a DM from another run, sdae copied
  in), the other run's DM, and a /usr/bin/time -v log."""
  work, other = tmp_path / 'runs' / 'w', tmp_path / 'runs' / 'other'
  dm_config = {'method': 'ddpm', 'seed': 0, 'dataset': {'name': 'shapes'}, 'lr': 1e-4}
  _write(other / 'ddpm' / 'config.json', dm_config)
  _write(other / 'ddpm' / 'results.json', {'steps': 2400})
  _checkpoint(other / 'ddpm', 2400, [2400, 1, 2])
  configs = {
      'ddpm': dm_config,
      'diti': {'method': 'diti', 'seed': 0, 'dataset': {'name': 'shapes'},
               'diti': {'dm_workdir': str(other / 'ddpm')}},
      'sdae': {'method': 'sdae', 'seed': 0, 'dataset': {'name': 'shapes'},
               'sdae': {'denoiser_init': 'dm', 'dm_workdir': None}},
  }
  trained_in = {'ddpm': work / 'ddpm', 'diti': work / 'diti', 'sdae': tmp_path / 'old' / 'sdae'}
  for number, (stage, config) in enumerate(configs.items()):
    _write(work / stage / 'config.json', config)
    _write(work / stage / 'results.json', {
        'steps': 100 * (number + 1), 'batch_size': 32, 'final_loss': 0.01 * (number + 1),
        'images_per_sec': 150.04 + number, 'wall_seconds': 300.04 + number,
        'device_kind': 'cpu', 'devices': 1,
        'embedding_health': {'health_ema/effective_rank': 9.0} if stage != 'ddpm' else {},
        'artifacts': {'config': str(trained_in[stage] / 'config.json')}})
  _write(work / 'results.json', {'config_name': 'shapes', 'stages': {},
                                 'pipeline': ['ddpm', 'diti', 'sdae', 'evaluate']})
  _write(work / 'evaluate' / 'results.json', {
      'attribute_probe': {
          'diti': {'test_mean_ap': 0.812, 'validation_mean_ap': 0.8,
                   'per_attribute_ap': {'shape': 0.7}},
          'pixels': {'test_mean_ap': 0.935, 'validation_mean_ap': 0.93,
                     'per_attribute_ap': {'shape': 0.9}}},
      'attribute_probe_summary': {'diti': {'validation_mean_ap': 0.8, 'test_mean_ap': 0.812},
                                  'pixels': {'validation_mean_ap': 0.93, 'test_mean_ap': 0.935}},
      'categorical_probe': {'diti': {'linear': {'mean': 0.7, 'per_attribute': {'shape': 0.6}},
                                     'knn': {'mean': 0.65}}},
      'categorical_probe_summary': {'diti': {'validation': 0.71, 'linear': 0.7, 'knn': 0.65}},
      'reconstruction': {'diti': {'psnr_db': 25.5, 'mse': 0.01}},
      'evaluators': {'attribute_probe': 'ran in 1.0 s', 'counterfactual': 'reused'}})
  timed = f'python -m jdiffrep.main --config=configs/shapes.py --workdir={work}'
  log = tmp_path / 'time.log'
  log.write_text(f'\tCommand being timed: "{timed}"\n\tUser time (seconds): 1.0\n'
                 '\tElapsed (wall clock) time (h:mm:ss or m:ss): 16:48.12\n'
                 '\tMaximum resident set size (kbytes): 2493544\n')
  return work, other, configs, log, timed


def test_row_records_provenance_timing_reuse_and_evaluate_numbers(tmp_path, monkeypatch):
  monkeypatch.setenv('JDIFFREP_COMMIT', 'c0ffee1234')
  work, other, configs, log, timed = _fake_run(tmp_path)
  dm_hash = pipeline_row.config_hash(configs['ddpm'])
  known = [{'date': '2026-12-01', 'commit': 'beef123', 'command': 'the other command',
            'workdir': str(other), 'stage_config_hashes': {'ddpm': dm_hash}}]
  row = pipeline_row.build_row(str(work), f'/usr/bin/time -v {timed}', time_log=str(log),
                               note='a test', load_avg_start=0.1, known_rows=known)

  assert row['commit'] == 'c0ffee1234' and row['command'] == f'/usr/bin/time -v {timed}'
  assert row['stage'] == 'pipeline' and row['pipeline'] == ['ddpm', 'diti', 'sdae', 'evaluate']
  hashes = {stage: pipeline_row.config_hash(config) for stage, config in configs.items()}
  assert row['stage_config_hashes'] == hashes and len(set(hashes.values())) == 3
  assert row['config_hash'] == pipeline_row.pipeline_hash(hashes)
  # Key order and whitespace do not change a config's hash; a value does.
  assert pipeline_row.config_hash({'b': 1, 'a': [1, 2]}) == pipeline_row.config_hash(
      json.loads('{"a": [1,2],  "b": 1}'))
  assert pipeline_row.config_hash({'a': 1}) != pipeline_row.config_hash({'a': 2})
  assert row['wall_seconds_total'] == 1008.1 and row['peak_rss_kb'] == 2493544
  assert row['load_avg_start'] == 0.1 and row['busy'] is False
  assert row['stage_wall_seconds'] == {'ddpm': 300.0, 'diti': 301.0, 'sdae': 302.0}
  assert row['stage_images_per_sec'] == {'ddpm': 150.0, 'diti': 151.0, 'sdae': 152.0}
  assert row['stage_steps'] == {'ddpm': 100, 'diti': 200, 'sdae': 300}
  assert row['stage_checkpoint_digests'] == {'ddpm': None, 'diti': None, 'sdae': None}
  assert set(row['embedding_health']) == {'diti', 'sdae'}
  assert row['dataset'] == 'shapes' and row['device'] == 'cpu x1' and row['note'] == 'a test'

  reused = row['reused_stages']
  assert set(reused) == {'diti', 'sdae'}  # ddpm trained here; sdae's DM is this run's ddpm
  dm = reused['diti']['dm']
  assert dm['config_field'] == 'diti.dm_workdir' and dm['path'] == str(other / 'ddpm')
  assert dm['config_hash'] == dm_hash and dm['steps'] == 2400
  assert dm['checkpoint_digest']['step'] == 2400
  assert dm['recorded_by'] == {'date': '2026-12-01', 'commit': 'beef123',
                               'command': 'the other command'}
  copied = reused['sdae']['copied_from']
  assert copied['path'] == str(tmp_path / 'old' / 'sdae') and copied['config_hash'] is None
  assert 'no config.json' in copied['unreadable']

  assert row['attribute_probe_test_mean_ap'] == {'diti': 0.812, 'pixels': 0.935}
  assert row['attribute_probe_per_attribute_ap']['pixels'] == {'shape': 0.9}
  assert row['categorical_linear_per_attribute'] == {'diti': {'shape': 0.6}}
  assert row['categorical_probe_summary']['diti']['linear'] == 0.7
  assert row['reconstruction_psnr_db'] == {'diti': 25.5}
  assert row['evaluators']['counterfactual'] == 'reused'

  # The table names the reuse, so the row never passes for the README command from scratch.
  assert not pipeline_tables.is_default_run(row)
  history = pipeline_tables.render_history([row])
  assert f"Reused: diti's DM from `{other / 'ddpm'}` (diti.dm_workdir); sdae copied from" in history
  assert '| 16 min 48 s | 2.38 GiB | 300 s | 301 s |  | 302 s |' in history
  assert '| 0.812 |  |  |  | 0.935 |' in history


def _checkpoint(stage_dir, step, leaves):
  _write(stage_dir / 'checkpoints' / str(step) / 'fingerprint' / 'metadata', {'leaves': leaves})


def test_checkpoint_digest_names_the_newest_state_bit_for_bit(tmp_path):
  a, b = tmp_path / 'a' / 'diti', tmp_path / 'b' / 'diti'
  _checkpoint(a, 1000, [1000, 7, 9])
  _checkpoint(a, 2000, [2000, 8, 9])
  (a / 'checkpoints' / '3000.orbax-checkpoint-tmp-1').mkdir()  # unfinished: not a checkpoint
  _checkpoint(b, 2000, [2000, 8, 9])
  digest = pipeline_row.checkpoint_digest(a)
  assert digest['step'] == 2000 and len(digest['sha256']) == 16
  assert pipeline_row.checkpoint_digest(b) == digest  # the same state in another run
  _checkpoint(b, 2000, [2000, 8, 10])  # one leaf differs
  assert pipeline_row.checkpoint_digest(b)['sha256'] != digest['sha256']
  assert pipeline_row.checkpoint_digest(tmp_path / 'none') is None


def test_row_of_a_busy_machine_and_a_time_log_of_another_run(tmp_path, monkeypatch):
  monkeypatch.setenv('JDIFFREP_COMMIT', 'c0ffee1234')
  work, _, _, log, timed = _fake_run(tmp_path)
  row = pipeline_row.build_row(str(work), timed, load_avg_start=50.0,
                               busy_reasons=('tests ran beside it',))
  assert row['busy'] is True and row['busy_reasons'][0] == 'tests ran beside it'
  assert 'not below 0.5 per usable core' in row['busy_reasons'][1]
  assert 'wall_seconds_total' not in row
  with pytest.raises(ValueError, match='another run'):
    pipeline_row.build_row(str(work), 'python -m jdiffrep.main --workdir=elsewhere',
                           time_log=str(log))
  with pytest.raises(FileNotFoundError, match='finished'):
    pipeline_row.build_row(str(tmp_path / 'empty'), timed)


def test_a_run_resumed_over_segments_is_one_row_with_their_sum(tmp_path, monkeypatch):
  monkeypatch.setenv('JDIFFREP_COMMIT', 'c0ffee1234')
  work, _, _, log, timed = _fake_run(tmp_path)
  second = tmp_path / 'time2.log'  # the same command again, after a SIGTERM
  second.write_text(f'\tCommand being timed: "{timed}"\n'
                    '\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03.5\n'
                    '\tMaximum resident set size (kbytes): 3000000\n')
  results = json.loads((work / 'sdae' / 'results.json').read_text())
  _write(work / 'sdae' / 'results.json', {**results, 'start_step': 120})
  row = pipeline_row.build_row(str(work), timed, time_log=[str(log), str(second)],
                               load_avg_start=[0.2, 1.5], segment_commits=['aaa1', 'bbb2'])
  assert row['wall_seconds_total'] == pytest.approx(1008.1 + 3723.5)
  assert row['peak_rss_kb'] == 3000000
  assert row['segments'] == [
      {'wall_seconds_total': 1008.1, 'peak_rss_kb': 2493544, 'load_avg_start': 0.2,
       'commit': 'aaa1'},
      {'wall_seconds_total': 3723.5, 'peak_rss_kb': 3000000, 'load_avg_start': 1.5,
       'commit': 'bbb2'}]
  assert row['stage_start_steps'] == {'sdae': 120}
  # Busy when any segment started on a loaded machine, and the reason names the segment.
  assert row['busy'] is True and row['busy_reasons'][0].startswith('segment 2: ')
  table = '\n'.join(pipeline_tables.run_table(row))
  assert ('| 78 min 52 s (2 segments) | 2.86 GiB | 0.2, 1.5 | 300 s | 301 s '
          '| 302 s (from step 120) |') in table
  with pytest.raises(ValueError, match='as many'):
    pipeline_row.build_row(str(work), timed, time_log=[str(log), str(second)],
                           load_avg_start=[0.2])


def test_command_line_appends_one_row(tmp_path):
  work, _, _, log, timed = _fake_run(tmp_path)
  out = tmp_path / 'rows.jsonl'
  out.write_text('{"date": "2026-12-01", "stage": "ddpm"}')  # no newline at the end
  env = {**os.environ, 'JDIFFREP_COMMIT': 'c0ffee1234', 'PYTHONPATH': REPO}
  subprocess.run([sys.executable, '-m', 'benchmarks.pipeline_row', f'--workdir={work}',
                  f'--command={timed}', f'--time_log={log}', f'--out={out}'],
                 check=True, cwd=REPO, env=env, capture_output=True, timeout=60)
  lines = out.read_text().splitlines()
  assert len(lines) == 2 and json.loads(lines[0])['stage'] == 'ddpm'
  row = json.loads(lines[1])
  assert row['commit'] == 'c0ffee1234' and row['wall_seconds_total'] == 1008.1
  assert row['attribute_probe_test_mean_ap']['diti'] == 0.812
