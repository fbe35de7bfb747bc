"""Reliability: preemption (SIGTERM, SIGKILL), non-finite losses, damaged checkpoints.

The preemption test runs the real CLI in subprocesses and compares the final params of an
interrupted-and-restarted run with an uninterrupted one bit for bit.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import small_config
from jdiffrep import checkpoint
from jdiffrep import train

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 24
CHECKPOINT_EVERY = 4
TIMEOUT_S = 300  # for each subprocess and each wait: a hang fails the test instead of blocking


def _cli(data_dir: str, workdir: str) -> list[str]:
  return [sys.executable, '-m', 'jdiffrep.main', '--config=configs/shapes.py:ddpm',
          f'--workdir={workdir}', f'--config.dataset.data_dir={data_dir}',
          '--config.dataset.tfds_config=32_small', '--config.dataset.read_threads=2',
          '--config.model.name=XXS/8', '--config.batch_size=16',
          f'--config.num_train_steps={NUM_STEPS}', '--config.log_every_steps=4',
          f'--config.checkpoint_every_steps={CHECKPOINT_EVERY}', '--config.keep_checkpoints=3',
          '--config.sample_every_steps=0', '--config.sample.num_images=4',
          '--config.sample.ddim_steps=2']


_RUNNING: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _kill_leftover_runs():
  yield
  while _RUNNING:
    proc = _RUNNING.pop()
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def _start(cmd: list[str], log_path: str) -> subprocess.Popen:
  log = open(log_path, 'w')  # pylint: disable=consider-using-with
  proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
  _RUNNING.append(proc)
  return proc


def _finish(proc: subprocess.Popen, log_path: str) -> str:
  try:
    proc.wait(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise
  with open(log_path) as f:
    return f.read()


def _steps(checkpoint_dir: str) -> list[int]:
  if not os.path.isdir(checkpoint_dir):
    return []
  return sorted(int(name) for name in os.listdir(checkpoint_dir) if name.isdigit())


def _wait_for(predicate, proc: subprocess.Popen, what: str, poll_s: float = 0.002):
  deadline = time.time() + TIMEOUT_S
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError(f'the run ended (status {proc.returncode}) before {what}')
    if time.time() > deadline:
      proc.kill()
      raise AssertionError(f'timed out waiting for {what}')
    time.sleep(poll_s)


def _restore(checkpoint_dir: str, step: int):
  """(state dict as NumPy, iterator's next batch index) of checkpoint `step`."""
  manager = checkpoint.make_manager(checkpoint_dir, max_to_keep=10, create=False)
  restored = manager.restore(step, args=checkpoint.ocp.args.Composite(
      state=checkpoint.ocp.args.StandardRestore()))
  manager.close()
  with open(os.path.join(checkpoint_dir, str(step), 'data', 'process_0-of-1.json')) as f:
    next_index = json.load(f)['next_index']
  return jax.tree.map(np.asarray, restored.state), next_index


def _assert_iterator_in_step(checkpoint_dir: str):
  """Every checkpoint's iterator has read exactly one batch per step: none lost or repeated."""
  for step in _steps(checkpoint_dir):
    state, next_index = _restore(checkpoint_dir, step)
    assert int(state['step']) == step and next_index == step, (step, next_index)


@pytest.mark.slow
def test_sigterm_then_sigkill_then_restart_is_bit_identical(shapes_data_dir, tmp_path):
  """SIGTERM after a checkpoint, SIGKILL mid-run, the same command again == one run."""
  reference, interrupted = str(tmp_path / 'reference'), str(tmp_path / 'interrupted')
  ckpt_dir = os.path.join(interrupted, 'ddpm', 'checkpoints')
  cmd = _cli(shapes_data_dir, interrupted)
  # The uninterrupted run of the same length, alongside (most of a run is start-up and compile).
  reference_proc = _start(_cli(shapes_data_dir, reference), str(tmp_path / 'reference.log'))

  # 1. SIGTERM as soon as the first checkpoint exists: saves at the next step, exits 0.
  proc = _start(cmd, str(tmp_path / 'sigterm.log'))
  _wait_for(lambda: _steps(ckpt_dir), proc, 'the first checkpoint')
  proc.send_signal(signal.SIGTERM)
  log = _finish(proc, str(tmp_path / 'sigterm.log'))
  assert proc.returncode == 0, log[-3000:]
  preempted_at = _steps(ckpt_dir)[-1]
  assert CHECKPOINT_EVERY <= preempted_at < NUM_STEPS, log[-3000:]
  assert f'Preemption notice (SIGTERM) at step {preempted_at}' in log
  assert not os.path.exists(os.path.join(interrupted, 'ddpm', 'results.json'))
  _assert_iterator_in_step(ckpt_dir)

  # 2. The same command resumes; SIGKILL it while an asynchronous save is in flight (orbax
  #    writes into `<step>.orbax-checkpoint-tmp*` and renames it when complete), so the kill
  #    lands mid-step and usually mid-save. Nothing can run on SIGKILL.
  proc = _start(cmd, str(tmp_path / 'sigkill.log'))
  in_flight = lambda: glob.glob(os.path.join(ckpt_dir, '*tmp*'))
  _wait_for(in_flight, proc, 'a save after the restart', poll_s=0.0003)
  proc.send_signal(signal.SIGKILL)
  log = _finish(proc, str(tmp_path / 'sigkill.log'))
  assert proc.returncode == -signal.SIGKILL
  assert f'Resumed from step {preempted_at}.' in log
  killed_at = _steps(ckpt_dir)[-1]
  assert preempted_at <= killed_at < NUM_STEPS
  unfinished = [int(os.path.basename(p).split('.')[0]) for p in in_flight()]
  assert all(step > killed_at for step in unfinished), unfinished  # never counted as a step

  # 3. The same command again finishes the run; a save the kill interrupted is never used.
  log = _finish(_start(cmd, str(tmp_path / 'final.log')), str(tmp_path / 'final.log'))
  assert f'Resumed from step {killed_at}.' in log, log[-3000:]
  assert not in_flight()  # the killed save's leftovers were deleted, not restored
  _assert_iterator_in_step(ckpt_dir)
  results = json.loads(open(os.path.join(interrupted, 'ddpm', 'results.json')).read())
  assert results['start_step'] == killed_at and results['steps'] == NUM_STEPS

  log = _finish(reference_proc, str(tmp_path / 'reference.log'))
  assert reference_proc.returncode == 0 and 'Resumed' not in log, log[-3000:]
  expected, expected_index = _restore(os.path.join(reference, 'ddpm', 'checkpoints'), NUM_STEPS)
  got, got_index = _restore(ckpt_dir, NUM_STEPS)
  assert got_index == expected_index == NUM_STEPS
  for name in ('params', 'ema_params', 'opt_state', 'rng', 'step'):
    for a, b in zip(jax.tree.leaves(expected[name]), jax.tree.leaves(got[name])):
      assert a.dtype == b.dtype and np.array_equal(a, b), name


def _all_finite(tree) -> bool:
  return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def test_fingerprint_is_a_position_weighted_bit_sum_that_sees_one_changed_element():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 7))
  bits = np.asarray(x).view(np.uint32).ravel().astype(np.uint64)
  expected = (bits * (2 * np.arange(bits.size, dtype=np.uint64) + 1)).sum() % 2**32
  tree = {'x': x, 'step': jax.numpy.int32(3)}
  fingerprint = np.asarray(checkpoint.state_fingerprint(tree))
  assert fingerprint.tolist() == [3 * 1, int(expected)]  # leaves in key order: step, x
  changed = checkpoint.state_fingerprint({'x': x.at[1, 2, 3].add(1e-6), 'step': tree['step']})
  assert int(changed[1]) != int(expected) and int(changed[0]) == 3


@pytest.fixture(scope='module')
def finished_run(shapes_data_dir, tmp_path_factory):
  """An 8-step run with checkpoints at 4 and 8: (config, workdir)."""
  config, workdir = small_config(shapes_data_dir), str(tmp_path_factory.mktemp('finished'))
  train.train_and_evaluate(config, workdir)
  return config, workdir


@pytest.mark.slow
def test_non_finite_loss_stops_naming_the_step_and_saves_nothing_after_it(finished_run,
                                                                        tmp_path):
  """8 good steps, then a learning rate of 1e30: step 9's update is ~1e30 per weight, so
  step 10's forward pass overflows. The run must stop there and keep checkpoint 8 as newest."""
  config, workdir = finished_run
  workdir = shutil.copytree(workdir, str(tmp_path / 'run'))
  good_state, _ = _restore(os.path.join(workdir, 'checkpoints'), 8)
  config = config.copy_and_resolve_references()
  config.num_train_steps, config.optim.learning_rate = 16, 1e30
  config.checkpoint_every_steps = 2
  config.log_every_steps = 100  # no log step before the save at 10: the save itself must check
  with pytest.raises(FloatingPointError) as error:
    train.train_and_evaluate(config, workdir)
  message = str(error.value)
  assert 'The loss of step 10 is' in message and 'config.optim.learning_rate' in message
  assert 'step 8 in' in message
  assert _steps(os.path.join(workdir, 'checkpoints')) == [4, 8]
  kept, _ = _restore(os.path.join(workdir, 'checkpoints'), 8)
  assert _all_finite(kept)
  for a, b in zip(jax.tree.leaves(good_state), jax.tree.leaves(kept)):
    np.testing.assert_array_equal(a, b)


def _damaged_copy(workdir: str, target: str, damage) -> str:
  """Copies `workdir` to `target` and applies `damage` to the largest array file of step 8."""
  shutil.copytree(workdir, target)
  files = glob.glob(os.path.join(target, 'checkpoints', '8', 'state', '**', 'd', '*'),
                    recursive=True)
  damage(max(files, key=os.path.getsize))
  return target


def _truncate(path: str):
  os.truncate(path, os.path.getsize(path) // 2)


def _flip_bytes(path: str):
  """Inverts 16 bytes in the middle: the file still reads, with wrong values."""
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    data = f.read(16)
    f.seek(os.path.getsize(path) // 2)
    f.write(bytes(b ^ 0xFF for b in data))


@pytest.mark.slow
def test_truncated_newest_checkpoint_is_reported_and_the_run_resumes_from_the_previous(
    finished_run, tmp_path, caplog):
  config, workdir = finished_run
  damaged = _damaged_copy(workdir, str(tmp_path / 'run'), _truncate)
  results = train.train_and_evaluate(config, damaged)
  assert results['start_step'] == 4 and results['steps'] == 8
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert any('Checkpoint of step 8' in w and 'truncated or corrupt' in w for w in warnings)
  set_aside = glob.glob(str(tmp_path / 'run' / checkpoint.CORRUPT_DIR_NAME / '8-*'))
  assert len(set_aside) == 1
  # Steps 5..8 were trained again from checkpoint 4: the same params as the undamaged run.
  (expected, _), (got, _) = (_restore(os.path.join(d, 'checkpoints'), 8)
                             for d in (workdir, damaged))
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_damaged_bytes_fail_the_fingerprint_and_the_previous_checkpoint_is_used(
    finished_run, tmp_path, caplog):
  """Inverted bytes restore without error in orbax; only the fingerprint catches them."""
  config, workdir = finished_run
  damaged = _damaged_copy(workdir, str(tmp_path / 'run'), _flip_bytes)
  from jdiffrep import methods  # pylint: disable=g-import-not-at-top
  from jdiffrep.data import pipeline  # pylint: disable=g-import-not-at-top
  method = methods.make_method(config, (32, 32, 3))
  tx, _ = train.make_optimizer(config.optim)
  fresh = train.init_train_state(method, tx, jax.random.PRNGKey(5))
  data = pipeline.make_train_iterator(config.dataset, global_batch_size=16, seed=config.seed)
  manager = checkpoint.make_manager(os.path.join(damaged, 'checkpoints'), max_to_keep=3)
  restored = checkpoint.restore_latest(manager, fresh, data)
  assert manager.all_steps() == [4]
  manager.close()
  assert int(restored.step) == 4
  expected, next_index = _restore(os.path.join(workdir, 'checkpoints'), 4)
  assert data.get_state()['next_index'] == next_index == 4
  for name, leaves in expected.items():
    for a, b in zip(jax.tree.leaves(leaves), jax.tree.leaves(getattr(restored, name))):
      np.testing.assert_array_equal(a, b)
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert any('Checkpoint of step 8' in w and 'fingerprint' in w for w in warnings), warnings


@pytest.mark.slow
def test_no_readable_checkpoint_is_an_error_that_moves_nothing(finished_run, tmp_path):
  config, workdir = finished_run
  damaged = _damaged_copy(workdir, str(tmp_path / 'run'), _truncate)
  _truncate(max(glob.glob(os.path.join(damaged, 'checkpoints', '4', 'state', '**', 'd', '*'),
                          recursive=True), key=os.path.getsize))
  with pytest.raises(ValueError, match='No checkpoint in .* could be restored .*step 8: .*step 4'):
    train.train_and_evaluate(config, damaged)
  assert _steps(os.path.join(damaged, 'checkpoints')) == [4, 8]
