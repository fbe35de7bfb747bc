r"""Command-line entry point: `python -m jdiffrep.main --config=configs/shapes.py --workdir=DIR`.

Any config field can be overridden, e.g. `--config.batch_size=64 --config.model.name=S/2`.
Re-running the same command resumes from the newest checkpoint in `--workdir`.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow is only used for TensorBoard I/O.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from jdiffrep import run

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file, e.g. configs/shapes.py.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.info('JAX %s on %d %s device(s).', jax.__version__, jax.device_count(),
               jax.default_backend())
  run.run(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
