r"""Records what `--compile_only` says of a config's training stages: per-device memory and FLOPs.

  python -m benchmarks.compile_memory --config=configs/celeba.py [--out=FILE] [--note=...] \
      [-- --config.batch_size=256 ...]

Runs `python -m jdiffrep.main --config=C --workdir=<temporary> --compile_only` (every training
stage's step compiled on the current devices from abstract shapes: no data is read, nothing is
allocated or trained), reads the `compile_report.json` it writes, and appends one JSON line
(device, date, commit, versions, command, and per stage: model, batch, mesh, parameters, XLA's
per-device argument / output / temporary bytes and their peak estimate, FLOPs per step) to
`--out`, by default `benchmarks/results/<cpu|gpu|tpu>_compile_memory.jsonl`. This answers "does
this config fit this accelerator" before a long run; XLA's estimate leaves out the runtime's own
workspaces (cuDNN, NCCL), so leave a margin. The parent starts no JAX backend.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

from benchmarks import provenance

_CONFIG = flags.DEFINE_string('config', 'configs/celeba.py', 'Config whose stages are compiled.')
_OUT = flags.DEFINE_string('out', '', 'JSONL file to append to (default: '
                           'benchmarks/results/<platform>_compile_memory.jsonl; "-" for none).')
_NOTE = flags.DEFINE_string('note', '', 'Free-form note stored with the result.')

COMPILE_REPORT = 'compile_report.json'  # as jdiffrep.main writes it (not imported: its flags)


def compile_stages(config: str, overrides: list[str]) -> tuple[dict, str]:
  """Runs the CLI's --compile_only; returns ({stage: report}, its command)."""
  with tempfile.TemporaryDirectory(prefix='compile_memory_') as workdir:
    cmd = [sys.executable, '-m', 'jdiffrep.main', f'--config={config}', f'--workdir={workdir}',
           '--compile_only', *overrides]
    proc = subprocess.run(cmd, cwd=provenance.REPO_ROOT, capture_output=True, text=True,
                          check=False)
    sys.stdout.write(proc.stdout)
    if proc.returncode:
      raise RuntimeError(f'{shlex.join(cmd)} exited with status {proc.returncode}:\n'
                         f'{proc.stderr[-3000:]}')
    with open(os.path.join(workdir, COMPILE_REPORT)) as f:
      return json.load(f), shlex.join(cmd)


def row_of(reports: dict, config: str, command: str, note: str) -> dict:
  """The JSONL row of one config's compile reports (provenance added)."""
  first = next(iter(reports.values()))
  return {
      'date': provenance.utc_now(),
      'command': 'python -m benchmarks.compile_memory ' + shlex.join(sys.argv[1:]),
      'compile_command': command,
      'bench': 'compile_memory',
      **provenance.child_run_fields(first['device_kind'], first['devices']),
      'busy': False,  # compile-time estimates do not depend on the machine's load
      'note': note,
      'config': config,
      'stages': reports,
  }


def main(argv) -> None:
  reports, command = compile_stages(_CONFIG.value, argv[1:])
  row = row_of(reports, _CONFIG.value, command, _NOTE.value)
  for stage, report in reports.items():
    memory = report['per_device_memory_bytes']
    print(f'{stage}: peak estimate {memory["peak_estimate"] / 2**30:.2f} GiB per device '
          f'({report["model"]}, batch {report["batch_size"]}, {report["devices"]} x '
          f'{report["device_kind"]})')
  provenance.append_row(row, _OUT.value or os.path.join(
      provenance.REPO_ROOT, 'benchmarks', 'results', f'{row["platform"]}_compile_memory.jsonl'))


if __name__ == '__main__':
  app.run(main)
