"""CPU process settings: merged with the user's, documented in the README, applied by re-exec."""

import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

from jdiffrep import cpu_runtime

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'


SCHEDULER = '--xla_cpu_enable_concurrency_optimized_scheduler'


OURS = ('glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:'
        'glibc.malloc.trim_threshold=1099511627776')


def test_missing_environment_adds_the_tunables_and_keeps_the_users_values():
  flags_set = {'XLA_FLAGS': f'{SCHEDULER}=false'}
  assert cpu_runtime.CPU_ENVIRONMENT == {'GLIBC_TUNABLES': OURS}
  assert cpu_runtime.missing_environment({}) == {'GLIBC_TUNABLES': OURS,
                                                 'XLA_FLAGS': f'{SCHEDULER}=false'}
  # A tunable the user set keeps the user's value; the others are added after it.
  assert cpu_runtime.missing_environment(
      {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2:glibc.cpu.x86_rep_stosb_threshold=1',
       **flags_set}) == {
          'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2:glibc.cpu.x86_rep_stosb_threshold=1:'
                            'glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:'
                            'glibc.malloc.trim_threshold=1099511627776'}
  # Already set (to ours, or on purpose to something else): nothing to do.
  assert cpu_runtime.missing_environment({'GLIBC_TUNABLES': OURS, **flags_set}) == {}
  users = OURS.replace('hugetlb=1', 'hugetlb=0').replace('mmap_max=0', 'mmap_max=65536')
  assert cpu_runtime.missing_environment(
      {'GLIBC_TUNABLES': users, 'XLA_FLAGS': f' {SCHEDULER}=true '}) == {}
  # The user's other XLA flags stay, ours is appended.
  assert cpu_runtime.missing_environment(
      {'GLIBC_TUNABLES': OURS,
       'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}) == {
           'XLA_FLAGS': f'--xla_force_host_platform_device_count=8 {SCHEDULER}=false'}
  assert not cpu_runtime.applies({cpu_runtime.OPT_OUT: '0'})


def test_the_readme_documents_exactly_the_settings_the_project_sets():
  text = README.read_text()
  block = text.split('<!-- cpu-runtime:begin -->')[1].split('<!-- cpu-runtime:end -->')[0]
  documented = set(re.findall(r'`([A-Z_]+=[^`\s]+)`', block)) - {f'{cpu_runtime.OPT_OUT}=0'}
  documented_flags = set(re.findall(r'`(--xla_cpu_[^`\s]+)`', block))
  assert documented == {f'{k}={v}' for k, v in cpu_runtime.CPU_ENVIRONMENT.items()}
  assert documented_flags == set(cpu_runtime.CPU_XLA_FLAGS)
  assert set(re.findall(r'`(jax_[a-z_]+)`', block)) == set(cpu_runtime.JAX_CONFIG)
  assert f'`{cpu_runtime.OPT_OUT}=0`' in block


@pytest.mark.parametrize('opt_out', [False, True])
def test_restart_reexecutes_the_command_once_with_the_settings(opt_out):
  if not cpu_runtime.applies({}):
    pytest.skip('no glibc >= 2.35 here, or an accelerator plugin is installed: nothing to apply')
  env = {k: v for k, v in os.environ.items() if k not in cpu_runtime.CPU_ENVIRONMENT}
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'
  if opt_out:
    env[cpu_runtime.OPT_OUT] = '0'
  code = ('import os, sys; print("start", flush=True); from jdiffrep import cpu_runtime; '
          'cpu_runtime.restart_with_cpu_environment(); '
          'print(os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], flush=True); '
          'print(os.environ["XLA_FLAGS"]); import jax; '
          'print(jax.config.values["jax_cpu_enable_async_dispatch"])')
  out = subprocess.run([sys.executable, '-c', code, 'arg1', '--flag=2'], env=env, check=True,
                       capture_output=True, text=True).stdout.splitlines()
  if opt_out:
    assert out == ['start', "None ['arg1', '--flag=2']", '--xla_force_host_platform_device_count=2',
                   'True']
  else:  # the command ran twice: once as given, once (to the end) with the settings
    assert out == ['start', 'start', f"{OURS} ['arg1', '--flag=2']",
                   f'--xla_force_host_platform_device_count=2 {SCHEDULER}=false', 'False']


def test_the_scheduler_flag_lowers_xlas_memory_for_the_dit_step():
  """What the flag is for: XLA's temporary buffers of a DiT train step (compile only)."""
  code = ('import jax, jax.numpy as jnp, optax\n'
          'from jdiffrep.models import dit\n'
          'model = dit.dit_from_name("XS/2", attention_impl="head_major")\n'
          'x, t = jnp.zeros((8, 16, 16, 3)), jnp.zeros((8,), jnp.int32)\n'
          'params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t)["params"]\n'
          'loss = lambda p: jnp.mean(jnp.square(model.apply({"params": p}, x, t) - x))\n'
          'compiled = jax.jit(jax.grad(loss)).lower(params).compile()\n'
          'print(compiled.memory_analysis().temp_size_in_bytes)\n')
  temp = {}
  for value in ('true', 'false'):
    env = {**os.environ, 'XLA_FLAGS': f'{SCHEDULER}={value}', 'JAX_PLATFORMS': 'cpu'}
    temp[value] = int(subprocess.run([sys.executable, '-c', code], env=env, check=True,
                                     capture_output=True, text=True).stdout.split()[-1])
  assert temp['false'] < 0.9 * temp['true'], temp


_FAULTS_SCRIPT = '''
import resource, sys
from jdiffrep import cpu_runtime
cpu_runtime.restart_with_cpu_environment()
import jax, jax.numpy as jnp
x = jnp.ones((4096, 64)) / 64
w1, w2 = jnp.ones((64, 16384)), jnp.ones((16384, 64)) / 16384
step = jax.jit(lambda x: jnp.tanh(x @ w1) @ w2)  # a [4096, 16384] float32 temporary: 256 MiB
temp = step.lower(x).compile().memory_analysis().temp_size_in_bytes
for _ in range(2):
  value = float(step(x)[0, 0])
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
  value = float(step(x)[0, 0])
print(temp, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, value)
'''


def test_the_settings_keep_a_steps_memory_for_the_next_step():
  """What the malloc tunables are for: repeated steps touch no new pages (page faults counted,
  a count the kernel keeps, not a time). Opted out, each step faults its temporary in again."""
  if not cpu_runtime.applies({}):
    pytest.skip('no glibc >= 2.35 here, or an accelerator plugin is installed: nothing to apply')
  faults = {}
  for opt_out in (False, True):
    env = {k: v for k, v in os.environ.items()
           if k not in (*cpu_runtime.CPU_ENVIRONMENT, 'XLA_FLAGS', cpu_runtime.OPT_OUT)}
    env['JAX_PLATFORMS'] = 'cpu'
    if opt_out:
      env[cpu_runtime.OPT_OUT] = '0'
    temp, count, value = subprocess.run([sys.executable, '-c', _FAULTS_SCRIPT], env=env,
                                        check=True, capture_output=True,
                                        text=True).stdout.split()
    assert int(temp) >= 256 << 20 and float(value) == pytest.approx(math.tanh(1.0), rel=1e-5)
    faults[opt_out] = int(count)
  # Opted out, 4 steps fault at least 4 x 256 MiB in 2 MiB pages (4 KiB pages: 512x more).
  assert faults[True] >= 4 * (256 << 20) // (2 << 20), faults
  assert faults[False] * 10 < faults[True], faults
