"""The embedding health of finished training stages, read back from their checkpoints.

`jdiffrep.health.method_health` of each stage's EMA parameters on the first
`config.health_images` images of its eval split: per-dimension std and effective rank of the
embedding and, for sdae, `z_reliance` (how much its denoiser uses z). Training logs the same
numbers; this reads them for runs made before a diagnostic existed, or at another batch.

  python -m benchmarks.stage_health --workdir=runs/mnist_a/sdae --workdir=runs/mnist_b/sdae \
      [--out=benchmarks/results/cpu_stage_health.jsonl]

Prints one JSON line per stage directory, with the date, commit and command (and appends it to
`--out`).
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections

from benchmarks import provenance
from jdiffrep import checkpoint
from jdiffrep import health
from jdiffrep import methods
from jdiffrep.data import pipeline

_FLAGS = {}


def _define_flags() -> None:
  """Only when run as a script: a test may import this module beside others with flags."""
  _FLAGS.update(
      workdir=flags.DEFINE_multi_string('workdir', None, 'A finished training stage directory '
                                        '(holding config.json and checkpoints/).'),
      images=flags.DEFINE_integer('images', None, 'Images to measure on (default: the stage '
                                  "config's health_images)."),
      out=flags.DEFINE_string('out', '-', "JSONL file to append the rows to ('-': print only)."))


def stage_health(stage_dir: str, num_images: int | None = None) -> dict:
  """{'stage_dir', 'step', 'images', the health of the stage's EMA embedding as floats}."""
  stage_dir = epath.Path(stage_dir)
  config_path = stage_dir / 'config.json'
  if not config_path.exists():
    raise FileNotFoundError(f'{config_path} not found: --workdir names one training stage\'s '
                            'directory, e.g. runs/shapes/sdae')
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  resolution = config.dataset.resolution
  method = methods.make_method(config, (resolution, resolution, 3), workdir=str(stage_dir))
  if not hasattr(method, 'embedding'):
    raise ValueError(f'{stage_dir}: method {config.method!r} learns no embedding')
  params = checkpoint.load_trained_params(stage_dir / 'checkpoints', method.abstract_params(),
                                          what=f'{config.method} model')
  num_images = num_images or config.health_images
  images = jnp.asarray(pipeline.first_images(config.dataset, num_images))
  values = jax.jit(lambda p, x: health.method_health(method, p, x))(params, images)
  return {'stage_dir': str(stage_dir),
          'step': checkpoint.latest_step(stage_dir / 'checkpoints'),
          'images': int(images.shape[0]),
          **{name: float(value) for name, value in jax.device_get(values).items()}}


def main(argv) -> None:
  del argv
  command = 'python -m benchmarks.stage_health ' + ' '.join(sys.argv[1:])
  for stage_dir in _FLAGS['workdir'].value:
    row = {'date': provenance.utc_now(), 'command': command, 'commit': provenance.commit(),
           'host': provenance.host(), **stage_health(stage_dir, _FLAGS['images'].value)}
    provenance.append_row(row, _FLAGS['out'].value)


if __name__ == '__main__':
  _define_flags()
  flags.mark_flag_as_required('workdir')
  app.run(main)
