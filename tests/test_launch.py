"""The launch scripts, run with --dry-run: the gcloud / srun commands they would run."""

import os
import re
import shlex
import subprocess
import sys

import pytest

LAUNCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'launch')
TPU = ['--name=jd-pod', '--project=my-project', '--zone=us-east5-a',
       '--accelerator-type=v5litepod-16', '--runtime-version=v2-alpha-tpuv5-lite']


def _dry_run(script: str, *args: str, env: dict | None = None) -> list[list[str]]:
  """The commands `script` prints under --dry-run, each split back into its argv."""
  proc = subprocess.run(['bash', os.path.join(LAUNCH, script), *args], capture_output=True,
                        text=True, timeout=60, env={**os.environ, **(env or {})})
  assert proc.returncode == 0, proc.stderr
  return [shlex.split(line) for line in proc.stdout.splitlines()]


def _flags(argv: list[str]) -> dict:
  return dict(arg[2:].split('=', 1) if '=' in arg else (arg[2:], True)
              for arg in argv if arg.startswith('--'))


def test_tpu_create_and_queued_resource():
  (create,) = _dry_run('tpu.sh', 'create', *TPU, '--dry-run')
  assert create[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'jd-pod']
  assert _flags(create) == {'zone': 'us-east5-a', 'project': 'my-project',
                            'accelerator-type': 'v5litepod-16', 'version': 'v2-alpha-tpuv5-lite'}
  (queued,) = _dry_run('tpu.sh', 'create', *TPU, '--queued', '--spot', '--dry-run')
  assert queued[:6] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'jd-pod']
  assert _flags(queued) == {'node-id': 'jd-pod', 'zone': 'us-east5-a', 'project': 'my-project',
                            'accelerator-type': 'v5litepod-16',
                            'runtime-version': 'v2-alpha-tpuv5-lite', 'spot': True}


def test_tpu_setup_installs_jax_tpu_and_the_package_on_all_workers():
  archive, scp, ssh = _dry_run('tpu.sh', 'setup', *TPU, '--dry-run')
  assert archive[0] == 'git' and 'archive' in archive and archive[-1] == 'HEAD'
  assert scp[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp']
  assert _flags(scp)['worker'] == 'all' and 'jd-pod:~/jdiffrep.tar.gz' in scp
  assert ssh[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'jd-pod']
  flags = _flags(ssh)
  assert flags['worker'] == 'all' and flags['zone'] == 'us-east5-a'
  remote = flags['command']
  assert "pip install -U 'jax[tpu]'" in remote and "pip install -e ~/jdiffrep'[gcs]'" in remote


def test_tpu_train_runs_main_on_all_workers_with_gcs_paths():
  (ssh,) = _dry_run('tpu.sh', 'train', *TPU, '--config=configs/celeba.py',
                    '--workdir=gs://bucket/runs/celeba', '--data-dir=gs://bucket/tfds',
                    '--dry-run', '--', '--config.batch_size=256', '--config.name=with space')
  flags = _flags(ssh)
  assert ssh[4:6] == ['ssh', 'jd-pod'] and flags['worker'] == 'all'
  remote = shlex.split(flags['command'])  # the command each worker's shell runs
  main = remote[remote.index('-m') + 1:]
  assert 'TFDS_DATA_DIR=gs://bucket/tfds' in remote and main[0] == 'jdiffrep.main'
  assert main[1:6] == ['--config=configs/celeba.py', '--workdir=gs://bucket/runs/celeba',
                       '--config.batch_size=256', '--config.name=with space', '>']


def test_tpu_train_requires_gcs_workdir_and_data_dir():
  proc = subprocess.run(['bash', os.path.join(LAUNCH, 'tpu.sh'), 'train', *TPU,
                         '--workdir=/local/dir', '--data-dir=gs://b/tfds', '--dry-run'],
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2 and '--workdir=gs://' in proc.stderr


@pytest.mark.parametrize('queued', [False, True])
def test_tpu_logs_and_delete(queued):
  (logs,) = _dry_run('tpu.sh', 'logs', *TPU, '--worker=3', '--dry-run')
  assert _flags(logs)['worker'] == '3' and _flags(logs)['command'].startswith('tail ')
  (delete,) = _dry_run('tpu.sh', 'delete', *TPU, *(['--queued'] if queued else []), '--dry-run')
  group = 'queued-resources' if queued else 'tpu-vm'
  assert delete[:6] == ['gcloud', 'compute', 'tpus', group, 'delete', 'jd-pod']
  assert _flags(delete)['zone'] == 'us-east5-a' and 'quiet' in _flags(delete)
  assert ('force' in _flags(delete)) == queued


def test_tpu_options_from_the_environment():
  (create,) = _dry_run('tpu.sh', 'create', '--dry-run', env={
      'TPU_NAME': 'env-tpu', 'TPU_ZONE': 'europe-west4-a', 'TPU_ACCELERATOR_TYPE': 'v5p-32',
      'TPU_RUNTIME_VERSION': 'v2-alpha-tpuv5', 'TPU_PROJECT': 'p2'})
  assert create[5] == 'env-tpu'
  assert _flags(create) == {'zone': 'europe-west4-a', 'project': 'p2',
                            'accelerator-type': 'v5p-32', 'version': 'v2-alpha-tpuv5'}


def test_gpu_single_node():
  (cmd,) = _dry_run('gpu_single_node.sh', '--dry-run', 'configs/celeba.py', '/runs/c',
                    '--config.batch_size=256')
  assert cmd[0].startswith('XLA_PYTHON_CLIENT_MEM_FRACTION=')
  assert cmd[1:4] == ['python', '-m', 'jdiffrep.main']
  assert cmd[4:] == ['--config=configs/celeba.py', '--workdir=/runs/c',
                     '--config.model.dtype=bfloat16', '--config.batch_size=256']


def test_slurm_srun_one_process_per_gpu():
  script = os.path.join(LAUNCH, 'slurm_multinode.sbatch')
  directives = dict(line.strip()[len('#SBATCH --'):].split('=', 1) for line in open(script)
                    if line.startswith('#SBATCH --') and '=' in line)
  assert directives['ntasks-per-node'] == directives['gpus-per-node'] == '8'
  assert directives['signal'].startswith('TERM@')
  (cmd,) = _dry_run('slurm_multinode.sbatch', '--dry-run', 'configs/celeba.py', '/shared/c',
                    '--config.batch_size=512', env={'SLURM_NTASKS_PER_NODE': '4'})
  assert cmd[0] == 'srun' and '--ntasks-per-node=4' in cmd
  main = cmd[cmd.index('-m') + 1:]
  assert main == ['jdiffrep.main', '--config=configs/celeba.py', '--workdir=/shared/c',
                  '--config.model.dtype=bfloat16', '--config.batch_size=512']


def _gpu_check_steps(*args: str, script: str = 'gpu_check.sh') -> dict[str, list[str]]:
  """{step name: argv} of the steps `SCRIPT --dry-run` prints ('== (name) command')."""
  proc = subprocess.run(['bash', os.path.join(LAUNCH, script), '--dry-run', *args],
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  steps = {}
  for line in proc.stdout.splitlines():
    assert line.startswith('== ('), line
    name, command = line[len('== ('):].split(') ', 1)
    steps[name] = shlex.split(command)
  return steps


def test_gpu_check_prints_every_step():
  steps = _gpu_check_steps('--wheelhouse', '/wh', '--train-seconds', '90')
  assert list(steps) == ['install', 'versions', 'device', 'accelerator-tests', 'dit-b2-bf16',
                         'profile-dit-b2', 'diti-celeba64', 'sdae-celeba64', 'celeba-memory',
                         'train-shapes-dm', 'tables']
  install = steps['install']
  assert install[1:4] == ['-m', 'pip', 'install'] and '--no-index' in install
  assert install[install.index('--find-links') + 1] == '/wh' and install[-1] == 'jdiffrep[peer]'
  assert steps['versions'][1:] == ['-m', 'benchmarks.provenance']
  assert steps['accelerator-tests'][1:] == ['-m', 'pytest', '-q', '-rs', '-m', 'accelerator',
                                            'tests/test_accelerator.py']
  dit = _flags(steps['dit-b2-bf16'])
  assert (dit['bench'], dit['model'], dit['resolution']) == ('dit', 'B/2', '32')  # 256 tokens
  assert (dit['dtype'], dit['attention'], dit['peer_compile']) == ('bfloat16', 'cudnn', True)
  profile = _flags(steps['profile-dit-b2'])  # the same step as dit-b2-bf16, traced
  assert steps['profile-dit-b2'][1:3] == ['-m', 'benchmarks.profile_step']
  kept = profile['trace_copy']  # the raw trace (and its HLO beside it) comes back with the rows
  assert kept.startswith('benchmarks/results/gpu_trace_dit_b2_') and kept.endswith('.json.gz')
  for name in ('dit-b2-bf16', 'profile-dit-b2', 'diti-celeba64', 'sdae-celeba64'):
    assert _flags(steps[name])['idle_wait'] == '0', name  # device time is not spent waiting
  assert {key: profile[key] for key in ('model', 'resolution', 'batch', 'dtype', 'attention')} == {
      key: dit[key] for key in ('model', 'resolution', 'batch', 'dtype', 'attention')}
  for name, bench in (('diti-celeba64', 'diti'), ('sdae-celeba64', 'sdae')):
    flags = _flags(steps[name])
    assert (flags['bench'], flags['model'], flags['resolution'], flags['batch']) == (
        bench, 'B/4', '64', '128')
    assert flags['dtype'] == 'bfloat16'
  memory = steps['celeba-memory']  # the CelebA config's DiTi and sdae steps, compiled only
  assert memory[1:3] == ['-m', 'benchmarks.compile_memory']
  assert _flags(memory)['config'] == 'configs/celeba.py'
  assert memory[memory.index('--') + 1:] == ['--config.pipeline=diti,sdae']
  assert _flags(steps['train-shapes-dm'])['seconds'] == '90'
  assert steps['tables'][1:] == ['-m', 'benchmarks.report']
  assert 'install' not in _gpu_check_steps()  # no wheelhouse, nothing installed


def test_gpu_tune_times_each_variant_of_the_b2_step_alone():
  steps = _gpu_check_steps('--wheelhouse', '/wh', script='gpu_tune.sh')
  assert list(steps) == ['install', 'baseline', 'attention-xla', 'batch-512', 'no-command-buffer',
                         'no-triton-gemm', 'latency-hiding', 'cublaslt', 'tables']
  for name in list(steps)[1:-1]:
    env, xla_flags, *argv = steps[name]
    assert env == 'env' and xla_flags.startswith('XLA_FLAGS=')
    flags = _flags(argv)  # absl: the last of a repeated flag wins, as here
    assert argv[1:3] == ['-m', 'benchmarks.throughput'] and flags['note'] == f'gpu_tune {name}'
    assert (flags['bench'], flags['model'], flags['resolution'], flags['dtype'], flags['peer']) == (
        'dit', 'B/2', '32', 'bfloat16', 'none')
    expected = {'attention-xla': ('xla', '256'), 'batch-512': ('cudnn', '512')}
    assert (flags['attention'], flags['batch']) == expected.get(name, ('cudnn', '256'))
  assert steps['baseline'][1] == 'XLA_FLAGS='
  assert steps['no-triton-gemm'][1] == 'XLA_FLAGS=--xla_gpu_enable_triton_gemm=false'


def test_accelerator_tests_are_reported_skipped_on_cpu():
  proc = subprocess.run(
      [sys.executable, '-m', 'pytest', '-q', '-rs', '-m', 'accelerator', '-p', 'no:cacheprovider',
       'tests/test_accelerator.py'], cwd=os.path.dirname(LAUNCH), capture_output=True, text=True,
      timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 0, proc.stdout[-3000:]
  summary = proc.stdout.strip().splitlines()[-1]
  assert re.fullmatch(r'\d+ skipped in [\d.]+s( \([\d:]+\))?', summary), summary
  assert 'needs a GPU or TPU; the JAX backend is cpu' in proc.stdout
