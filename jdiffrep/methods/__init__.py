"""Training methods; `config.method` selects one by name."""

import functools

from jdiffrep.methods import ddpm
from jdiffrep.methods import diti
from jdiffrep.methods import sdae
from jdiffrep.methods import ssl

METHODS = {
    'ddpm': ddpm.DDPM.from_config,
    'diti': diti.DiTi.from_config,
    'pdae': functools.partial(diti.DiTi.from_config, pdae=True),
    'sdae': sdae.SDAE.from_config,
    'simclr': functools.partial(ssl.SSL.from_config, kind='simclr'),
    'simsiam': functools.partial(ssl.SSL.from_config, kind='simsiam'),
}


def make_method(config, image_shape, *, workdir: str = ''):
  """The method object `config.method` names.

  It has `init_params`, `warm_start_params`, `load_frozen`, `loss`, `preview` and
  `representation`; a method that learns an embedding has `embedding` (its health is logged),
  one with its own optimiser for some parameters has `optimizer` (`train.method_optimizer`).

  `workdir` is the method's own run directory; methods built on another run (DiTi on its DM)
  find that run relative to it unless the config names it.
  """
  if config.method not in METHODS:
    raise ValueError(f'Unknown config.method={config.method!r}; valid: {sorted(METHODS)}.')
  return METHODS[config.method](config, image_shape, workdir=workdir)
