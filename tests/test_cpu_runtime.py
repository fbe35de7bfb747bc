"""CPU process settings: merged with the user's, documented in the README, applied by re-exec."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from jdiffrep import cpu_runtime

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'


def test_missing_environment_adds_the_tunable_and_keeps_the_users_values():
  assert cpu_runtime.missing_environment({}) == {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
  assert cpu_runtime.missing_environment({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}) == {
      'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'}
  # Already set (to ours, or on purpose to something else): nothing to do.
  assert cpu_runtime.missing_environment({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}) == {}
  assert cpu_runtime.missing_environment({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}) == {}
  assert not cpu_runtime.applies({cpu_runtime.OPT_OUT: '0'})


def test_the_readme_documents_exactly_the_settings_the_project_sets():
  text = README.read_text()
  block = text.split('<!-- cpu-runtime:begin -->')[1].split('<!-- cpu-runtime:end -->')[0]
  documented = set(re.findall(r'`([A-Z_]+=[^`\s]+)`', block)) - {f'{cpu_runtime.OPT_OUT}=0'}
  documented_flags = set(re.findall(r'`(--xla_cpu_[^`\s]+)`', block))
  assert documented == {f'{k}={v}' for k, v in cpu_runtime.CPU_ENVIRONMENT.items()}
  assert documented_flags == set(cpu_runtime.CPU_XLA_FLAGS)
  assert f'`{cpu_runtime.OPT_OUT}=0`' in block


@pytest.mark.parametrize('opt_out', [False, True])
def test_restart_reexecutes_the_command_once_with_the_settings(opt_out):
  if not cpu_runtime.applies({}):
    pytest.skip('no glibc >= 2.35 here, or an accelerator plugin is installed: nothing to apply')
  env = {k: v for k, v in os.environ.items() if k not in cpu_runtime.CPU_ENVIRONMENT}
  if opt_out:
    env[cpu_runtime.OPT_OUT] = '0'
  code = ('import os, sys; print("start", flush=True); from jdiffrep import cpu_runtime; '
          'cpu_runtime.restart_with_cpu_environment(); '
          'print(os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])')
  out = subprocess.run([sys.executable, '-c', code, 'arg1', '--flag=2'], env=env, check=True,
                       capture_output=True, text=True).stdout.splitlines()
  if opt_out:
    assert out == ['start', "None ['arg1', '--flag=2']"]
  else:  # the command ran twice: once as given, once (to the end) with the tunable
    assert out == ['start', 'start', "glibc.malloc.hugetlb=1 ['arg1', '--flag=2']"]
