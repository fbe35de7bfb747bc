"""Runs `config.pipeline`: each stage in its own sub-directory, resumable, one results.json.

A stage is a training method ('ddpm', 'diti', 'pdae', ...) or 'evaluate'. A finished training
stage is detected from its checkpoint and costs only a reload; an interrupted one resumes. A
preempted stage (SIGTERM) ends the run after its checkpoint, with exit status 0.
"""

from __future__ import annotations

import json

from absl import logging
import jax

from jdiffrep import config as config_lib
from jdiffrep import paths
from jdiffrep import train


def run(config, workdir: str) -> dict:
  """Trains (and evaluates) everything `config` asks for; returns the merged results."""
  config_lib.validate_config(config)
  if not config.pipeline:
    return train.train_and_evaluate(config, workdir)
  workdir = paths.absolute(workdir)  # local or a URL (gs://...)
  results = {'config_name': config.name, 'pipeline': list(config.pipeline), 'stages': {}}
  for stage in config.pipeline:
    stage_dir = str(workdir / stage)
    logging.info('=== Stage %s in %s', stage, stage_dir)
    if stage == config_lib.EVALUATE_STAGE:
      from jdiffrep.evaluate import pipeline_eval  # pylint: disable=g-import-not-at-top
      results['stages'][stage] = pipeline_eval.evaluate(config, str(workdir))
    else:
      results['stages'][stage] = train.train_and_evaluate(
          config_lib.stage_config(config, stage), stage_dir)
    if jax.process_index() == 0:
      (workdir / 'results.json').write_text(json.dumps(results, indent=2))
    if results['stages'][stage].get('preempted'):
      logging.warning('Stage %s was preempted and saved a checkpoint; stopping here. Run the '
                      'same command to resume it and the stages after it.', stage)
      break
  return results
