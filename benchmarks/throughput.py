r"""Train-step throughput of jdiffrep against diffusers' DiT, measured in the same process.

  python -m benchmarks.throughput --bench=dit --model=S/2 --resolution=32 --batch=32 \
      --peer=diffusers [--dtype=bfloat16] [--attention=cudnn] [--peer_compile]
  python -m benchmarks.throughput --bench=diti   # also: sdae, data, devices
  python -m benchmarks.report                   # regenerate the table in benchmarks/README.md

--bench=dit times one full AdamW train step (forward, backward, update) of our DiT and of
diffusers' `DiTTransformer2DModel` of the same size on the same random batch (images, t, class
labels, target; MSE loss; equal AdamW settings). Both compile / warm up first; then the two
alternate (`--repeats` rounds of `--steps` steps each), synchronised only before and after each
round, so a shared machine's load hits both alike. The peer runs in a process of its own
(`--peer_process=own`, the default), which waits while ours runs. The median round gives step
ms and images/s.
--bench=diti / sdae time `train.train_step` of those methods (`methods.make_method`), --bench=data
the grain pipeline alone on the built-in `shapes` set, --bench=devices the DiT step on 1, 2, 4, 8
fake CPU devices (one subprocess each) at a fixed global batch.

Each run appends one JSON line to `--out` (device, versions, date, command, load) and prints it.

Records that cannot mislead: before anything starts, the run waits (at most `--idle_wait`
seconds) for the 1-minute load to fall below `--idle_load_per_core` per usable core. --bench=dit
records the paired ratio of every round (the peer's seconds over ours for the same steps, taken
back to back) with their median and spread. A row is marked `busy`, with its reasons, when the
load did not fall or the paired ratios spread more than `--busy_spread` around their median;
`benchmarks.report` leaves busy rows out of its tables (they stay in the JSONL).
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

from benchmarks import provenance
from benchmarks import records
from jdiffrep import cpu_runtime

_BENCH = flags.DEFINE_enum('bench', 'dit', ['dit', 'diti', 'sdae', 'data', 'devices'],
                           'What to time.')
_MODEL = flags.DEFINE_string('model', 'S/2', 'DiT size/patch (jdiffrep.models.dit.DIT_SIZES).')
_RESOLUTION = flags.DEFINE_integer('resolution', 32, 'Image side (pixels, 3 channels).')
_BATCH = flags.DEFINE_integer('batch', 32, 'Global batch size.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                           'Compute dtype (params stay float32; the peer uses bf16 autocast).')
_ATTENTION = flags.DEFINE_enum(
    'attention', 'auto', ['auto', 'xla', 'cudnn', 'head_major', 'cpu_fused'],
    "Our attention kernel (jdiffrep.models.attention): 'auto' is 'cpu_fused' on CPU in float32 "
    "(else 'head_major') and XLA's jax.nn.dot_product_attention elsewhere; 'cudnn': GPU only. "
    "Rows record the kernel 'auto' stood for as attention_kernel.")
_PEER = flags.DEFINE_enum('peer', 'diffusers', ['diffusers', 'none'], 'The peer to compare with.')
_PEER_COMPILE = flags.DEFINE_bool('peer_compile', False, 'torch.compile the peer model.')
_PEER_PROCESS = flags.DEFINE_enum(
    'peer_process', 'own', ['own', 'shared'],
    "--side=both: 'own' runs the peer in a child process (benchmarks.peer_diffusers), so each "
    "side has its own allocator and threads and its own peak RSS in the row; 'shared' runs it in "
    'this process (as the rows before 2026-12-03 did).')
_SIDE = flags.DEFINE_enum(
    'side', 'both', ['both', 'ours', 'peer'],
    "--bench=dit: 'both' times ours against the peer; 'ours' / 'peer' builds and times one side "
    'alone, so the peak RSS the row records (`process_peak_rss_bytes`) is that side\'s own.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per round.', lower_bound=1)
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Rounds (ours and the peer alternate).',
                                lower_bound=1)
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.', lower_bound=0)
_THREADS = flags.DEFINE_integer('threads', 0, 'torch threads (0: the cores this process may use).')
_DEVICES = flags.DEFINE_list('devices', ['1', '2', '4', '8'], '--bench=devices: device counts.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, "--bench=data: TFDS data dir ('shapes' is "
                                'prepared there on first use; default $TFDS_DATA_DIR).')
_OUT = flags.DEFINE_string('out', '', 'JSONL file to append to (default: '
                           'benchmarks/results/<platform>_throughput.jsonl; "-" for none).')
_PROFILE_DIR = flags.DEFINE_string(
    'profile_dir', '', '--bench=dit: after timing, trace one more round of ours with '
    'jax.profiler into this directory (view in TensorBoard / Perfetto).')
_NOTE = flags.DEFINE_string('note', '', 'Free-form note stored with the result.')
_IDLE_WAIT = flags.DEFINE_float('idle_wait', 300.0, 'Seconds to wait at most for an idle machine '
                                'before starting (0: do not wait).', lower_bound=0)
_IDLE_LOAD_PER_CORE = flags.DEFINE_float(
    'idle_load_per_core', records.IDLE_LOAD_PER_CORE, 'Idle: the 1-minute load average is below this per usable core.')
_BUSY_SPREAD = flags.DEFINE_float(
    'busy_spread', records.BUSY_SPREAD, 'Mark the row busy when (max - min) / median of the paired ratios is '
    'above this.')

NUM_CLASSES = 1000  # diffusers' DiT always embeds class labels; ours gets the same embedding
_START: dict = {}  # date and load average when the run began (set by main)


# ----------------------------------------------------------------------------- shared helpers


def _sig(x: float) -> float:
  """Four significant digits."""
  return float(f'{x:.4g}')


def _median_round(seconds: list[float], steps: int, batch: int, devices: int) -> dict:
  step_s = statistics.median(seconds) / steps
  return {'step_ms': _sig(1e3 * step_s),
          'step_ms_rounds': [_sig(1e3 * s / steps) for s in seconds],
          'images_per_sec': _sig(batch / step_s),
          'images_per_sec_per_device': _sig(batch / step_s / devices)}


def _with_mfu(result: dict, flops_per_step: float, peak: float | None) -> dict:
  step_s = result['step_ms'] / 1e3
  result['achieved_tflops'] = _sig(flops_per_step / step_s / 1e12)
  result['mfu'] = round(flops_per_step / step_s / peak, 4) if peak else None
  return result


def _peak_device_memory_bytes() -> int | None:
  """The most memory this process has held on device 0 (None where the backend keeps no
  count, e.g. the CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def _kernel() -> str:
  """The attention kernel --attention stands for here (--dtype's activations)."""
  from jdiffrep.models import attention  # pylint: disable=g-import-not-at-top
  return attention.resolve(_ATTENTION.value, dtype=_DTYPE.value)


def _record(bench: str, fields: dict) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  return {
      'date': _START['date'],
      'command': 'python -m benchmarks.throughput ' + shlex.join(sys.argv[1:]),
      'commit': provenance.commit(),
      'bench': bench,
      'platform': device.platform,
      'device_kind': device.device_kind,
      'device_count': jax.device_count(),
      'host': provenance.host(),
      'load_avg_start': _START['load_avg'],
      'idle_wait_seconds': _START['idle_wait_seconds'],
      'versions': provenance.versions(),
      'environment': {name: os.environ.get(name)
                      for name in (*cpu_runtime.CPU_ENVIRONMENT, 'XLA_FLAGS', cpu_runtime.OPT_OUT)},
      'note': _NOTE.value,
      **fields,
  }


def _write(record: dict) -> None:
  record['load_avg_end'] = round(os.getloadavg()[0], 2)
  reasons = records.busy_reasons(
      record['load_avg_start'], provenance.cores(), load_per_core=_IDLE_LOAD_PER_CORE.value,
      ratio_spread=record.get('ratio_spread'), max_spread=_BUSY_SPREAD.value,
      cpu=record['platform'] == 'cpu')
  record['busy'] = bool(reasons)
  record['busy_reasons'] = reasons
  provenance.append_row(record, _OUT.value or os.path.join(
      'benchmarks', 'results', f'{record["platform"]}_throughput.jsonl'))


def _random_batch(batch: int, resolution: int, seed: int = 0) -> dict:
  """The same NumPy inputs for both sides: images and target NHWC, t and labels [B]."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  shape = (batch, resolution, resolution, 3)
  return {'image': rng.uniform(-1, 1, shape).astype(np.float32),
          'target': rng.standard_normal(shape).astype(np.float32),
          't': rng.integers(0, 1000, batch).astype(np.int32),
          'label': rng.integers(0, NUM_CLASSES, batch).astype(np.int32)}


def _config():
  """The default shapes config with this run's model, batch, resolution, dtype, attention."""
  from configs import shapes  # pylint: disable=g-import-not-at-top
  config = shapes.get_config('ddpm')
  config.model.name = _MODEL.value
  config.model.dtype = _DTYPE.value
  config.model.attention_impl = _ATTENTION.value
  config.batch_size = _BATCH.value
  config.dataset.resolution = _RESOLUTION.value
  config.optim.warmup_steps = 0
  config.optim.grad_clip_norm = 0.0
  return config


# ----------------------------------------------------------------------------- our DiT step


class OursDiTStep:
  """Our DiT (with DiT's class embedding, like the peer) + MSE + AdamW, jitted and sharded."""

  def __init__(self, batch: dict, config):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top
    from jdiffrep import sharding  # pylint: disable=g-import-not-at-top
    from jdiffrep import train  # pylint: disable=g-import-not-at-top
    from jdiffrep.models import dit  # pylint: disable=g-import-not-at-top

    self.jax = jax
    model = dit.dit_from_name(config.model.name, dtype=jnp.dtype(config.model.dtype),
                              attention_impl=config.model.attention_impl,
                              num_classes=NUM_CLASSES)
    tx, _ = train.make_optimizer(config.optim)
    mesh = sharding.make_mesh(config.mesh)
    replicated = sharding.replicated(mesh)

    def init(rng):
      x = jnp.zeros((1, *batch['image'].shape[1:]), jnp.float32)
      zeros = jnp.zeros((1,), jnp.int32)
      params = model.init(rng, x, zeros, labels=zeros)['params']
      return params, tx.init(params)

    def loss_fn(params, b):
      out = model.apply({'params': params}, b['image'], b['t'], labels=b['label'])
      return jnp.mean(jnp.square(out - b['target']))

    def step(state, b):
      params, opt_state = state
      loss, grads = jax.value_and_grad(loss_fn)(params, b)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    self.state = jax.jit(init, out_shardings=replicated)(jax.random.PRNGKey(0))
    self.num_params = train.count_params(self.state[0])
    self.batch = sharding.global_batch(batch, mesh)
    start = time.perf_counter()
    self.compiled = jax.jit(
        step, in_shardings=(replicated, sharding.batch_sharding(mesh)),
        out_shardings=(replicated, replicated), donate_argnums=(0,),
    ).lower(self.state, self.batch).compile()
    self.compile_seconds = time.perf_counter() - start
    self.xla_flops = train.xla_flops(self.compiled)

  def run(self, steps: int) -> float:
    """Seconds for `steps` steps; blocks only before the first and after the last."""
    self.jax.block_until_ready(self.state)
    start = time.perf_counter()
    for _ in range(steps):
      self.state, loss = self.compiled(self.state, self.batch)
    self.jax.block_until_ready((self.state, loss))
    return time.perf_counter() - start


def _alternate(runners: dict, steps: int, repeats: int, warmup: int) -> dict[str, list[float]]:
  """Warm each runner up, then time them in turns: {name: [seconds per round]}."""
  for runner in runners.values():
    if warmup:  # run(0) has no step to wait for
      runner.run(warmup)
  seconds = {name: [] for name in runners}
  for _ in range(repeats):
    for name, runner in runners.items():
      seconds[name].append(runner.run(steps))
  return seconds


def bench_dit() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import flops  # pylint: disable=g-import-not-at-top
  from jdiffrep.models import dit  # pylint: disable=g-import-not-at-top

  config = _config()
  batch = _random_batch(_BATCH.value, _RESOLUTION.value)
  devices = jax.device_count()
  device = jax.devices()[0]
  peak, peak_source = flops.peak_flops(device.device_kind, device.platform, _DTYPE.value)
  formula_flops = flops.dit_train_step_flops(_MODEL.value, _RESOLUTION.value, _BATCH.value)

  runners = {}
  if _SIDE.value != 'peer':
    ours = runners['jdiffrep'] = OursDiTStep(batch, config)
  fields = {}
  if _PEER.value == 'diffusers' and _SIDE.value != 'ours':
    from benchmarks import peer_diffusers  # pylint: disable=g-import-not-at-top
    depth, hidden, heads, patch = dit.parse_model_name(_MODEL.value)
    optim = config.optim
    spec = dict(depth=depth, hidden=hidden, heads=heads, patch=patch, resolution=_RESOLUTION.value,
                num_classes=NUM_CLASSES, dtype=_DTYPE.value, compile_model=_PEER_COMPILE.value,
                learning_rate=optim.learning_rate, b1=optim.b1, b2=optim.b2,
                weight_decay=optim.weight_decay, threads=_THREADS.value or provenance.cores())
    own_process = _SIDE.value == 'both' and _PEER_PROCESS.value == 'own'
    if own_process:
      peer = peer_diffusers.PeerProcess(spec, batch)
      info = peer.info
    else:
      peer, info = peer_diffusers.start_step(
          **spec, images=batch['image'], t=batch['t'], labels=batch['label'],
          target=batch['target'])
    runners['diffusers'] = peer
    fields['peer_process'] = 'own' if own_process else 'shared'
    fields['peer'] = {**info, 'torch_compile': _PEER_COMPILE.value}

  seconds = _alternate(runners, _STEPS.value, _REPEATS.value, _WARMUP.value)
  if _PROFILE_DIR.value and 'jdiffrep' in runners:
    with jax.profiler.trace(_PROFILE_DIR.value):
      ours.run(_STEPS.value)
    fields['profile_dir'] = _PROFILE_DIR.value
  results = {}
  for name, secs in seconds.items():
    peer_devices = 1 if name == 'diffusers' else devices  # the peer runs on one device
    results[name] = _with_mfu(_median_round(secs, _STEPS.value, _BATCH.value, peer_devices),
                              formula_flops, peak and peak * peer_devices)
  if 'jdiffrep' in results:
    results['jdiffrep'].update(compile_seconds=round(ours.compile_seconds, 2),
                               num_params=ours.num_params,
                               xla_flops_per_step=ours.xla_flops,
                               peak_device_memory_bytes=_peak_device_memory_bytes())
  if 'jdiffrep' in results and ours.xla_flops and peak:
    step_s = results['jdiffrep']['step_ms'] / 1e3
    results['jdiffrep']['mfu_xla_flops'] = round(ours.xla_flops / step_s / peak, 4)
  if 'diffusers' in results:
    results['diffusers'].update(fields.pop('peer'))
    if isinstance(peer, peer_diffusers.PeerProcess):
      results['diffusers'].update(peer.close())
    else:
      results['diffusers']['peak_device_memory_bytes'] = peer.peak_device_memory_bytes()
  if len(results) == 2:
    results.update(records.paired_ratios(seconds['jdiffrep'], seconds['diffusers']))
    results['ratio_ours_over_peer'] = results['ratio_median']
  return _record('dit', {
      'model': _MODEL.value, 'resolution': _RESOLUTION.value, 'batch': _BATCH.value,
      'tokens': (_RESOLUTION.value // dit.parse_model_name(_MODEL.value)[3]) ** 2,
      'dtype': _DTYPE.value, 'attention': _ATTENTION.value, 'attention_kernel': _kernel(),
      'side': _SIDE.value,
      'steps': _STEPS.value, 'repeats': _REPEATS.value,
      'xla_threads': 'default (one per usable core)',
      'process_peak_rss_bytes': provenance.peak_rss_bytes(),
      'formula_flops_per_step': formula_flops, 'peak_flops_per_device': peak,
      'peak_source': peak_source, **fields, **results})


# ----------------------------------------------------------------------------- method steps


def bench_method(method_name: str) -> dict:
  """`train.train_step` of `method_name` on random images; DiTi's frozen DM is random too."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jdiffrep import methods  # pylint: disable=g-import-not-at-top
  from jdiffrep import sharding  # pylint: disable=g-import-not-at-top
  from jdiffrep import train  # pylint: disable=g-import-not-at-top

  config = _config()
  config.method = method_name
  image_shape = (_RESOLUTION.value, _RESOLUTION.value, 3)
  method = methods.make_method(config, image_shape, workdir='')
  tx, learning_rate = train.make_optimizer(config.optim)
  mesh = sharding.make_mesh(config.mesh)
  replicated = sharding.replicated(mesh)
  frozen = {}
  if hasattr(method, 'dm'):  # DiTi / PDAE read a frozen DM: random weights time the same
    x, t = jnp.zeros((1, *image_shape)), jnp.zeros((1,), jnp.int32)
    frozen = {'dm': jax.jit(method.dm.init)(jax.random.PRNGKey(1), x, t)['params']}
  frozen = jax.device_put(frozen, replicated)
  state = jax.jit(lambda rng: train.init_train_state(method, tx, rng),
                  out_shardings=replicated)(jax.random.PRNGKey(0))
  batch = sharding.global_batch({'image': _random_batch(_BATCH.value, _RESOLUTION.value)['image']},
                                mesh)
  step = functools.partial(train.train_step, method=method, tx=tx, learning_rate=learning_rate,
                           ema_decay=config.optim.ema_decay)
  start = time.perf_counter()
  compiled = jax.jit(step, in_shardings=(replicated, replicated, sharding.batch_sharding(mesh)),
                     out_shardings=(replicated, replicated),
                     donate_argnums=(0,)).lower(state, frozen, batch).compile()
  compile_seconds = time.perf_counter() - start

  def run(steps):
    nonlocal state
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, frozen, batch)
    jax.block_until_ready((state, metrics))
    return time.perf_counter() - start

  if _WARMUP.value:
    run(_WARMUP.value)
  seconds = [run(_STEPS.value) for _ in range(_REPEATS.value)]
  result = _median_round(seconds, _STEPS.value, _BATCH.value, jax.device_count())
  result['peak_device_memory_bytes'] = _peak_device_memory_bytes()
  return _record(method_name, {
      'model': _MODEL.value, 'resolution': _RESOLUTION.value, 'batch': _BATCH.value,
      'dtype': _DTYPE.value, 'attention': _ATTENTION.value, 'attention_kernel': _kernel(),
      'steps': _STEPS.value,
      'repeats': _REPEATS.value, 'num_params': train.count_params(state.params),
      'compile_seconds': round(compile_seconds, 2), 'xla_flops_per_step': train.xla_flops(compiled),
      'jdiffrep': result})


# ----------------------------------------------------------------------------- input pipeline


def bench_data() -> dict:
  """Images/s the grain pipeline delivers on the built-in `shapes` set, no model."""
  from jdiffrep.data import pipeline  # pylint: disable=g-import-not-at-top
  config = _config()
  config.dataset.data_dir = _DATA_DIR.value
  iterator = pipeline.make_train_iterator(config.dataset, global_batch_size=_BATCH.value, seed=0)
  for _ in range(_WARMUP.value):
    next(iterator)
  batches = _STEPS.value * _REPEATS.value
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(iterator)
  seconds = time.perf_counter() - start
  assert batch['image'].shape == (_BATCH.value, _RESOLUTION.value, _RESOLUTION.value, 3)
  return _record('data', {
      'dataset': config.dataset.name, 'resolution': _RESOLUTION.value, 'batch': _BATCH.value,
      'read_threads': config.dataset.read_threads, 'timed_batches': batches,
      'images_per_sec': round(batches * _BATCH.value / seconds, 1)})


# ----------------------------------------------------------------------------- device sweep


def bench_devices() -> dict:
  """Our DiT step at a fixed global batch on n fake CPU devices, one subprocess per n."""
  rows = []
  for count in map(int, _DEVICES.value):
    env = dict(os.environ, JAX_PLATFORMS='cpu',
               XLA_FLAGS=f'--xla_force_host_platform_device_count={count}')
    command = [sys.executable, '-m', 'benchmarks.throughput', '--bench=dit', '--peer=none',
               '--out=-', f'--model={_MODEL.value}', f'--resolution={_RESOLUTION.value}',
               f'--batch={_BATCH.value}', f'--dtype={_DTYPE.value}', f'--steps={_STEPS.value}',
               f'--repeats={_REPEATS.value}', f'--warmup={_WARMUP.value}']
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    child = json.loads(output.strip().splitlines()[-1])
    rows.append({'devices': child['device_count'], **{
        k: child['jdiffrep'][k] for k in ('step_ms', 'step_ms_rounds', 'images_per_sec',
                                          'compile_seconds')}})
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_platforms', 'cpu')
  return _record('devices', {
      'model': _MODEL.value, 'resolution': _RESOLUTION.value, 'batch': _BATCH.value,
      'dtype': _DTYPE.value, 'steps': _STEPS.value, 'repeats': _REPEATS.value, 'sweep': rows})


def main(argv) -> None:
  del argv
  if _ATTENTION.value == 'cudnn' and _DTYPE.value != 'bfloat16':
    raise app.UsageError('--attention=cudnn needs --dtype=bfloat16 (cuDNN fused attention takes '
                         'fp16/bf16 only).')
  load, waited = records.wait_for_idle(_IDLE_LOAD_PER_CORE.value * provenance.cores(), _IDLE_WAIT.value)
  _START.update(date=provenance.utc_now(), load_avg=load, idle_wait_seconds=waited)
  # Ours and the peer share one accelerator: JAX must not grab 75 % of its memory up front.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  bench = _BENCH.value
  if bench == 'dit':
    record = bench_dit()
  elif bench in ('diti', 'sdae'):
    record = bench_method(bench)
  elif bench == 'data':
    record = bench_data()
  else:
    record = bench_devices()
  _write(record)


if __name__ == '__main__':
  cpu_runtime.restart_with_cpu_environment()
  app.run(main)
