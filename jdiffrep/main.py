r"""Command-line entry point: `python -m jdiffrep.main --config=configs/shapes.py --workdir=DIR`.

Any config field can be overridden, e.g. `--config.batch_size=64 --config.model.name=S/2`.
Re-running the same command resumes from the newest checkpoint in `--workdir`.

Multi-process (several hosts, or several processes on one host): start the same command in
every process. TPU slices, SLURM and Open MPI jobs are detected; elsewhere pass
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (or set
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); see `jdiffrep/distributed.py`.

`--compile_only` compiles the train step of every training stage on the current devices and
prints its parameter count, per-device memory and FLOPs per step (also written, per stage, to
`<workdir>/compile_report.json`), then exits without training.
"""

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # quiet TensorFlow, where it is installed

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from etils import epath
import jax
from ml_collections import config_flags

from jdiffrep import config as config_lib
from jdiffrep import cpu_runtime
from jdiffrep import distributed
from jdiffrep import run
from jdiffrep import train

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file, e.g. configs/shapes.py.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples.')
_COMPILE_ONLY = flags.DEFINE_bool(
    'compile_only', False, 'Compile the train step of each training stage on the current devices, '
    'print parameter count, per-device memory and FLOPs per step, and exit without training.')
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', None, 'Multi-process: HOST:PORT of process 0 (jax.distributed); '
    'default $JAX_COORDINATOR_ADDRESS, or detected on TPU slices / SLURM / Open MPI.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Multi-process: number of processes (default $JAX_NUM_PROCESSES).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'Multi-process: index of this process, 0..N-1 (default $JAX_PROCESS_ID).')
flags.mark_flags_as_required(['config', 'workdir'])

COMPILE_REPORT = 'compile_report.json'  # --compile_only's reports, {stage: report}


def training_stage_configs(config) -> list:
  """(stage name, config) of each training stage `config` runs ('evaluate' trains nothing)."""
  if not config.pipeline:
    return [(config.method, config)]
  return [(stage, config_lib.stage_config(config, stage)) for stage in config.pipeline
          if stage != config_lib.EVALUATE_STAGE]


def format_compile_report(stage: str, report: dict) -> str:
  """A few human-readable lines of `train.compile_only`'s result."""
  memory = report['per_device_memory_bytes']
  gib = lambda n: f'{n / 2**30:.2f} GiB' if n >= 2**30 else f'{n / 2**20:.1f} MiB'
  return '\n'.join([
      f'[{stage}] {report["method"]} {report["model"]}, batch {report["batch_size"]}, mesh '
      f'{report["mesh"]} on {report["devices"]} x {report["device_kind"]}',
      f'  trainable parameters: {report["num_params"]:,} (frozen: {report["num_frozen_params"]:,})',
      f'  per-device memory: arguments {gib(memory["argument"])}, outputs {gib(memory["output"])}'
      f' (aliased {gib(memory["alias"])}), temporaries {gib(memory["temp"])}; peak estimate '
      f'{gib(memory["peak_estimate"])}',
      f'  FLOPs per step (per device, XLA): {report["xla_flops_per_step"]:.4g}',
      f'  compiled in {report["compile_seconds"]:.1f} s',
  ])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Before any other JAX call: the backend must see every process's devices.
  distributed.initialize(_COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  logging.info('JAX %s on %d %s device(s).', jax.__version__, jax.device_count(),
               jax.default_backend())
  _CONFIG.value.pipeline = config_lib.split_pipeline(_CONFIG.value.pipeline)
  if _COMPILE_ONLY.value:
    config_lib.validate_config(_CONFIG.value)
    reports = {}
    for stage, stage_config in training_stage_configs(_CONFIG.value):
      reports[stage] = train.compile_only(stage_config, str(epath.Path(_WORKDIR.value) / stage)
                                          if _CONFIG.value.pipeline else _WORKDIR.value)
      if jax.process_index() == 0:
        print(format_compile_report(stage, reports[stage]), flush=True)
    if jax.process_index() == 0:
      workdir = epath.Path(_WORKDIR.value)
      workdir.mkdir(parents=True, exist_ok=True)
      (workdir / COMPILE_REPORT).write_text(json.dumps(reports, indent=2))
    return
  run.run(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  cpu_runtime.restart_with_cpu_environment()
  app.run(main)
