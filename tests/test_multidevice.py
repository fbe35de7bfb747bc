"""Sharded and multi-process training equal one device; --compile_only reports what fits.

The JAX work runs in subprocesses with their own device counts (this process has 2 devices).
XLA's CPU code-generation optimisation is lowered (--xla_backend_optimization_level=0) in them
to cut compile time; every layout compared is compiled the same way.

Tolerances: float32 sums taken in another order (per-shard partial sums, all-reduces) differ by
~1e-7 relative. Losses and gradient norms are compared at rtol 1e-5. After 3 AdamW steps at
learning rate 1e-3 (no warm-up) every parameter has moved by ~1e-3 per step; the params are
compared at atol 1e-5, 100x below one step and above the largest difference measured (6e-7).
A wrong gradient (a missing or doubled all-reduce) changes losses, gradient norms or params
far beyond that.
"""

import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import shapes
from jdiffrep import checkpoint
from jdiffrep import config as config_lib
from jdiffrep import methods
from jdiffrep import train
from tests import sharded_training
from tests.conftest import small_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSS_RTOL, PARAM_ATOL, PARAM_RTOL = 1e-5, 1e-5, 1e-5
# (rtol of the losses and gradient norms after the first step, atol of the final params or None
# to leave them out) where float32 noise grows: the SSL encoders have many weights with gradients
# near Adam's eps (1e-8; 50k of 464k at step 1, e.g. biases that SimSiam's batch norm cancels),
# whose update is the sign of that noise, so after 3 steps the states differ by up to a quarter
# step in some weights and SimSiam's third loss by 0.1-0.4 % (seen, and not the same from run to
# run). Their first step is held to the strict tolerance: gradients agree to 4e-6 of each
# tensor's largest (seen), and a loss or a batch norm computed per device would not.
SSL_TOLERANCES = (2e-2, None)
TOLERANCES = {'simclr': SSL_TOLERANCES, 'simsiam': SSL_TOLERANCES}


def _env(num_devices: int) -> dict:
  env = dict(os.environ)
  env['XLA_FLAGS'] = (f'--xla_force_host_platform_device_count={num_devices} '
                      '--xla_backend_optimization_level=0')
  env['JAX_PLATFORMS'] = 'cpu'
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_sharded_steps_match_one_device(shapes_data_dir, tmp_path):
  """DM, DiTi, sdae, SimCLR and SimSiam steps: 8-way data parallel and 2x4 data x fsdp == one
  device."""
  proc = subprocess.run(
      [sys.executable, '-m', 'tests.sharded_training', shapes_data_dir, str(tmp_path)],
      cwd=REPO_ROOT, env=_env(8), capture_output=True, text=True, timeout=850)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for method in sharded_training.SHARDED_METHODS:
    one = np.load(tmp_path / f'{method}_1dev.npz')
    assert not one['split'].any()
    for mesh in sharded_training.meshes_of(method)[1:]:
      other = np.load(tmp_path / f'{method}_{mesh}.npz')
      later_rtol, param_atol = TOLERANCES.get(method, (LOSS_RTOL, PARAM_ATOL))
      for key in ('losses', 'grad_norms'):
        np.testing.assert_allclose(other[key][0], one[key][0], rtol=LOSS_RTOL, atol=1e-6,
                                   err_msg=f'{method} {mesh} first step {key}')
        np.testing.assert_allclose(other[key], one[key], rtol=later_rtol, atol=1e-5,
                                   err_msg=f'{method} {mesh} {key}')
      params = sorted(k for k in one.files if k.startswith('param_'))
      assert params and params == sorted(k for k in other.files if k.startswith('param_'))
      for key in params if param_atol is not None else ():
        np.testing.assert_allclose(other[key], one[key], rtol=PARAM_RTOL, atol=param_atol,
                                   err_msg=f'{method} {mesh} {key}')
      # 8x1 replicates the state; 2x4 really splits matrices (and DiTi's frozen DM) over fsdp.
      assert other['split'].any() == (mesh == '2x4')
    assert not np.allclose(one['losses'][0], one['losses'][-1])  # the steps did train


def _cli(data_dir, workdir, *extra):
  return [sys.executable, '-m', 'jdiffrep.main', '--config=configs/shapes.py:ddpm',
          f'--workdir={workdir}', f'--config.dataset.data_dir={data_dir}',
          '--config.dataset.tfds_config=32_small', '--config.model.name=XXS/8',
          '--config.batch_size=16', '--config.num_train_steps=3',
          '--config.checkpoint_every_steps=3', '--config.log_every_steps=1',
          '--config.optim.warmup_steps=0', '--config.mesh.fsdp=2',
          '--config.mesh.fsdp_min_size=4096', '--config.sample.num_images=4',
          '--config.sample.ddim_steps=2', *extra]


def _final_state(workdir, config):
  """The newest checkpoint's train state in `workdir`, restored as host NumPy arrays."""
  method = methods.make_method(config, (32, 32, 3))
  tx, _ = train.make_optimizer(config.optim)
  target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                        train.abstract_train_state(method, tx))
  manager = checkpoint.make_manager(os.path.join(workdir, 'checkpoints'), max_to_keep=3,
                                    create=False)
  step = manager.latest_step()
  restored = manager.restore(step, args=checkpoint.ocp.args.Composite(
      state=checkpoint.ocp.args.StandardRestore(target)))
  manager.close()
  return step, restored.state


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_two_processes_train_like_one_process(shapes_data_dir, tmp_path):
  """2 processes x 2 CPU devices (gloo, coordinator on 127.0.0.1) == 1 process x 4 devices."""
  shared, single = tmp_path / 'two_processes', tmp_path / 'one_process'
  address = f'127.0.0.1:{_free_port()}'
  workers = [subprocess.Popen(
      _cli(shapes_data_dir, shared, f'--coordinator_address={address}', '--num_processes=2',
           f'--process_id={i}'),
      cwd=REPO_ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
  try:
    outputs = [w.communicate(timeout=600) for w in workers]
  finally:
    for w in workers:
      if w.poll() is None:
        w.kill()
  for w, (_, err) in zip(workers, outputs):
    assert w.returncode == 0, err[-3000:]
  assert 'Process 1 of 2, 2 local of 4 devices' in outputs[1][1]
  proc = subprocess.run(_cli(shapes_data_dir, single), cwd=REPO_ROOT, env=_env(4),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]

  config = small_config(shapes_data_dir)
  (step_a, two), (step_b, one) = (_final_state(str(d / 'ddpm'), config) for d in (shared, single))
  assert step_a == step_b == 3
  for a, b in zip(jax.tree.leaves(two.params), jax.tree.leaves(one.params)):
    np.testing.assert_allclose(a, b, rtol=PARAM_RTOL, atol=PARAM_ATOL)
  for a, b in zip(jax.tree.leaves(two.opt_state), jax.tree.leaves(one.opt_state)):
    np.testing.assert_allclose(a, b, rtol=PARAM_RTOL, atol=PARAM_ATOL)
  assert sorted(os.listdir(shared / 'ddpm' / 'samples')) == ['step_0000003.png']
  assert (shared / 'results.json').exists()


def _reported(name, output):
  match = re.search(name, output)
  assert match, output
  return match.group(1)


def _reported_bytes(name, output):
  match = re.search(name + r' ([\d.]+) (MiB|GiB)', output)
  assert match, output
  return float(match.group(1)) * (2**20 if match.group(2) == 'MiB' else 2**30)


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_compile_only_reports_params_memory_and_flops(shapes_data_dir, tmp_path):
  """--compile_only compiles each training stage (DiTi needs no DM checkpoint), trains nothing."""
  workdir = tmp_path / 'run'
  cmd = _cli(shapes_data_dir, workdir, '--compile_only')
  cmd[3] = '--config=configs/shapes.py:ddpm,diti'
  proc = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(4), capture_output=True, text=True,
                        timeout=550)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  config = shapes.get_config('ddpm,diti')
  config.model.name = 'XXS/8'
  stages = out.split('[diti]')
  assert len(stages) == 2 and stages[0].startswith('[ddpm]'), out
  # Nothing trained: the workdir holds the report alone.
  assert [path.name for path in workdir.iterdir()] == ['compile_report.json']
  reports = json.loads((workdir / 'compile_report.json').read_text())
  assert list(reports) == ['ddpm', 'diti']
  for stage, text in zip(('ddpm', 'diti'), stages):
    method = methods.make_method(config_lib.stage_config(config, stage), (32, 32, 3),
                                 workdir=str(workdir / stage))
    tx, _ = train.make_optimizer(config.optim)
    state = train.abstract_train_state(method, tx)
    num_params = train.count_params(state.params)
    assert int(_reported(r'trainable parameters: ([\d,]+)', text).replace(',', '')) == num_params
    assert int(_reported(r'frozen: ([\d,]+)', text).replace(',', '')) == train.count_params(
        method.abstract_frozen())
    assert "mesh {'data': 2, 'fsdp': 2} on 4 x cpu" in text
    assert float(_reported(r'FLOPs per step \(per device, XLA\): ([\d.e+]+)', text)) > 0
    assert _reported_bytes('temporaries', text) > 0
    # fsdp = 2 splits the big matrices: a device's arguments (its share of the state, the
    # frozen params and the batch) are less than the whole state and frozen params.
    whole = sum(x.size * x.dtype.itemsize
                for x in jax.tree.leaves((state, method.abstract_frozen())))
    assert 0 < _reported_bytes('arguments', text) < whole
    # The same report, unrounded, in compile_report.json (benchmarks.compile_memory reads it).
    report = reports[stage]
    assert (report['num_params'], report['batch_size'], report['mesh']) == (
        num_params, 16, {'data': 2, 'fsdp': 2})
    memory = report['per_device_memory_bytes']
    for name, key in (('arguments', 'argument'), ('temporaries', 'temp')):
      assert abs(_reported_bytes(name, text) - memory[key]) <= 0.01 * memory[key]
    assert memory['peak_estimate'] == (memory['argument'] + memory['output'] - memory['alias']
                                       + memory['temp'])
