r"""Trains with the real CLI for a fixed time and records the trainer's own images/s.

  python -m benchmarks.train_speed --config=configs/shapes.py:ddpm --seconds=120 \
      [--workdir=DIR] [--out=FILE] [--note=...] [-- --config.batch_size=64 ...]

Starts `python -m jdiffrep.main` with an unbounded step count, lets it train for `--seconds`
from the moment it reports its compiled step (dataset preparation and compilation are not
counted), then sends SIGTERM: the trainer saves a checkpoint and exits cleanly, and its
results.json holds images/s over the timed steps (compile and sampling left out). Appends one
JSON line (device, date, commit, versions, command, images/s, steps) to `--out`, by default
`benchmarks/results/<cpu|gpu|tpu>_train_speed.jsonl`. The parent imports JAX only for its
version and never starts a backend, so on an accelerator the child has the device to itself.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags

from benchmarks import provenance

_CONFIG = flags.DEFINE_string('config', 'configs/shapes.py:ddpm', 'Config (one training stage).')
_SECONDS = flags.DEFINE_float('seconds', 120.0, 'Seconds of training after compilation.',
                              lower_bound=1.0)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (default: a new temporary one).')
_OUT = flags.DEFINE_string('out', '', 'JSONL file to append to (default: '
                           'benchmarks/results/<platform>_train_speed.jsonl; "-" for none).')
_NOTE = flags.DEFINE_string('note', '', 'Free-form note stored with the result.')
_START_TIMEOUT = flags.DEFINE_float('start_timeout', 900.0, 'Seconds allowed for data '
                                   'preparation and compilation before the run is abandoned.')

COMPILED_MARKER = 'Compiled train step'


def _stage_results(workdir: str) -> dict:
  """The one training stage's results from the pipeline's merged results.json."""
  with open(os.path.join(workdir, 'results.json')) as f:
    merged = json.load(f)
  if 'stages' not in merged:
    return merged
  (stage,) = merged['stages'].values()
  return stage


def train_for(config: str, seconds: float, workdir: str, overrides: list[str]) -> tuple[dict, str]:
  """Runs the CLI for `seconds` of training; returns (its stage results, its command)."""
  cmd = [sys.executable, '-m', 'jdiffrep.main', f'--config={config}', f'--workdir={workdir}',
         '--config.num_train_steps=100000000', '--config.sample_every_steps=0',
         '--config.checkpoint_every_steps=100000000', *overrides]
  proc = subprocess.Popen(cmd, cwd=provenance.REPO_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  compiled = threading.Event()

  def echo():  # the child's log, passed through, watched for the compiled step
    for line in proc.stdout:
      sys.stdout.write(line)
      if COMPILED_MARKER in line:
        compiled.set()

  reader = threading.Thread(target=echo, daemon=True)
  reader.start()
  if not compiled.wait(_START_TIMEOUT.value):
    proc.kill()
    raise RuntimeError(f'{shlex.join(cmd)} did not compile its step within '
                       f'{_START_TIMEOUT.value:.0f} s (exit status {proc.poll()}).')
  time.sleep(seconds)
  proc.send_signal(signal.SIGTERM)  # the trainer saves at the next step and exits 0
  if proc.wait(timeout=600):
    raise RuntimeError(f'{shlex.join(cmd)} exited with status {proc.returncode}.')
  reader.join(timeout=10)
  return _stage_results(workdir), shlex.join(cmd)


def main(argv) -> None:
  overrides = argv[1:]
  start = provenance.utc_now()
  load = round(os.getloadavg()[0], 2)
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix='train_speed_')
  results, command = train_for(_CONFIG.value, _SECONDS.value, workdir, overrides)
  row = {
      'date': start,
      'command': 'python -m benchmarks.train_speed ' + shlex.join(sys.argv[1:]),
      'trainer_command': command,
      'bench': 'train_speed',
      **provenance.child_run_fields(results['device_kind'], results['devices']),
      'load_avg_start': load,
      'load_avg_end': round(os.getloadavg()[0], 2),
      'note': _NOTE.value,
      'config': _CONFIG.value,
      'model': results['model'],
      'batch': results['batch_size'],
      'train_seconds_requested': _SECONDS.value,
      'steps': results['steps'],
      'images_per_sec': results['images_per_sec'],
      'compile_seconds': results['compile_seconds'],
      'final_loss': results['final_loss'],
      'preempted_by_sigterm': results.get('preempted'),
  }
  provenance.append_row(row, _OUT.value or os.path.join(
      provenance.REPO_ROOT, 'benchmarks', 'results', f'{row["platform"]}_train_speed.jsonl'))


if __name__ == '__main__':
  app.run(main)
