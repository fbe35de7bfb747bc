"""Training methods; `config.method` selects one by name."""

from jdiffrep.methods import ddpm

METHODS = {'ddpm': ddpm.DDPM}


def make_method(config, image_shape):
  """Returns the method object (`init_params`, `loss`, `sample`) that `config.method` names."""
  if config.method not in METHODS:
    raise ValueError(f'Unknown config.method={config.method!r}; valid: {sorted(METHODS)}.')
  return METHODS[config.method].from_config(config, image_shape)
