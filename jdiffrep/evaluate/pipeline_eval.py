"""The 'evaluate' pipeline stage: runs the evaluators of `config.evaluate.evals` on every
representation trained.

Loads the EMA parameters of each training stage of `config.pipeline` whose method declares a
representation (DiTi's and PDAE's z, sdae's z_t and the DM's features along t), and runs the
listed evaluators in order (`evaluate/evaluators/`): linear attribute and categorical probes and
kNN of every feature set next to raw pixels (a sweep's best t chosen on validation, never test),
plots along t, DDIM reconstructions, for a z with time-step subsets the time-step probe and
counterfactuals, and attribute regression on a transfer dataset (LFW). With
`config.evaluate.random_encoder_baselines`, every encoder architecture also gets a row at random
initialisation. Each evaluator's result is kept in `<workdir>/evaluate/evaluators/<name>.json`
with a fingerprint of what it depends on, so a re-run (after a crash, or with an evaluator added)
reuses the finished ones. Writes `<workdir>/evaluate/results.json`, the PNGs next to it, and the
headline numbers as TensorBoard scalars in `<workdir>/evaluate`, each evaluator's as it finishes.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time

from absl import logging
import jax
import numpy as np

from jdiffrep import checkpoint
from jdiffrep import config as config_lib
from jdiffrep import methods
from jdiffrep import metric_writer
from jdiffrep import paths
from jdiffrep.evaluate import evaluators
from jdiffrep.evaluate.evaluators import base

CACHE_DIR = 'evaluators'


def load_stage(config, workdir: str, name: str, image_shape) -> base.Stage | None:
  """The finished training stage `name` of `workdir`, or None if its method declares nothing to
  evaluate under `config.evaluate`."""
  stage_dir = paths.absolute(workdir) / name
  method = methods.make_method(config_lib.stage_config(config, name), image_shape,
                               workdir=str(stage_dir))
  representation = method.representation(name, config.evaluate, config.seed)
  if representation is None:
    return None
  params = checkpoint.load_trained_params(stage_dir / 'checkpoints', method.abstract_params(),
                                          what=f'{name} model')
  return base.Stage(name=name, method=method, params=params,
                    frozen=jax.device_put(method.load_frozen()), representation=representation,
                    step=checkpoint.latest_step(stage_dir / 'checkpoints'))


RANDOM_PREFIX = 'random_'


def random_encoder_stages(stages: dict[str, base.Stage], eval_config, seed: int
                          ) -> dict[str, base.Stage]:
  """{f'random_{name}': the first stage `name` of each encoder architecture, at random init}.

  Stages whose representations declare the same `architecture` (DiTi, PDAE and the SSL baselines
  on one conv encoder) share one row; its features are named as the stage's would be, with the
  prefix (`random_diti`, `random_sdae_t0`, ...). Random rows neither decode nor split z.
  """
  random_stages, seen = {}, set()
  for name, stage in stages.items():
    architecture = stage.representation.architecture
    if architecture is None or architecture in seen:
      continue
    seen.add(architecture)
    random_name = f'{RANDOM_PREFIX}{name}'
    representation = stage.method.representation(random_name, eval_config, seed)
    params = jax.jit(stage.method.init_params)(jax.random.PRNGKey(seed))
    random_stages[random_name] = dataclasses.replace(
        stage, name=random_name, params=params, step=0,
        representation=dataclasses.replace(representation, partition=None, reconstructs=False))
  return random_stages


def entries(eval_config) -> list[tuple[str, object]]:
  """[(name, entry)] of the enabled `eval_config.evals`, checked, their options' defaults filled,
  in the order they run: by name (a ConfigDict's order), those that read others' results last."""
  result = []
  for name, entry in eval_config.evals.items():
    evaluators.check_entry(name, entry)
    if not entry.get('enabled', True):
      continue
    filled = entry.copy_and_resolve_references()
    with filled.unlocked():
      for option, default in evaluators.EVALUATORS[entry.type].options.items():
        if option not in filled:
          filled[option] = default
    result.append((name, filled))
  return sorted(result, key=lambda item: evaluators.EVALUATORS[item[1].type].reads_results)


def evaluate(config, workdir: str) -> dict:
  """Runs every enabled evaluator of `config.evaluate.evals` that applies to the trained stages.

  Feature sets over `config.evaluate.feature_memory_mb` are spilled to a scratch directory under
  `config.evaluate.feature_dir` (local; default the system temp dir), deleted at the end.
  """
  out_dir = paths.absolute(workdir) / config_lib.EVALUATE_STAGE  # local or a URL (gs://...)
  out_dir.mkdir(parents=True, exist_ok=True)
  resolution = config.dataset.resolution
  image_shape = (resolution, resolution, 3)
  stages = {}
  for name in config.pipeline:
    if name != config_lib.EVALUATE_STAGE:
      stage = load_stage(config, workdir, name, image_shape)
      if stage is not None:
        stages[name] = stage
  random_rows = {}
  if config.evaluate.random_encoder_baselines:
    random_stages = random_encoder_stages(stages, config.evaluate, config.seed)
    random_rows = {name: [trained for trained, stage in stages.items()
                          if stage.representation.architecture
                          == random_stage.representation.architecture]
                   for name, random_stage in random_stages.items()}
    stages.update(random_stages)
  with tempfile.TemporaryDirectory(prefix='jdiffrep_features_',
                                   dir=config.evaluate.feature_dir or None) as scratch:
    context = base.Context(config, out_dir, scratch, stages)
    if random_rows:  # which trained stages each random-initialisation row stands beside
      context.results['random_encoder_rows'] = random_rows
    try:
      return run_evaluators(context)
    finally:
      context.close()


def run_evaluators(context: base.Context) -> dict:
  """Runs (or reuses) each enabled entry of `config.evaluate.evals` on `context`; writes
  results.json and the TensorBoard scalars (process 0) and returns the merged results."""
  out_dir = context.out_dir
  is_writer = jax.process_index() == 0
  writer = metric_writer.create_writer(out_dir) if is_writer else None
  listed = entries(context.eval_config)
  status = {}
  for index, (name, entry) in enumerate(listed, start=1):
    evaluator = evaluators.EVALUATORS[entry.type]()
    reason = evaluator.missing(context, entry)
    if reason is not None:
      logging.info('Evaluator %d/%d %s skipped: %s.', index, len(listed), name, reason)
      status[name] = f'skipped: {reason}'
      continue
    cache_path = out_dir / CACHE_DIR / f'{name}.json'
    fingerprint = context.fingerprint(entry, evaluator.fingerprint_inputs(context, entry))
    result = _cached_result(cache_path, fingerprint)
    if result is not None:
      logging.info('Evaluator %d/%d %s: reusing %s (same settings and checkpoints).', index,
                   len(listed), name, cache_path)
      status[name] = 'reused'
    else:
      logging.info('Evaluator %d/%d %s: running.', index, len(listed), name)
      start = time.monotonic()
      result = evaluator.run(context, entry)
      status[name] = f'ran in {time.monotonic() - start:.1f} s'
      logging.info('Evaluator %d/%d %s: done in %.1f s.', index, len(listed), name,
                   time.monotonic() - start)
      if is_writer:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_text(json.dumps({'fingerprint': fingerprint, 'result': result}))
    context.results.update(result)
    if writer is not None:
      writer.write_scalars(0, headline_scalars(result))
      writer.flush()

  results = {'splits': context.splits, **context.results, 'evaluators': status}
  if is_writer:
    (out_dir / 'results.json').write_text(json.dumps(results, indent=2))
    writer.close()
  return results


def _cached_result(path, fingerprint: str) -> dict | None:
  """The stored result at `path` if it was made with `fingerprint`, else None."""
  if not path.exists():
    return None
  try:
    stored = json.loads(path.read_text())
  except json.JSONDecodeError:
    logging.warning('Ignoring the unreadable evaluator result %s; running it again.', path)
    return None
  return stored['result'] if stored.get('fingerprint') == fingerprint else None


# Keys whose values are per-attribute or per-pair detail: in results.json, not in TensorBoard.
_DETAIL_KEYS = ('per_attribute', 'per_attribute_ap', 'ap_per_attribute', 'change_rates',
                'classifier_test_accuracy', 'classifier_test_ap', 'groups', 'splits')


def headline_scalars(results: dict, prefix: str = '') -> dict[str, float]:
  """The finite numbers of `results`, flattened to 'a/b/c' names, without the per-attribute
  detail: what the evaluate stage logs to TensorBoard (`<workdir>/evaluate`, step 0)."""
  scalars = {}
  for key, value in results.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict) and key not in _DETAIL_KEYS:
      scalars.update(headline_scalars(value, f'{name}/'))
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
      scalars[name] = float(value)
  return scalars
