"""Multi-process start-up: `jax.distributed.initialize` when the job spans several processes.

Call `initialize` before any other JAX call. It decides from, in order:
  1. explicit arguments (`--coordinator_address`, `--num_processes`, `--process_id`);
  2. JAX's own variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID;
  3. a multi-task SLURM job (SLURM_NTASKS > 1), an Open MPI job (OMPI_COMM_WORLD_SIZE > 1) or a
     multi-host TPU slice (TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES listing several hosts),
     which JAX's own cluster detection then configures;
  4. JDIFFREP_DISTRIBUTED=1, which forces JAX's auto-detection (e.g. a TPU VM pod whose hosts
     are only known to the metadata server).
Otherwise (one host) nothing is done.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

from absl import logging
import jax


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
  """What to pass to `jax.distributed.initialize`; None fields are left to JAX's detection."""
  reason: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def _int_or_none(value) -> int | None:
  return None if value in (None, '') else int(value)


def _num_hosts(addresses: str) -> int:
  return len([a for a in addresses.split(',') if a.strip()])


def settings_from_environment(coordinator_address: str | None = None,
                              num_processes: int | None = None,
                              process_id: int | None = None,
                              environ: Mapping[str, str] | None = None
                              ) -> DistributedSettings | None:
  """The multi-process settings the flags and `environ` ask for; None on a single host."""
  environ = os.environ if environ is None else environ
  coordinator_address = coordinator_address or environ.get('JAX_COORDINATOR_ADDRESS')
  num_processes = num_processes if num_processes is not None else _int_or_none(
      environ.get('JAX_NUM_PROCESSES'))
  process_id = process_id if process_id is not None else _int_or_none(
      environ.get('JAX_PROCESS_ID'))
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError(
          'A multi-process run needs all of --coordinator_address (or JAX_COORDINATOR_ADDRESS), '
          '--num_processes (JAX_NUM_PROCESSES) and --process_id (JAX_PROCESS_ID); got '
          f'coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, '
          f'process_id={process_id!r}.')
    if num_processes == 1:
      return None
    if not 0 <= process_id < num_processes:
      raise ValueError(f'--process_id={process_id} must be in [0, {num_processes}).')
    return DistributedSettings('explicit coordinator', coordinator_address, num_processes,
                               process_id)
  if _int_or_none(environ.get('SLURM_NTASKS')) not in (None, 1) and 'SLURM_JOB_ID' in environ:
    return DistributedSettings('SLURM job')
  if _int_or_none(environ.get('OMPI_COMM_WORLD_SIZE')) not in (None, 1):
    return DistributedSettings('Open MPI job')
  tpu_hosts = environ.get('TPU_PROCESS_ADDRESSES') or environ.get('TPU_WORKER_HOSTNAMES') or ''
  if _num_hosts(tpu_hosts) > 1:
    return DistributedSettings('multi-host TPU slice')
  if environ.get('JDIFFREP_DISTRIBUTED', '').lower() in ('1', 'true', 'yes'):
    return DistributedSettings('JDIFFREP_DISTRIBUTED')
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts JAX's distributed runtime when the job is multi-process; returns whether it did."""
  settings = settings_from_environment(coordinator_address, num_processes, process_id)
  if settings is None:
    return False
  # Cross-process collectives of the CPU backend (tests, CPU clusters); GPUs and TPUs use their
  # own. gloo is the default in recent JAX; set it so older defaults do not silently differ.
  try:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  except AttributeError:  # a JAX without the option has a single CPU implementation
    logging.info('This JAX has no jax_cpu_collectives_implementation option; using its default.')
  logging.info('Multi-process run (%s): initialising jax.distributed.', settings.reason)
  jax.distributed.initialize(coordinator_address=settings.coordinator_address,
                             num_processes=settings.num_processes,
                             process_id=settings.process_id)
  logging.info('Process %d of %d, %d local of %d devices.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
