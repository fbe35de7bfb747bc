"""launch/wheelhouse.sh: a folder of wheels from which a fresh venv installs jdiffrep offline.

The target image is played by a fresh venv that already "has" some heavy packages and their
dependencies: they are linked in from this test's own environment (a .pth file naming a folder
of links to just those distributions), as a CUDA image has jax and numpy. The wheelhouse is built for this machine's
own Python with those names passed as --preinstalled, then jdiffrep is installed into the venv
with `pip install --no-index --find-links`, which can reach nothing but the wheelhouse.
"""

import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Heavy distributions of this environment that the "image" already has, with their own
# dependencies (as a real image has them); everything else must come from the wheelhouse.
HEAVY = ('jax', 'jaxlib', 'numpy', 'scipy', 'tensorstore', 'pyarrow', 'matplotlib', 'grpcio')


def _with_dependencies(names) -> list[str]:
  """`names` and every installed distribution they require, transitively (markers ignored)."""
  found, todo = set(), list(names)
  while todo:
    name = re.sub(r'[-_.]+', '-', todo.pop()).lower()
    if name in found:
      continue
    try:
      dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
      continue  # required only under a marker that does not hold here
    found.add(name)
    todo += [re.match(r'[A-Za-z0-9._-]+', r).group() for r in dist.requires or []
             if 'extra ==' not in r]
  return sorted(found)


def _link_distributions(names, view_dir) -> None:
  """Links each distribution's top-level files and folders (and its .dist-info) into view_dir."""
  view_dir.mkdir()
  for name in names:
    dist = importlib.metadata.distribution(name)
    site = dist.locate_file('')
    for top in {file.parts[0] for file in dist.files if file.parts[0] != '..'}:
      if not (view_dir / top).exists():
        (view_dir / top).symlink_to(os.path.join(site, top))


@pytest.mark.slow
def test_wheelhouse_installs_jdiffrep_offline_into_a_fresh_venv(tmp_path):
  preinstalled = _with_dependencies(HEAVY)
  wheelhouse = tmp_path / 'wheelhouse'
  proc = subprocess.run(
      ['bash', os.path.join(REPO_ROOT, 'launch', 'wheelhouse.sh'), '--out', str(wheelhouse),
       '--preinstalled', ','.join(preinstalled)],
      capture_output=True, text=True, timeout=900, env={**os.environ, 'PYTHON': sys.executable})
  assert proc.returncode == 0, proc.stderr[-4000:]
  wheels = sorted(os.listdir(wheelhouse))
  assert 'jdiffrep-0.1.0-py3-none-any.whl' in wheels
  normalised = {w.split('-')[0].lower() for w in wheels if w.endswith('.whl')}
  assert {'grain', 'clu', 'tensorflow_datasets', 'orbax_checkpoint', 'flax'} <= normalised
  assert not normalised & {'jax', 'jaxlib', 'numpy', 'tensorstore', 'tensorflow'}, normalised

  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True, timeout=300)
  python = str(venv / 'bin' / 'python')
  site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                        capture_output=True, text=True, check=True).stdout.strip()
  assert site != sysconfig.get_paths()['purelib']
  _link_distributions(preinstalled, tmp_path / 'image')
  with open(os.path.join(site, 'image_packages.pth'), 'w') as f:
    f.write(str(tmp_path / 'image') + '\n')

  install = subprocess.run(
      [python, '-m', 'pip', 'install', '--no-index', '--find-links', str(wheelhouse),
       'jdiffrep'], capture_output=True, text=True, timeout=900)
  assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
  check = subprocess.run(
      [python, '-c', 'import jdiffrep, jdiffrep.train, jdiffrep.metric_writer, grain, clu, '
       'tensorflow_datasets, orbax.checkpoint; print(jdiffrep.__file__)'],
      cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert check.returncode == 0, check.stderr[-3000:]
  assert check.stdout.strip().startswith(str(venv))  # the installed wheel, not the checkout
