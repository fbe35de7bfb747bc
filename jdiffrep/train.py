"""The training loop, one linear story: mesh, input, model and optimiser, checkpoint, compile, loop.

Everything method-specific (loss, sampling) lives in `jdiffrep.methods`; this file only moves
batches through one jitted, sharded train step, keeps an EMA of the parameters, checkpoints the
state together with the input iterator, and reports metrics, throughput and sample grids.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from absl import logging
from clu import periodic_actions
from etils import epath
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jdiffrep import checkpoint
from jdiffrep import config as config_lib
from jdiffrep import health as health_lib
from jdiffrep import images
from jdiffrep import methods
from jdiffrep import metric_writer
from jdiffrep import paths
from jdiffrep import sharding
from jdiffrep.data import pipeline


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree, saved whole in checkpoints."""
  step: jax.Array  # int32 scalar: number of optimiser updates applied
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array  # uint32 [2]: base key; step s uses fold_in(rng, s)


def make_optimizer(optim_config) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with linear warm-up to a constant rate, optional global-norm clipping."""
  if optim_config.warmup_steps:
    schedule = optax.warmup_constant_schedule(0.0, optim_config.learning_rate,
                                              optim_config.warmup_steps)
  else:
    schedule = optax.constant_schedule(optim_config.learning_rate)
  adamw = optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2,
                      weight_decay=optim_config.weight_decay)
  if optim_config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optim_config.grad_clip_norm), adamw), schedule
  return adamw, schedule


def method_optimizer(config: ml_collections.ConfigDict, method
                     ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`make_optimizer(config.optim)` for every parameter, unless the method splits them: one with
  `optimizer(tx)` (SimCLR / SimSiam: the head's own SGD) gets `tx` for the rest."""
  tx, schedule = make_optimizer(config.optim)
  if hasattr(method, 'optimizer'):
    tx = method.optimizer(tx)
  return tx, schedule


def make_health_fn(method, images: jax.Array):
  """state -> {'health/<name>': float} of the online and 'health_ema/...' of the EMA embedding
  of `images` (`jdiffrep.health`), and for a method with `z_reliance` (sdae) how much its
  denoiser uses the embedding; None when the method learns no embedding."""
  if not hasattr(method, 'embedding') or not images.shape[0]:
    return None

  @jax.jit
  def health(params, ema_params, images):  # parameters as arguments, never folded constants
    return {f'{prefix}/{name}': value
            for prefix, tree in (('health', params), ('health_ema', ema_params))
            for name, value in health_lib.method_health(method, tree, images).items()}

  return lambda state: {k: float(v) for k, v in
                        jax.device_get(health(state.params, state.ema_params, images)).items()}


def init_train_state(method, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  init_rng, train_rng = jax.random.split(rng)
  params = method.init_params(init_rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params),
                    rng=train_rng)


def warm_start(state: TrainState, warm: dict, state_sharding: TrainState) -> TrainState:
  """`state` at step 0 with the top-level param subtrees in `warm` replaced in params and EMA.

  The optimiser state is not touched: Adam's moments start at zero whatever the params are.
  """
  if not warm:
    return state
  unknown = sorted(set(warm) - set(state.params))
  if unknown:
    raise ValueError(f'Warm-start params {unknown} are not in the model; it has '
                     f'{sorted(state.params)}.')
  params = jax.device_put({**state.params, **warm}, state_sharding.params)
  # Copies, so that params and EMA never share a buffer (the train step donates both).
  return state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))


def train_step(state: TrainState, frozen, batch: dict, *, method,
               tx: optax.GradientTransformation, learning_rate: optax.Schedule,
               ema_decay: float) -> tuple[TrainState, dict]:
  """One optimiser update on a global batch; returns the new state and scalar metrics.

  `frozen` holds parameters the loss reads but never trains (DiTi's DM); they are not in the
  optimiser state and no gradient is taken with respect to them.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  (loss, aux), grads = jax.value_and_grad(method.loss, has_aux=True)(state.params, frozen, batch,
                                                                     rng)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = optax.incremental_update(params, state.ema_params, 1.0 - ema_decay)
  metrics = {**aux, 'loss': loss, 'grad_norm': optax.global_norm(grads),
             'learning_rate': learning_rate(state.step)}
  return state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                       opt_state=opt_state), metrics


def abstract_train_state(method, tx: optax.GradientTransformation) -> TrainState:
  """ShapeDtypeStructs of `init_train_state`'s output; nothing is allocated."""
  return jax.eval_shape(lambda rng: init_train_state(method, tx, rng), jax.random.PRNGKey(0))


def make_checked_mesh(config: ml_collections.ConfigDict, devices=None) -> jax.sharding.Mesh:
  """`config.mesh` over `devices` (default: all), checked against `config.batch_size`."""
  mesh = sharding.make_mesh(config.mesh, devices)
  if config.batch_size % sharding.num_batch_shards(mesh):
    raise ValueError(f'config.batch_size={config.batch_size} must be divisible by the '
                     f'{sharding.num_batch_shards(mesh)} batch shards of the mesh.')
  return mesh


def make_sharded_step(config: ml_collections.ConfigDict, method, tx: optax.GradientTransformation,
                      learning_rate: optax.Schedule, mesh: jax.sharding.Mesh):
  """The jitted train step with explicit shardings, and the shardings of its state and frozen.

  Train state (params, EMA, optimiser moments) and frozen params are split over 'fsdp' by
  `sharding.tree_shardings`; the batch over ('data', 'fsdp'); metrics are replicated.
  Returns (step_fn, state_sharding, frozen_sharding); step_fn(state, frozen, batch).
  """
  min_size = config.mesh.fsdp_min_size
  state_sharding = sharding.tree_shardings(abstract_train_state(method, tx), mesh, min_size)
  frozen_sharding = sharding.tree_shardings(method.abstract_frozen(), mesh, min_size)
  step_fn = jax.jit(
      lambda s, f, b: train_step(s, f, b, method=method, tx=tx, learning_rate=learning_rate,
                                 ema_decay=config.optim.ema_decay),
      in_shardings=(state_sharding, frozen_sharding, sharding.batch_sharding(mesh)),
      out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=(0,))
  return step_fn, state_sharding, frozen_sharding


def xla_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled function by XLA's cost analysis (per device); None if absent."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops']) if cost and 'flops' in cost else None


def compile_step(step_fn, state, frozen, batch):
  """AOT-compiles `step_fn` for these (possibly abstract) inputs: (compiled, seconds, FLOPs)."""
  compile_start = time.time()
  compiled = step_fn.lower(state, frozen, batch).compile()
  compile_seconds = time.time() - compile_start
  return compiled, compile_seconds, xla_flops(compiled) or 0.0


def compile_only(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Compiles the train step of `config` on the current devices; reads no data, trains nothing.

  Everything is abstract (shapes and shardings), so a config too large to allocate still
  compiles. Returns the trainable parameter count, XLA's per-device memory (arguments,
  outputs, temporaries) and FLOPs per step, to check a configuration fits before running it.
  """
  config_lib.validate_config(config)
  mesh = make_checked_mesh(config)
  resolution = config.dataset.resolution
  method = methods.make_method(config, (resolution, resolution, 3), workdir=workdir)
  tx, learning_rate = method_optimizer(config, method)
  step_fn, state_sharding, frozen_sharding = make_sharded_step(config, method, tx, learning_rate,
                                                               mesh)
  with_sharding = lambda tree, shardings: jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
  state = with_sharding(abstract_train_state(method, tx), state_sharding)
  frozen = with_sharding(method.abstract_frozen(), frozen_sharding)
  batch = {'image': jax.ShapeDtypeStruct((config.batch_size, resolution, resolution, 3),
                                         jnp.float32, sharding=sharding.batch_sharding(mesh))}
  compiled, compile_seconds, flops_per_step = compile_step(step_fn, state, frozen, batch)
  memory = compiled.memory_analysis()
  memory_bytes = {name: int(getattr(memory, f'{name}_size_in_bytes', 0) or 0)
                  for name in ('argument', 'output', 'temp', 'alias', 'generated_code')}
  # Donated state is aliased to the output: count those bytes once.
  memory_bytes['peak_estimate'] = (memory_bytes['argument'] + memory_bytes['output']
                                   - memory_bytes['alias'] + memory_bytes['temp'])
  return {
      'method': config.method,
      'model': config.model.name,
      'num_params': count_params(state.params),
      'num_frozen_params': count_params(frozen),
      'batch_size': config.batch_size,
      'mesh': dict(mesh.shape),
      'devices': jax.device_count(),
      'device_kind': jax.devices()[0].device_kind,
      'per_device_memory_bytes': memory_bytes,
      'xla_flops_per_step': flops_per_step,
      'compile_seconds': compile_seconds,
  }


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _write_preview_grid(preview_fn, state: TrainState, step: int, workdir: epath.Path,
                        writer: metric_writer.MetricWriter) -> str:
  samples = pipeline.to_uint8(jax.device_get(preview_fn(state.ema_params)))
  grid = images.make_grid(samples, num_columns=8, upscale=max(1, 128 // samples.shape[1]))
  writer.write_images(step, {'samples': grid[None]})
  path = workdir / 'samples' / f'step_{step:07d}.png'
  if jax.process_index() != 0:  # every process computes the samples; one writes them
    return str(path)
  return images.save_png(path, grid)


def tree_all_finite(tree) -> jax.Array:
  """bool scalar: whether every element of every float leaf of `tree` is finite."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                            if jnp.issubdtype(x.dtype, jnp.inexact)] or [jnp.bool_(True)]))


def _stop_if_not_finite(step_losses: list[tuple[int, jax.Array]], manager, config) -> None:
  """Raises FloatingPointError naming the first step whose loss is NaN or infinite.

  Called before every save, so a non-finite state is never checkpointed and the newest
  checkpoint stays the last finite one.
  """
  losses = jax.device_get([loss for _, loss in step_losses])
  for (step, _), loss in zip(step_losses, losses):
    if not math.isfinite(float(loss)):
      manager.wait_until_finished()
      raise FloatingPointError(
          f'The loss of step {step} is {float(loss)}; training stopped there without saving. '
          f'The newest checkpoint, step {manager.latest_step()} in {manager.directory}, holds '
          'the last finite state, and the same command resumes from it. Fix: lower '
          f'config.optim.learning_rate (now {config.optim.learning_rate}), set '
          f'config.optim.grad_clip_norm (now {config.optim.grad_clip_norm}), or train in '
          'float32 (config.model.dtype).')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config.method` on `config.dataset`, resuming from `workdir` when it has checkpoints.

  Writes TensorBoard scalars and images, PNG sample grids under `workdir/samples/`, checkpoints
  under `workdir/checkpoints/`, and returns (and writes) `workdir/results.json`.

  On SIGTERM (single process) or an orbax preemption notice (multi-process, TPU maintenance),
  it saves a checkpoint at the next step boundary and returns `{'preempted': True, ...}`
  without writing results.json; running it again resumes exactly where it stopped.
  """
  with checkpoint.sigterm_requests_stop() as sigterm:
    return _train_and_evaluate(config, workdir, sigterm)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, sigterm) -> dict:
  wall_start = time.time()
  config_lib.validate_config(config)
  workdir = paths.absolute(workdir)  # local or a URL (gs://...): all I/O goes through epath
  workdir.mkdir(parents=True, exist_ok=True)
  is_chief = jax.process_index() == 0
  if is_chief:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  writer = metric_writer.create_writer(workdir, just_logging=not is_chief)

  # ---------------------------------------------------------------- mesh
  mesh = make_checked_mesh(config)
  logging.info('Mesh %s over %d devices (%s), %d process(es).', dict(mesh.shape),
               jax.device_count(), jax.devices()[0].device_kind, jax.process_count())

  # ---------------------------------------------------------------- input pipeline
  train_iter = pipeline.make_train_iterator(
      config.dataset, global_batch_size=config.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  resolution = config.dataset.resolution
  image_shape = (resolution, resolution, 3)

  # ---------------------------------------------------------------- model and optimiser
  method = methods.make_method(config, image_shape, workdir=str(workdir))
  tx, learning_rate = method_optimizer(config, method)
  replicated = sharding.replicated(mesh)
  step_fn, state_sharding, frozen_sharding = make_sharded_step(config, method, tx, learning_rate,
                                                               mesh)
  frozen = jax.device_put(method.load_frozen(), frozen_sharding)
  init_fn = jax.jit(lambda rng: init_train_state(method, tx, rng), out_shardings=state_sharding)
  state = init_fn(jax.random.PRNGKey(config.seed))
  num_params = count_params(state.params)
  logging.info('Model %s: %s trainable parameters.', config.model.name, f'{num_params:,}')

  # ---------------------------------------------------------------- checkpoint
  manager = checkpoint.make_manager(workdir / 'checkpoints',
                                    max_to_keep=config.keep_checkpoints)
  restored = checkpoint.restore_latest(manager, state, train_iter)
  if restored is not None:
    state = restored
  else:
    state = warm_start(state, method.warm_start_params(), state_sharding)
  start_step = int(jax.device_get(state.step))
  results_path = workdir / 'results.json'
  if start_step >= config.num_train_steps and results_path.exists():
    logging.info('%s is already trained to step %d; reusing its results.', workdir, start_step)
    manager.close()
    return json.loads(results_path.read_text())
  if start_step > 0:
    logging.info('Resumed from step %d.', start_step)

  # ---------------------------------------------------------------- compile
  batch = sharding.global_batch(next(train_iter), mesh)
  compiled_step, compile_seconds, flops_per_step = compile_step(step_fn, state, frozen, batch)
  logging.info('Compiled train step in %.1f s (%.3g FLOPs per step per device by XLA).',
               compile_seconds, flops_per_step)
  # The same noise and the same images in every preview grid, so grids compare across steps.
  preview_images = jax.device_put(
      pipeline.first_images(config.dataset, config.sample.num_images), replicated)
  preview_jit = jax.jit(method.preview, out_shardings=replicated)
  preview_fn = lambda params: preview_jit(params, frozen, jax.random.PRNGKey(config.seed + 1),
                                          preview_images)
  health_fn = (make_health_fn(method, jax.device_put(
      pipeline.first_images(config.dataset, config.health_images), replicated))
               if config.health_images else None)
  last_health: dict[str, float] = {}
  if is_chief:
    writer.write_hparams({k: v for k, v in config.to_dict().items()
                          if isinstance(v, (int, float, str, bool))})

  # ---------------------------------------------------------------- train loop
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=config.num_train_steps, writer=writer, every_steps=config.log_every_steps)
  pending_metrics: list[dict] = []
  unchecked_losses: list[tuple[int, jax.Array]] = []  # (step, loss) not yet checked for NaN
  all_finite = jax.jit(lambda s: tree_all_finite((s.params, s.ema_params, s.opt_state)))
  preempted = False
  train_seconds, images_seen, last_loss = 0.0, 0, math.nan
  interval_start, excluded = time.time(), 0.0
  sample_paths: list[str] = []
  step = start_step
  while step < config.num_train_steps:
    if batch is None:  # the first batch was already read to compile the step
      batch = sharding.global_batch(next(train_iter), mesh)
    with jax.profiler.StepTraceAnnotation('train', step_num=step):
      state, metrics = compiled_step(state, frozen, batch)
    batch = None  # the iterator now points past this batch: checkpoints must save it so
    step += 1
    pending_metrics.append(metrics)
    unchecked_losses.append((step, metrics['loss']))
    report_progress(step, time.time())
    # All processes must ask orbax at every step; SIGTERM is the single-process notice.
    preempted = manager.reached_preemption(step) or sigterm.is_set()
    saving = (step % config.checkpoint_every_steps == 0 or step == config.num_train_steps
              or preempted)

    if step % config.log_every_steps == 0 or step == config.num_train_steps or saving:
      _stop_if_not_finite(unchecked_losses, manager, config)
      unchecked_losses = []
    if step % config.log_every_steps == 0 or step == config.num_train_steps:
      summary = {k: float(np.mean(v)) for k, v in
                 jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(pending_metrics)).items()}
      elapsed = time.time() - interval_start - excluded
      train_seconds += elapsed
      images_seen += len(pending_metrics) * config.batch_size
      summary['images_per_sec'] = len(pending_metrics) * config.batch_size / elapsed
      summary['step_time_ms'] = 1000.0 * elapsed / len(pending_metrics)
      last_loss = summary['loss']
      if health_fn is not None:  # after `elapsed`: not counted as training time
        last_health = health_fn(state)
        summary.update(last_health)
      writer.write_scalars(step, summary)
      pending_metrics, interval_start, excluded = [], time.time(), 0.0

    pause_start = time.time()
    if saving:
      if not all_finite(state):
        manager.wait_until_finished()
        raise FloatingPointError(
            f'The parameters or optimiser state after step {step} are not finite although its '
            f'loss was; not saving. The newest checkpoint, step {manager.latest_step()} in '
            f'{manager.directory}, is the last finite state. Fix: set '
            'config.optim.grad_clip_norm or lower config.optim.learning_rate.')
      logging.info('Saving checkpoint of step %d.', step)
      checkpoint.save(manager, step, state, train_iter)
      writer.flush()  # the metrics up to a checkpoint survive a kill after it
    if preempted:
      manager.wait_until_finished()
      logging.warning('Preemption notice (%s) at step %d: checkpoint saved, exiting. Run the '
                      'same command to resume.', 'SIGTERM' if sigterm.is_set() else 'orbax',
                      step)
      break
    if (config.sample_every_steps and step % config.sample_every_steps == 0
        and step != config.num_train_steps):
      with report_progress.timed('sample'):
        sample_paths.append(_write_preview_grid(preview_fn, state, step, workdir, writer))
    excluded += time.time() - pause_start

  # ---------------------------------------------------------------- final artifacts
  final_step = int(jax.device_get(state.step))
  if not preempted:  # a preempted job has seconds left: only the checkpoint matters
    sample_paths.append(_write_preview_grid(preview_fn, state, final_step, workdir, writer))
  manager.wait_until_finished()
  writer.flush()
  results = {
      'config_name': config.name,
      'method': config.method,
      'dataset': config.dataset.name,
      'model': config.model.name,
      'num_params': num_params,
      'devices': jax.device_count(),
      'device_kind': jax.devices()[0].device_kind,
      'start_step': start_step,
      'steps': final_step,
      'batch_size': config.batch_size,
      'final_loss': last_loss,
      'preempted': preempted,
      'images_per_sec': images_seen / train_seconds if train_seconds else None,
      'compile_seconds': compile_seconds,
      'xla_flops_per_step': flops_per_step,
      'embedding_health': last_health,  # at the last log step; empty for the DM
      'warnings': health_lib.health_warnings(last_health),
      'wall_seconds': time.time() - wall_start,
      'artifacts': {
          'checkpoints': str(manager.directory),
          'samples': sample_paths,
          'tensorboard': str(workdir),
          'config': str(workdir / 'config.json'),
      },
  }
  for warning in results['warnings']:
    logging.warning('%s: %s', workdir, warning)
  if is_chief and not preempted:
    results_path.write_text(json.dumps(results, indent=2))
  logging.info('Done: %s', json.dumps(results))
  manager.close()
  writer.close()
  return results
