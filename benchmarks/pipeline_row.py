r"""One results row from a finished pipeline workdir, appended to results/cpu_shapes_pipeline.jsonl.

  /usr/bin/time -v -o time.log python -m jdiffrep.main --config=configs/shapes.py --workdir=W
  python -m benchmarks.pipeline_row --workdir=W --time_log=time.log \
      --command='/usr/bin/time -v python -m jdiffrep.main --config=configs/shapes.py --workdir=W' \
      [--load_avg_start=0.4] [--note='...'] [--busy_reason='...']

The row holds where its numbers come from: the date, the command, the commit
(`benchmarks.provenance`), the host, a hash of every stage's config.json, and for each stage that
did not train here (a stage copied in from another workdir, a frozen DM read from
`diti.dm_workdir` or `sdae.dm_workdir` outside this one) where it came from, with that run's own
config hash and, where a recorded row covers it, that row's date, commit and command. Each
stage's newest checkpoint, and a reused DM's, is named by a digest of its stored fingerprint
(`checkpoint_digest`): equal digests mean bit-identical training states. Then what
the READMEs quote: the whole run's wall time and peak RSS (from `/usr/bin/time -v`), each
stage's wall time, images/s, steps and final loss, the embeddings' health, and the evaluate
stage's probes (test mAP, categorical accuracy, kNN, per attribute) for every representation.
`python -m benchmarks.report` renders the README tables from these rows.

A run stopped and resumed (SIGTERM saves a checkpoint; the same command continues) is one row
of several segments: repeat `--time_log`, `--load_avg_start` and `--segment_commit` once per
segment, in order. The wall time is then their sum, the peak RSS their largest, and each stage
that resumed says from which step its own wall time counts (`stage_start_steps`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re

from absl import app
from absl import flags
from etils import epath

from benchmarks import provenance
from benchmarks import records as records_lib
from jdiffrep import paths

EVALUATE_STAGE = 'evaluate'
DEFAULT_OUT = os.path.join('benchmarks', 'results', 'cpu_shapes_pipeline.jsonl')

# (methods that read a frozen or warm-start DM, the config section naming its workdir)
_DM_READERS = ((('diti', 'pdae'), 'diti'), (('sdae',), 'sdae'))


def config_hash(config: dict) -> str:
  """The first 12 hex digits of the SHA-256 of `config` as canonical JSON (sorted keys)."""
  canonical = json.dumps(config, sort_keys=True, separators=(',', ':'))
  return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def pipeline_hash(stage_hashes: dict[str, str]) -> str:
  """One hash for the whole run: of the stages' names and config hashes, in pipeline order."""
  return config_hash([[stage, digest] for stage, digest in stage_hashes.items()])


def _read_json(path: epath.Path) -> dict | None:
  return json.loads(path.read_text()) if path.exists() else None


def checkpoint_digest(stage_dir: epath.Path) -> dict | None:
  """{'step', 'sha256'} of the newest checkpoint in `stage_dir`/checkpoints, or None.

  The digest is of the per-leaf fingerprint `jdiffrep.checkpoint.save` stores beside each
  checkpoint (every bit of the train state: params, EMA, optimiser, step, rng), so two runs
  with the same digest ended in bit-identical states, and a stage trained in one run can stand
  for the same stage of another.
  """
  root = stage_dir / 'checkpoints'
  if not root.is_dir():
    return None
  steps = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()), reverse=True)
  for step in steps:
    saved = _read_json(root / str(step) / 'fingerprint' / 'metadata')
    if saved and 'leaves' in saved:
      digest = hashlib.sha256(json.dumps(saved['leaves']).encode()).hexdigest()[:16]
      return {'step': step, 'sha256': digest}
  return None


def _same_path(a, b) -> bool:
  """Whether two local paths or URLs name the same directory (relative ones from the cwd)."""
  return os.fspath(paths.absolute(a)) == os.fspath(paths.absolute(b))


def parse_time_log(text: str) -> dict:
  """The wall time, peak RSS and timed command of `/usr/bin/time -v` output."""
  found = {}
  wall = re.search(r'Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)', text)
  if wall:
    seconds = 0.0
    for part in wall.group(1).split(':'):
      seconds = 60 * seconds + float(part)
    found['wall_seconds_total'] = round(seconds, 1)
  rss = re.search(r'Maximum resident set size \(kbytes\): (\d+)', text)
  if rss:
    found['peak_rss_kb'] = int(rss.group(1))
  command = re.search(r'Command being timed: "(.*)"', text)
  if command:
    found['timed_command'] = command.group(1)
  return found


def _recorded_by(known_rows: list[dict], run_dir: epath.Path, stage: str, digest: str | None
                 ) -> dict | None:
  """Date, commit and command of the newest recorded row whose workdir holds `run_dir` as its
  stage `stage` with the same config hash."""
  for row in reversed(known_rows):
    workdir = row.get('workdir')
    if (workdir and _same_path(epath.Path(workdir) / stage, run_dir)
        and row.get('stage_config_hashes', {}).get(stage) == digest):
      return {key: row.get(key) for key in ('date', 'commit', 'command')}
  return None


def _source(run_dir: epath.Path, stage: str, known_rows: list[dict]) -> dict:
  """What can be read of a run directory another stage came from: its config hash, steps and
  the recorded row that produced it."""
  source = {'path': os.fspath(paths.absolute(run_dir))}
  config = _read_json(run_dir / 'config.json')
  results = _read_json(run_dir / 'results.json')
  if config is None:
    source['config_hash'] = None
    source['unreadable'] = f'no config.json in {run_dir}'
    return source
  source['config_hash'] = config_hash(config)
  if results is not None:
    source['steps'] = results.get('steps')
  source['checkpoint_digest'] = checkpoint_digest(run_dir)
  recorded = _recorded_by(known_rows, run_dir, stage, source['config_hash'])
  if recorded:
    source['recorded_by'] = recorded
  return source


def reused_stages(workdir: epath.Path, stage_configs: dict[str, dict],
                  stage_results: dict[str, dict], known_rows: list[dict]) -> dict[str, dict]:
  """{stage: where what it reuses came from} for each training stage that did not train here.

  `copied_from`: the stage's results.json names another directory as its own (it was trained
  there and copied in). `dm`: its method read a DM from `<section>.dm_workdir` outside this
  workdir's `ddpm/`.
  """
  reused = {}
  for stage, config in stage_configs.items():
    entry = {}
    trained_config = stage_results.get(stage, {}).get('artifacts', {}).get('config')
    if trained_config:
      trained_dir = epath.Path(os.path.dirname(trained_config))
      if not _same_path(trained_dir, workdir / stage):
        entry['copied_from'] = _source(trained_dir, stage, known_rows)
    method = config.get('method', stage)
    for methods, section in _DM_READERS:
      if method not in methods:
        continue
      if section == 'sdae' and config.get('sdae', {}).get('denoiser_init') != 'dm':
        continue
      dm_dir = config.get(section, {}).get('dm_workdir')
      if dm_dir and not _same_path(epath.Path(dm_dir), workdir / 'ddpm'):
        entry['dm'] = {'config_field': f'{section}.dm_workdir',
                       **_source(epath.Path(dm_dir), 'ddpm', known_rows)}
    if entry:
      reused[stage] = entry
  return reused


def _round(x, digits=1):
  return None if x is None else round(x, digits)


def evaluate_numbers(results: dict) -> dict:
  """The evaluate stage's numbers the READMEs quote, under the field names of the older rows."""
  row = {}
  probes = results.get('attribute_probe')
  if probes:
    row['attribute_probe_test_mean_ap'] = {k: v['test_mean_ap'] for k, v in probes.items()}
    row['attribute_probe_per_attribute_ap'] = {k: v['per_attribute_ap'] for k, v in probes.items()}
  categorical = results.get('categorical_probe')
  if categorical:
    row['categorical_linear_per_attribute'] = {k: v['linear']['per_attribute']
                                               for k, v in categorical.items()}
  for key in ('attribute_probe_summary', 'categorical_probe_summary', 'random_encoder_rows',
              'timestep_probe_best_group', 'evaluators'):
    if key in results:
      row[key] = results[key]
  reconstruction = results.get('reconstruction')
  if reconstruction:
    row['reconstruction_psnr_db'] = {k: v['psnr_db'] for k, v in reconstruction.items()}
  return row


def _as_list(value) -> list:
  if value is None:
    return []
  return [value] if isinstance(value, (str, int, float, os.PathLike)) else list(value)


def _segments(command: str, time_logs: list, loads: list, commits: list) -> list[dict]:
  """One entry per timed segment of the run: wall time, peak RSS, load at its start, commit."""
  if len(time_logs) > 1 and (len(loads) not in (0, len(time_logs))
                             or len(commits) not in (0, len(time_logs))):
    raise ValueError(f'{len(time_logs)} time logs (segments of one resumed run) need as many '
                     f'--load_avg_start values ({len(loads)} given) and --segment_commit values '
                     f'({len(commits)} given), in the same order, or none.')
  segments = []
  for i, time_log in enumerate(time_logs):
    timed = parse_time_log(epath.Path(time_log).read_text())
    # The interpreter may be named by its path (`.venv/bin/python`) in the log.
    timed_command = re.sub(r'^\S*/(python[\d.]*) ', r'\1 ', timed.get('timed_command') or '')
    if timed_command and timed_command not in command:
      raise ValueError(f'--command {command!r} does not contain the command {time_log} timed, '
                       f'{timed["timed_command"]!r}: is the time log of another run?')
    segment = {k: v for k, v in timed.items() if k != 'timed_command'}
    if len(time_logs) > 1 and loads:
      segment['load_avg_start'] = loads[i]
    if len(time_logs) > 1 and commits:
      segment['commit'] = commits[i]
    segments.append(segment)
  return segments


def build_row(workdir: str, command: str, *, time_log=None, note: str = '',
              load_avg_start=None, busy_reasons: tuple[str, ...] = (),
              commit: str | None = None, segment_commits=(),
              known_rows: list[dict] | None = None) -> dict:
  """The results row of the finished pipeline in `workdir` (see the module docstring).

  time_log, load_avg_start: one value, or one per segment of a resumed run (in order).
  segment_commits: the commit each segment ran on, for a resumed run.
  known_rows: rows already recorded, to find the run a reused stage came from.
  """
  time_logs = _as_list(time_log)
  loads = _as_list(load_avg_start)
  segments = _segments(command, time_logs, loads, _as_list(segment_commits))
  known_rows = known_rows or []
  workdir_path = paths.absolute(workdir)
  merged = _read_json(workdir_path / 'results.json')
  if merged is None:
    raise FileNotFoundError(f'{workdir_path / "results.json"} does not exist: is {workdir} the '
                            'workdir of a finished `python -m jdiffrep.main` pipeline run?')
  pipeline = merged['pipeline']
  training = [stage for stage in pipeline if stage != EVALUATE_STAGE]
  stage_configs, stage_results = {}, {}
  for stage in training:
    config = _read_json(workdir_path / stage / 'config.json')
    if config is None:
      raise FileNotFoundError(f'{workdir_path / stage / "config.json"} does not exist: stage '
                              f'{stage} of {workdir} has not run.')
    stage_configs[stage] = config
    stage_results[stage] = (_read_json(workdir_path / stage / 'results.json')
                            or merged['stages'].get(stage, {}))
  stage_hashes = {stage: config_hash(config) for stage, config in stage_configs.items()}
  first = stage_configs[training[0]] if training else {}
  row = {'date': provenance.utc_now(), 'command': command,
         'commit': commit or provenance.commit(),
         'host': provenance.host(), 'stage': 'pipeline', 'pipeline': pipeline,
         'workdir': os.fspath(workdir_path), 'config_name': merged.get('config_name'),
         'config_hash': pipeline_hash(stage_hashes), 'stage_config_hashes': stage_hashes,
         'dataset': first.get('dataset', {}).get('name'), 'seed': first.get('seed')}
  if stage_results:
    any_stage = next(iter(stage_results.values()))
    row['device'] = f'{any_stage.get("device_kind")} x{any_stage.get("devices")}'
  if len(segments) == 1:
    row.update(segments[0])
  elif segments:
    row['segments'] = segments
    walls = [s.get('wall_seconds_total') for s in segments]
    if None not in walls:
      row['wall_seconds_total'] = round(sum(walls), 1)
    peaks = [s['peak_rss_kb'] for s in segments if 'peak_rss_kb' in s]
    if peaks:
      row['peak_rss_kb'] = max(peaks)
  if loads:
    row['load_avg_start'] = loads[0]
  reasons = list(busy_reasons)
  for i, load in enumerate(loads):
    found = records_lib.busy_reasons(load, provenance.cores())
    reasons += [f'segment {i + 1}: {r}' for r in found] if len(loads) > 1 else found
  if loads or reasons:
    row['busy'] = bool(reasons)
    if reasons:
      row['busy_reasons'] = reasons
  row['stage_wall_seconds'] = {s: _round(r.get('wall_seconds')) for s, r in stage_results.items()}
  row['stage_images_per_sec'] = {s: _round(r.get('images_per_sec'))
                                 for s, r in stage_results.items()}
  row['stage_steps'] = {s: r.get('steps') for s, r in stage_results.items()}
  resumed = {s: r['start_step'] for s, r in stage_results.items() if r.get('start_step')}
  if resumed:  # the stage's wall time counts from this step (the segment that finished it)
    row['stage_start_steps'] = resumed
  row['stage_checkpoint_digests'] = {s: checkpoint_digest(workdir_path / s) for s in training}
  row['stage_batch_size'] = {s: r.get('batch_size') for s, r in stage_results.items()}
  row['stage_final_loss'] = {s: r.get('final_loss') for s, r in stage_results.items()}
  health = {s: r['embedding_health'] for s, r in stage_results.items()
            if r.get('embedding_health')}
  if health:
    row['embedding_health'] = health
  row['reused_stages'] = reused_stages(workdir_path, stage_configs, stage_results, known_rows)
  evaluate = (_read_json(workdir_path / EVALUATE_STAGE / 'results.json')
              if EVALUATE_STAGE in pipeline else None)
  if evaluate is not None:
    row.update(evaluate_numbers(evaluate))
  if note:
    row['note'] = note
  return row


def read_rows(path: str) -> list[dict]:
  """The rows of a JSONL file ([] when it does not exist)."""
  path = epath.Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_row(row: dict, out: str) -> None:
  """Appends `row` as one JSON line to `out`."""
  path = epath.Path(out)
  path.parent.mkdir(parents=True, exist_ok=True)
  text = path.read_text() if path.exists() else ''
  if text and not text.endswith('\n'):
    text += '\n'
  path.write_text(text + json.dumps(row) + '\n')


_FLAGS: dict = {}


def _define_flags() -> None:
  """Flags of the command line only (tests import this module beside others with --out)."""
  _FLAGS.update(
      workdir=flags.DEFINE_string('workdir', None, 'The finished pipeline workdir.'),
      command=flags.DEFINE_string('command', None,
                                  'The exact command that produced the workdir.'),
      time_log=flags.DEFINE_multi_string(
          'time_log', [], 'The output of `/usr/bin/time -v` of the run; once per segment of '
          'a run that was stopped and resumed, in order.'),
      note=flags.DEFINE_string('note', '',
                               'Free text: what the run was for, what ran beside it.'),
      load=flags.DEFINE_multi_float('load_avg_start', [],
                                    'The 1-minute load when the run (each segment) started '
                                    '(busy if not below 0.5 per usable core).'),
      segment_commit=flags.DEFINE_multi_string(
          'segment_commit', [], 'The commit each segment of a resumed run ran on, in order.'),
      busy=flags.DEFINE_multi_string('busy_reason', [],
                                     'Marks the row busy, with this reason.'),
      commit=flags.DEFINE_string('commit', None, 'The commit the run ran on, when the '
                                 'checkout has moved since (default: the checkout now).'),
      out=flags.DEFINE_string('out', DEFAULT_OUT,
                              'The JSONL file to append to; - prints only.'))


def main(argv) -> None:
  del argv
  value = {name: flag.value for name, flag in _FLAGS.items()}
  if not value['workdir'] or not value['command']:
    raise app.UsageError('--workdir and --command are required.')
  known = read_rows(value['out']) if value['out'] != '-' else []
  row = build_row(value['workdir'], value['command'], time_log=value['time_log'],
                  note=value['note'], load_avg_start=value['load'],
                  busy_reasons=tuple(value['busy']), known_rows=known,
                  commit=value['commit'], segment_commits=value['segment_commit'])
  print(json.dumps(row))
  if value['out'] != '-':
    append_row(row, value['out'])


if __name__ == '__main__':
  _define_flags()
  app.run(main)
